"""Retrieval stage: TFRS two-tower model, its export (user tower + item embeddings), FAISS index.

Serving, Beam and evaluation use `load_retriever(version_dir)` or `UserTower` / `ItemIndex`;
`train_two_tower` and `export_model` are for `recsys train`. Names resolve lazily (PEP 562)
so importing the configs for CLI flags does not load TensorFlow or FAISS.
"""
from __future__ import annotations

import importlib
from typing import Any

from retrieval.config import IndexConfig, TwoTowerConfig

_LAZY = {
    "load_retriever": "retrieval.artifacts", "FEATURES_DIR": "retrieval.artifacts", "INDEX_DIR": "retrieval.artifacts",
    "UserTower": "retrieval.export", "export_model": "retrieval.export", "load_items": "retrieval.export",
    "USER_TOWER_DIR": "retrieval.export", "ITEMS_FILE": "retrieval.export",
    "ItemIndex": "retrieval.index",
    "TrainResult": "retrieval.train", "train_two_tower": "retrieval.train", "RetrievalEvaluator": "retrieval.train",
    "TwoTowerModel": "retrieval.two_tower",
}

__all__ = ["IndexConfig", "TwoTowerConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
