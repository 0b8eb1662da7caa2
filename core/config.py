"""Config dataclasses ↔ CLI flags: every field of a config is a flag, and back.

`add_config_args(parser, SplitConfig)` adds `--test-fraction` etc. (field name with `_`
→ `-`, an optional prefix, the field's default and the comment-free type); `config_from_args`
builds the frozen dataclass from the parsed namespace. Configs are then passed on as
objects and saved with `config_to_dict` into every manifest and report.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def add_config_args(parser: argparse.ArgumentParser | Any, cls: type, prefix: str = "",
                    help_text: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> None:
    """Adds one flag per field of dataclass `cls` to `parser` (or an argument group)."""
    hints = typing.get_type_hints(cls)
    help_text = help_text or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": _dest(prefix, f.name), "default": default}
        origin = get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif origin is tuple:
            inner = get_args(tp)[0]
            kwargs["nargs"] = "*"
            if get_origin(inner) is tuple:  # tuple[tuple[str, str], ...]: KEY=VALUE pairs
                kwargs["type"] = _pair
                kwargs["metavar"] = "KEY=VALUE"
            else:
                kwargs["type"] = inner
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        shown = default if not isinstance(default, tuple) else " ".join(map(str, default)) or "none"
        kwargs["help"] = f"{help_text.get(f.name, '')} (default: {shown})".strip()
        parser.add_argument(_flag(prefix, f.name), **kwargs)


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def config_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "", **overrides: Any) -> T:
    """Builds `cls` from the flags `add_config_args` added (plus explicit overrides)."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        dest = _dest(prefix, f.name)
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif hasattr(args, dest):
            v = getattr(args, dest)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(config)
