"""RunInference ModelHandlers for batch scoring: user tower → FAISS retrieval → ranker (both heads).

Each handler loads only its own artifacts from the version directory, once per worker
(RunInference shares the loaded model across a worker's threads), and computes exactly
what `pipeline.RecommendPipeline.candidates` computes for the same users — the
tests hold the two to bit-identical results.

An example is one *batch of users* (`UserBatch`), not one user: the batches are fixed by
the user ids (`assign_batches`: crc32(user_id) mod the number of batches, sorted within),
not by how a runner happens to split bundles. TensorFlow and FAISS results can differ in
the last float bit with the batch they are computed in, so fixed batches are what makes a
rerun — on any runner, with any number of workers — write byte-identical entries. Hence
RunInference's own batching is set to one example per call.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs.logs import quiet_worker_logs
from core import layout
from core.errors import ArtifactMismatchError

METRICS_NAMESPACE = "recsys_batch_score"


# -- fixed batches ---------------------------------------------------------------------------
def num_batches(num_users: int, batch_size: int) -> int:
    """How many batches `num_users` distinct users are split into (at least 1)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(1, math.ceil(num_users / batch_size))


def batch_index(user_id: str, batches: int) -> int:
    """The batch of `user_id`: crc32 of its UTF-8 bytes mod `batches` (stable across processes and runs)."""
    return zlib.crc32(user_id.encode("utf-8")) % batches


def assign_batches(user_ids: Iterable[str], batch_size: int) -> list[tuple[str, ...]]:
    """The batches the job scores `user_ids` in: distinct ids, grouped by batch_index, sorted within.

    Batch sizes average `batch_size` (they vary with the hash); empty batches are dropped.
    Ordered by batch index, for callers that want to replay the job's model calls.
    """
    users = sorted({str(u) for u in user_ids})
    n = num_batches(len(users), batch_size)
    groups: dict[int, list[str]] = {}
    for u in users:
        groups.setdefault(batch_index(u, n), []).append(u)
    return [tuple(groups[i]) for i in sorted(groups)]


@dataclasses.dataclass(frozen=True)
class UserBatch:
    """One fixed batch of users on its way through the handlers; later fields fill in per stage.

    Attributes:
      user_ids: b user ids, sorted.
      embeddings: [b, d] float32 user-tower outputs (after UserTowerHandler).
      item_ids: [b, N] object candidate ids, "" where fewer than N qualify (after RetrievalHandler).
      retrieval_scores: [b, N] float32, -inf in padded slots (after RetrievalHandler).
      recent: None, or b tuples of each user's streamed engagements, newest first (the job's
        --events): merged into both models' history inputs and excluded, as
        RecommendPipeline.candidates(recent=...) does.
    """

    user_ids: tuple[str, ...]
    embeddings: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    retrieval_scores: np.ndarray | None = None
    recent: tuple[tuple[str, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.user_ids)


def _need(batch: UserBatch, field: str, stage: str) -> np.ndarray:
    value = getattr(batch, field)
    if value is None:
        raise ValueError(f"{stage} got a UserBatch without {field}; apply the handlers in order "
                         "(UserTowerHandler → RetrievalHandler → RankerHandler)")
    return value


class _Handler(ModelHandler):
    """Shared plumbing: one UserBatch per inference call (see the module docstring)."""

    stage = ""

    def __init__(self, version_dir: str | pathlib.Path) -> None:
        super().__init__(min_batch_size=1, max_batch_size=1)
        self.version_dir = str(version_dir)

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}_{self.stage}"

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(len(b) for b in batch)  # users, the unit the job is sized in

    def local_dir(self) -> pathlib.Path:
        """The version as a local directory (a remote version is copied once per worker process)."""
        from beam_jobs.files import local_version

        return local_version(self.version_dir)

    def _features(self):
        quiet_worker_logs()  # every handler's load_model starts here, before the stage imports log
        from features import FeatureStore
        return FeatureStore.load(layout.features_dir(self.local_dir()))


# -- user tower --------------------------------------------------------------------------------
@dataclasses.dataclass
class _TowerModel:  # a class, not a tuple: RunInference's Shared holds loaded models by weakref
    features: Any  # FeatureStore
    tower: Any     # retrieval.UserTower


class UserTowerHandler(_Handler):
    """UserBatch(user_ids) → UserBatch with embeddings [b, d], through the exported user tower."""

    stage = "user_tower"

    def load_model(self) -> _TowerModel:
        from retrieval import UserTower

        return _TowerModel(self._features(), UserTower.load(self.local_dir()))

    def run_inference(self, batch: Sequence[UserBatch], model: _TowerModel,
                      inference_args: dict[str, Any] | None = None) -> Iterator[UserBatch]:
        for users in batch:
            yield dataclasses.replace(users, embeddings=model.tower.embed_ids(model.features, list(users.user_ids),
                                                                              users.recent))


# -- FAISS retrieval ---------------------------------------------------------------------------
@dataclasses.dataclass
class _RetrievalModel:
    features: Any  # FeatureStore, for each user's train-seen items
    index: Any     # retrieval.ItemIndex


class RetrievalHandler(_Handler):
    """UserBatch with embeddings → UserBatch with each user's top-N item ids and scores.

    Each user's train-seen items are excluded from the search (pipeline.retrieve, as online).
    """

    stage = "retrieval"

    def __init__(self, version_dir: str | pathlib.Path, num_candidates: int) -> None:
        super().__init__(version_dir)
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.num_candidates = num_candidates

    def load_model(self) -> _RetrievalModel:
        from retrieval import ItemIndex

        return _RetrievalModel(self._features(), ItemIndex.load(layout.index_dir(self.local_dir())))

    def run_inference(self, batch: Sequence[UserBatch], model: _RetrievalModel,
                      inference_args: dict[str, Any] | None = None) -> Iterator[UserBatch]:
        from pipeline import retrieve

        for users in batch:
            queries = _need(users, "embeddings", "RetrievalHandler")
            ids, scores = retrieve(model.features, model.index, users.user_ids, queries, self.num_candidates,
                                   recent=users.recent)
            yield dataclasses.replace(users, item_ids=ids, retrieval_scores=scores)


# -- ranker ------------------------------------------------------------------------------------
class RankerHandler(_Handler):
    """UserBatch with candidates → [(user_id, CandidateSet)] with both ranker heads, one per user
    (pipeline.CandidateScorer, the scoring step serving runs)."""

    stage = "ranker"

    def __init__(self, version_dir: str | pathlib.Path, model_version: str = "") -> None:
        super().__init__(version_dir)
        self.model_version = model_version or str(version_dir).rstrip("/").rsplit("/", 1)[-1]

    def load_model(self):
        from pipeline import CandidateScorer
        from ranking import Ranker

        features = self._features()
        ranker = Ranker.load(layout.ranking_dir(self.local_dir()))
        return CandidateScorer(features, ranker, features.catalogue, self.model_version)

    def run_inference(self, batch: Sequence[UserBatch], model,
                      inference_args: dict[str, Any] | None = None) -> Iterator[list]:
        for users in batch:
            ids = _need(users, "item_ids", "RankerHandler")
            scores = _need(users, "retrieval_scores", "RankerHandler")
            try:
                cands = model.score(users.user_ids, ids, scores, users.recent)
            except ArtifactMismatchError as e:
                raise ArtifactMismatchError(f"{self.version_dir}: {e}") from e
            yield list(zip(users.user_ids, cands))


__all__ = ["UserBatch", "UserTowerHandler", "RetrievalHandler", "RankerHandler", "assign_batches", "batch_index",
           "num_batches", "METRICS_NAMESPACE"]
