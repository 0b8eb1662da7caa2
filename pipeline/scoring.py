"""The one retrieve → rank → blend → top-k implementation: gRPC serving, Beam and offline evaluation call it.

`candidates` runs the expensive, weight-independent part once per user (user tower →
FAISS top-N without the user's train items → both ranker heads) and returns
CandidateSets, the unit the cache and the batch job store; `blend_top_k` is the cheap,
per-request part (ranking.blender with any weights → drop excluded → top k). Free of
gRPC and Redis, so online and offline answers are identical by construction.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from core import layout
from core.errors import ArtifactError, ArtifactMismatchError, InvalidRequestError
from features import FeatureStore
from pipeline.candidates import CandidateSet
from ranking import BlendWeights, rank_by_blend

if TYPE_CHECKING:  # loading a version imports TensorFlow and FAISS; importing this module does not
    from ranking import Ranker
    from retrieval import ItemIndex, UserTower

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Candidate generation and default blending; every field is a CLI flag.

    num_candidates: N, the FAISS top-N the ranker scores per user.
    engagement_weight / quality_weight / blend_mode / blend_transform: the default
      BlendWeights (requests may override the weights).
    batch_users: users per user-tower / FAISS / ranker call in `candidates`.
    """

    num_candidates: int = 200
    engagement_weight: float = 1.0
    quality_weight: float = 1.0
    blend_mode: Literal["additive", "multiplicative"] = "multiplicative"
    blend_transform: Literal["identity", "log", "logit"] = "identity"
    batch_users: int = 256

    def __post_init__(self) -> None:
        if self.num_candidates <= 0:
            raise ValueError(f"--num-candidates must be >= 1, got {self.num_candidates}")
        if self.batch_users <= 0:
            raise ValueError(f"--batch-users must be >= 1, got {self.batch_users}")
        self.default_weights  # validates the blend fields  # noqa: B018

    @property
    def default_weights(self) -> BlendWeights:
        return BlendWeights(self.engagement_weight, self.quality_weight, self.blend_mode, self.blend_transform)


