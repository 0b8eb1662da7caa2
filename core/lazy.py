"""Lazy package exports (PEP 562): names that resolve to their module on first use.

Stage packages export their TensorFlow/FAISS/Beam-heavy names lazily so that building the
CLI's flags from their configs (and `recsys --help`) never imports those libraries:

    __getattr__, __dir__ = lazy_exports(__name__, {"ItemIndex": "retrieval.index"}, __all__)
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str],
                 public: Sequence[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level (__getattr__, __dir__) of `package`: `names` maps an exported name to
    the module defining it; a resolved name is cached in the package's namespace."""
    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(public)
    return __getattr__, __dir__
