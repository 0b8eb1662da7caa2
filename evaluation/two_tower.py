"""The trained two-tower retriever as an offline `Recommender`: user tower → FAISS top-k.

It loads a version directory the way serving does (checksums verified, the version's own
feature store), embeds each test user with the exported SavedModel and searches the
version's FAISS index with the user's train items excluded, so the table measures exactly
what serving retrieves.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from core.errors import ArtifactError
from evaluation.protocol import EvalData

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TwoTowerEvalConfig:
    """Which trained version to evaluate; `recsys evaluate` fills version_dir from --artifacts/--version."""

    version_dir: str = ""
    batch_size: int = 512   # users embedded and searched per call


class TwoTowerRecommender:
    """Retrieves through a version's user tower and FAISS index (exact for the default Flat index)."""

    config_cls = TwoTowerEvalConfig

    def __init__(self, config: TwoTowerEvalConfig = TwoTowerEvalConfig(), name: str = "two_tower") -> None:
        self.config = config
        self.name = name
        self._data: EvalData | None = None

    def fit(self, data: EvalData) -> None:
        """Loads the version; nothing is trained here (`recsys train` did that on the same split)."""
        from retrieval import load_retriever

        if not self.config.version_dir:
            raise ArtifactError("two_tower needs a trained version: run `recsys train` first, or pass "
                                "--artifacts/--version")
        self.features, self.tower, self.index = load_retriever(self.config.version_dir)
        self._data = data
        self._column = pd.Index(np.asarray(data.item_ids).astype(str))
        outside = len(set(self.index.item_ids) - set(self._column))
        if outside:
            log.warning("two_tower: %d indexed items are not in the evaluation catalogue; they count as misses",
                        outside)

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        """[len(user_rows), k] catalogue columns from the FAISS index, train items excluded, -1 padded."""
        if self._data is None:
            raise RuntimeError("TwoTowerRecommender.recommend called before fit")
        data = self._data
        rows = np.asarray(user_rows, dtype=np.int64)
        out = np.full((len(rows), k), -1, dtype=np.int64)
        catalogue = np.asarray(data.item_ids).astype(str)
        for start in range(0, len(rows), self.config.batch_size):
            chunk = rows[start:start + self.config.batch_size]
            users = np.asarray(data.user_ids)[chunk]
            queries = self.tower.embed_ids(self.features, users)
            exclude = [catalogue[data.train[r].indices] for r in chunk]
            ids, _ = self.index.search(queries, k, exclude=[set(e) for e in exclude])
            cols = self._column.get_indexer(ids.ravel().astype(str)).reshape(ids.shape)
            out[start:start + len(chunk)] = cols
        # Items outside the catalogue (-1) cannot be judged; push them to the end as padding.
        order = np.argsort(out < 0, axis=1, kind="stable")
        return np.take_along_axis(out, order, axis=1)