class RecommendPipeline:
    """One model version's retrieve → rank → blend → top-k.

    Attributes:
      features: the version's FeatureStore (vocabularies, popularity, seen items).
      tower, index, ranker: the exported user tower, FAISS index and ranker.
      model_version: the version name, stamped on every CandidateSet.
      config: PipelineConfig (N, default blend weights).
    """

    def __init__(self, features: FeatureStore, tower: UserTower, index: ItemIndex, ranker: Ranker, version: str,
                 config: PipelineConfig = PipelineConfig()) -> None:
        self.features = features
        self.tower = tower
        self.index = index
        self.ranker = ranker
        self.model_version = version
        self.config = config
        self.scorer = CandidateScorer(features, ranker, index.item_ids, version)
        ids = np.asarray(index.item_ids).astype(str)
        known = set(features.vocabularies["user_id"].tokens)
        self._known_users = known
        counts = features.popularity(ids)
        order = np.argsort(-counts, kind="stable")  # most engaged first, ties by index row
        self._popular_ids = ids[order]
        self._popular_counts = counts[order].astype(np.float32)

    @classmethod
    def from_version_dir(cls, path: str | os.PathLike, config: PipelineConfig | None = None,
                         verify: bool = True) -> RecommendPipeline:
        """Loads a version directory (checksums verified first when `verify`).

        `config` None = the version's `ranking/pipeline.json` if present, else the defaults.
        """
        from ranking import Ranker
        from retrieval import load_retriever

        d = pathlib.Path(path)
        features, tower, index = load_retriever(d, verify=verify)
        ranker = Ranker.load(layout.ranking_dir(d))
        if config is None:
            config = load_pipeline_config(d)
        missing = [c for c in features.spec.item_columns if c not in features.items.columns]
        if missing:
            raise ArtifactMismatchError(f"{d}: the feature store lacks item columns {missing}")
        return cls(features, tower, index, ranker, d.name, config)

    @property
    def default_weights(self) -> BlendWeights:
        return self.config.default_weights

    def is_known_user(self, user_id: str) -> bool:
        """Whether `user_id` was in train (else the servicer serves the popularity fallback)."""
        return str(user_id) in self._known_users

    # -- the weight-independent part --------------------------------------------------
    def candidates(self, user_ids: Sequence[str],
                   exclude: Sequence[Collection[str]] | None = None) -> list[CandidateSet]:
        """Each user's top-N candidates with both head scores, in retrieval order.

        Args:
          user_ids: b raw user ids; unknown ids still work (OOV embedding, no history,
            nothing seen), though the servicer answers those from popularity.
          exclude: None or b collections of further item ids to leave out of the
            search, on top of each user's train-seen items (always excluded).

        Returns:
          b CandidateSets of up to N items each (fewer if the catalogue runs out).
        """
        user_ids = [str(u) for u in user_ids]
        if exclude is not None and len(exclude) != len(user_ids):
            raise InvalidRequestError(f"exclude has {len(exclude)} entries for {len(user_ids)} users")
        out: list[CandidateSet] = []
        step = self.config.batch_users
        for lo in range(0, len(user_ids), step):
            batch = user_ids[lo:lo + step]
            extra = exclude[lo:lo + step] if exclude is not None else None
            out.extend(self._candidates_batch(batch, extra))
        return out

    def _candidates_batch(self, user_ids: list[str], extra: Sequence[Collection[str]] | None) -> list[CandidateSet]:
        queries = self.tower.embed_ids(self.features, user_ids)  # with its own history length
        ids, scores = retrieve(self.features, self.index, user_ids, queries, self.config.num_candidates, extra)
        return self.scorer.score(user_ids, ids, scores)

    # -- the per-request part ---------------------------------------------------------
    @staticmethod
    def blend_top_k(cands: CandidateSet, weights: BlendWeights, k: int,
                    exclude: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Blends the cached heads with `weights`, drops `exclude`, keeps the best k.

        Returns:
          (item_ids [<=k] object, final_scores [<=k] float64, order [<=k] int64 positions
          into `cands`, best first; ties keep retrieval order).
        """
        if k < 0:
            raise InvalidRequestError(f"k must be >= 0, got {k}")
        order, scores = rank_by_blend(cands.engagement, cands.quality, weights)
        if exclude and len(order):
            excluded = frozenset(map(str, exclude))
            order = order[np.fromiter((cands.item_ids[j] not in excluded for j in order), dtype=bool,
                                      count=len(order))]
        order = order[:k]
        return np.asarray(cands.item_ids, dtype=object)[order], scores[order], order

    def recommend(self, user_ids: Sequence[str], k: int, weights: BlendWeights | None = None,
                  exclude: Sequence[Collection[str]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """candidates → blend_top_k for each user: [(item_ids [<=k], scores [<=k])]."""
        weights = weights or self.default_weights
        cands = self.candidates(user_ids, exclude)
        return [self.blend_top_k(c, weights, k)[:2] for c in cands]

    # -- unknown users ------------------------------------------------------------------
    def popular_items(self, k: int, exclude: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The k most engaged-with train items not in `exclude`: (item_ids [<=k], counts [<=k] float32)."""
        if k < 0:
            raise InvalidRequestError(f"k must be >= 0, got {k}")
        if not exclude:
            return self._popular_ids[:k], self._popular_counts[:k]
        excluded = frozenset(map(str, exclude))
        keep = []
        for j, item in enumerate(self._popular_ids):
            if item not in excluded:
                keep.append(j)
                if len(keep) == k:
                    break
        keep_arr = np.asarray(keep, dtype=np.int64)
        return self._popular_ids[keep_arr], self._popular_counts[keep_arr]


def retrieve(features: FeatureStore, index: ItemIndex, user_ids: Sequence[str], queries: np.ndarray, n: int,
             extra_exclude: Sequence[Collection[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FAISS top-n for each user's query, the user's train-seen items (and `extra_exclude`) left out.

    Args:
      user_ids: b raw user ids (whose seen items are excluded).
      queries: [b, d] user-tower embeddings.
      extra_exclude: None or b collections of further item ids to leave out.

    Returns:
      (item ids [b, n] object, "" in padded slots; scores [b, n] float32, -inf in padded slots).
    """
    seen = features.seen_items(user_ids)
    excluded = ([s | frozenset(map(str, e)) for s, e in zip(seen, extra_exclude)] if extra_exclude is not None
                else seen)
    return index.search(queries, n, excluded)


class CandidateScorer:
    """Both ranker heads for retrieved candidates, packed as one CandidateSet per user.

    The weight-independent scoring step that online serving (RecommendPipeline) and the Beam
    job (beam_jobs.handlers.RankerHandler) share, so their scores are identical by construction.
    Every catalogue item's raw features are gathered once here, so scoring a candidate is a
    row gather.
    """

    def __init__(self, features: FeatureStore, ranker: Ranker, item_ids: Sequence[str], model_version: str) -> None:
        ids = np.asarray(item_ids).astype(str)
        self.features = features
        self.ranker = ranker
        self.model_version = model_version
        self._item_row = {item: r for r, item in enumerate(ids)}
        self._item_features = features.item_features(ids)

    def score(self, user_ids: Sequence[str], ids: np.ndarray, scores: np.ndarray) -> list[CandidateSet]:
        """CandidateSets for b users from their retrieved candidates.

        Args:
          user_ids: b raw user ids.
          ids: [b, N] object candidate ids in retrieval order, "" in padded slots.
          scores: [b, N] float32 retrieval scores.

        Raises:
          ArtifactMismatchError: a candidate is not in the catalogue this scorer was built on.
        """
        user_rows = self.ranker.user_features(self.features, list(user_ids))
        valid = ids != ""
        counts = valid.sum(axis=1)
        owner = np.repeat(np.arange(len(user_ids)), counts)
        flat_ids = ids[valid].astype(str)
        try:
            rows = np.fromiter((self._item_row[i] for i in flat_ids), dtype=np.int64, count=len(flat_ids))
        except KeyError as e:
            raise ArtifactMismatchError(f"the FAISS index returned item {e.args[0]!r}, which is not in the feature "
                                        "store's catalogue; rebuild the index") from e
        # The ranker's candidate context (retriever score and rank, history similarity, ...): ranking.context.
        ranks = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)[valid] if ids.ndim == 2 else np.zeros(0)
        context = self.ranker.candidate_context(self.features, list(user_ids), owner, flat_ids,
                                                np.asarray(scores)[valid], ranks)
        engagement, quality = self.ranker.score({k: v[owner] for k, v in user_rows.items()},
                                                {k: v[rows] for k, v in self._item_features.items()}, context)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return [CandidateSet(item_ids=np.asarray(flat_ids[a:b], dtype=object),
                             retrieval_scores=scores[u, :counts[u]].astype(np.float32),
                             engagement=engagement[a:b].astype(np.float32), quality=quality[a:b].astype(np.float32),
                             model_version=self.model_version)
                for u, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def save_pipeline_config(version_dir: str | os.PathLike, config: PipelineConfig) -> pathlib.Path:
    """Writes the version's default PipelineConfig (read back by from_version_dir)."""
    path = layout.pipeline_file(version_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2))
    return path


def load_pipeline_config(version_dir: str | os.PathLike) -> PipelineConfig:
    """The version's PipelineConfig, or the defaults if it saved none."""
    path = layout.pipeline_file(version_dir)
    if not path.exists():
        return PipelineConfig()
    try:
        return PipelineConfig(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e


__all__ = ["CandidateScorer", "PipelineConfig", "RecommendPipeline", "retrieve", "save_pipeline_config",
           "load_pipeline_config"]
