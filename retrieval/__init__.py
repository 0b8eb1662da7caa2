"""Retrieval stage: TFRS two-tower model, its export (user tower + item embeddings), FAISS index.

Serving, Beam and evaluation use `load_retriever(version_dir)` or `UserTower` / `ItemIndex`;
`train_two_tower` and `export_model` are for `recsys train`. Names resolve lazily (PEP 562)
so importing the configs for CLI flags does not load TensorFlow or FAISS.
"""
from __future__ import annotations

from core.lazy import lazy_exports
from retrieval.config import IndexConfig, TwoTowerConfig

_LAZY = {
    "load_retriever": "retrieval.artifacts",
    "UserTower": "retrieval.export", "export_model": "retrieval.export", "load_items": "retrieval.export",
    "ItemIndex": "retrieval.index",
    "TrainResult": "retrieval.train", "train_two_tower": "retrieval.train", "RetrievalEvaluator": "retrieval.train",
    "TwoTowerModel": "retrieval.two_tower",
    "WarmStart": "retrieval.warm",
}

__all__ = ["IndexConfig", "TwoTowerConfig", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
