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
import threading
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from core import layout
from core.errors import ArtifactError, ArtifactMismatchError, InvalidRequestError
from features import FeatureStore
from features.cooccurrence import ItemCooccurrence
from pipeline.candidates import CandidateSet
from ranking import BlendWeights, rank_by_blend

if TYPE_CHECKING:  # loading a version imports TensorFlow and FAISS; importing this module does not
    from ranking import Ranker
    from retrieval import ItemIndex, UserTower

log = logging.getLogger(__name__)

# The fallback blend of a version saved without the item rating prior: popularity alone.
POPULARITY_ONLY = BlendWeights(1.0, 0.0, "additive", "identity")


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


@dataclasses.dataclass(frozen=True)
class BatchingPlan:
    """How RecommendPipeline.candidates_each shares model calls (see batching_plan).

    tower_rows: users per user-tower call whose rows equal one-user calls bit for bit.
    rank_shared: whether users with full N-candidate lists share one ranker call.
    alone: compute every user alone (the end-to-end check failed).
    """

    tower_rows: int
    rank_shared: bool
    alone: bool


class RecommendPipeline:
    """One model version's retrieve → rank → blend → top-k.

    Attributes:
      features: the version's FeatureStore (vocabularies, popularity, seen items).
      tower, index, ranker: the exported user tower, FAISS index and ranker.
      model_version: the version name, stamped on every CandidateSet.
      config: PipelineConfig (N, default blend weights).
      rating_scale: (lo, hi) of the quality head's normalisation (ranker.json "rating_scale", else 1-5).
      engagement_calibrated: whether the ranker records a fitted engagement calibration.
      fallback_candidates: every catalogue item's train priors as a CandidateSet, what unknown
        users' answers are blended from (see _fallback_candidates).
      has_quality_prior: whether the feature store carries the item rating prior (else the
        fallback blends POPULARITY_ONLY).
      new_users: the version's new-user scorer (features.ItemCooccurrence, `ranking/new_users.npz`)
        or None (older versions, --no-newuser-enabled): then unknown users with events go through
        the model's OOV id and history bag instead (see `candidates`).
    """

    def __init__(self, features: FeatureStore, tower: UserTower, index: ItemIndex, ranker: Ranker, version: str,
                 config: PipelineConfig = PipelineConfig(), new_users: ItemCooccurrence | None = None) -> None:
        self.features = features
        self.tower = tower
        self.index = index
        self.ranker = ranker
        self.model_version = version
        self.config = config
        self.version_dir: pathlib.Path | None = None  # set by from_version_dir (where its reference profile is)
        self.scorer = CandidateScorer(features, ranker, index.item_ids, version)
        ids = np.asarray(index.item_ids).astype(str)
        known = set(features.vocabularies["user_id"].tokens)
        self._known_users = known
        self.rating_scale = _rating_scale(ranker)
        self.engagement_calibrated = _engagement_calibrated(ranker)
        self.fallback_candidates, self.has_quality_prior = _fallback_candidates(features, ids, len(known),
                                                                                self.rating_scale, version)
        self._plan: BatchingPlan | None = None
        self._plan_lock = threading.Lock()
        self.new_users = new_users
        self._new_user_scoring = (NewUserScoring(self.fallback_candidates, new_users, version)
                                  if new_users is not None else None)

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
        new_users = (ItemCooccurrence.load(layout.new_users_file(d)) if layout.new_users_file(d).is_file()
                     else None)
        pipeline = cls(features, tower, index, ranker, d.name, config, new_users)
        pipeline.version_dir = d
        return pipeline

    @property
    def default_weights(self) -> BlendWeights:
        return self.config.default_weights

    def is_known_user(self, user_id: str) -> bool:
        """Whether `user_id` was in train (else the servicer serves the popularity fallback)."""
        return str(user_id) in self._known_users

    def personalisable(self, user_id: str, recent: Sequence[str] = ()) -> bool:
        """Whether `candidates` personalises for this user: a known user, or an unknown one with at
        least one streamed engagement (`recent`) the model knows, when the user tower reads history
        (its OOV id embedding plus that history bag), or, with a new-user scorer, one the
        scorer knows. Otherwise serve the popularity fallback."""
        if self.is_known_user(user_id):
            return True
        if self.new_users is not None:
            return self.new_users.knows_any(recent)
        return self.tower.history_length > 0 and any(self.features.knows_item(i) for i in recent)

    # -- the weight-independent part --------------------------------------------------
    def candidates(self, user_ids: Sequence[str], exclude: Sequence[Collection[str]] | None = None,
                   recent: Sequence[Sequence[str]] | None = None) -> list[CandidateSet]:
        """Each user's top-N candidates with both head scores, in retrieval order.

        Args:
          user_ids: b raw user ids; unknown ids still work (OOV embedding, history from
            `recent` only, nothing seen), see `personalisable`.
          exclude: None or b collections of further item ids to leave out of the
            search, on top of each user's train-seen items (always excluded).
          recent: None or b sequences: user i's streamed engagements, NEWEST first. Merged
            with the train history (features.merge_history) in the user tower's and the
            ranker's history inputs, and excluded from the candidates like train items.
            None or all empty = exactly the batch-history answer. An unknown user with
            events the catalogue knows is scored by the version's new-user scorer when it
            has one (`new_user_candidates`), else by the model's OOV path.

        Returns:
          b CandidateSets of up to N items each (fewer if the catalogue runs out).
        """
        return self._in_chunks(user_ids, exclude, recent, self._candidates_batch)

    def _in_chunks(self, user_ids: Sequence[str], exclude: Sequence[Collection[str]] | None,
                   recent: Sequence[Sequence[str]] | None,
                   compute: Callable[[list[str], Sequence[Collection[str]] | None, Sequence[Sequence[str]] | None],
                                     list[CandidateSet]]) -> list[CandidateSet]:
        """Checks `exclude` and `recent` against `user_ids`, then runs `compute(users, extra, recent)`
        over chunks of config.batch_users users and concatenates the results (a chunk whose
        `recent` is all empty gets None: the batch-history path, unchanged)."""
        user_ids = [str(u) for u in user_ids]
        if exclude is not None and len(exclude) != len(user_ids):
            raise InvalidRequestError(f"exclude has {len(exclude)} entries for {len(user_ids)} users")
        if recent is not None and len(recent) != len(user_ids):
            raise InvalidRequestError(f"recent has {len(recent)} entries for {len(user_ids)} users")
        if self.new_users is not None and recent is not None:
            fresh = [i for i, u in enumerate(user_ids) if len(recent[i]) and u not in self._known_users
                     and self.new_users.knows_any(recent[i])]
            if fresh:
                return self._with_new_users(user_ids, exclude, recent, fresh, compute)
        out: list[CandidateSet] = []
        step = self.config.batch_users
        for lo in range(0, len(user_ids), step):
            chunk_recent = recent[lo:lo + step] if recent is not None else None
            if chunk_recent is not None and not any(len(r) for r in chunk_recent):
                chunk_recent = None
            out.extend(compute(user_ids[lo:lo + step], exclude[lo:lo + step] if exclude is not None else None,
                               chunk_recent))
        return out

    def _with_new_users(self, user_ids: list[str], exclude: Sequence[Collection[str]] | None,
                        recent: Sequence[Sequence[str]], fresh: list[int],
                        compute: Callable[[list[str], Sequence[Collection[str]] | None, Sequence[Sequence[str]] | None],
                                          list[CandidateSet]]) -> list[CandidateSet]:
        """`_in_chunks` when some users (`fresh` positions) are unknown with events: those from the new-user
        scorer, the others through `compute` as usual, in the callers' order."""
        out: list[CandidateSet | None] = [None] * len(user_ids)
        for i in fresh:
            out[i] = self.new_user_candidates(recent[i], exclude[i] if exclude is not None else ())
        rest = [i for i in range(len(user_ids)) if out[i] is None]
        if rest:
            done = self._in_chunks([user_ids[i] for i in rest], [exclude[i] for i in rest] if exclude is not None
                                   else None, [recent[i] for i in rest], compute)
            for i, cands in zip(rest, done):
                out[i] = cands
        return out  # type: ignore[return-value]

    def new_user_candidates(self, recent: Sequence[str], exclude: Collection[str] = ()) -> CandidateSet:
        """An unknown user's candidates from their events (`recent`, newest first) by the version's
        new-user scorer (NewUserScoring), the top config.num_candidates."""
        if self._new_user_scoring is None or self.new_users is None:
            raise ArtifactError(f"version {self.model_version} has no new-user scorer")
        if self._new_user_scoring.scorer is not self.new_users:  # replaced after construction (tests, benches)
            self._new_user_scoring = NewUserScoring(self.fallback_candidates, self.new_users, self.model_version)
        return self._new_user_scoring.candidates(recent, self.config.num_candidates, exclude)

    def _candidates_batch(self, user_ids: list[str], extra: Sequence[Collection[str]] | None,
                          recent: Sequence[Sequence[str]] | None = None) -> list[CandidateSet]:
        queries = self.tower.embed_ids(self.features, user_ids, recent)  # with its own history length
        ids, scores = retrieve(self.features, self.index, user_ids, queries, self.config.num_candidates, extra,
                               recent)
        return self.scorer.score(user_ids, ids, scores, recent)

    # -- the same, shared between concurrent requests (serving/batcher.py) ---------------
    def candidates_each(self, user_ids: Sequence[str], exclude: Sequence[Collection[str]] | None = None,
                        recent: Sequence[Sequence[str]] | None = None) -> list[CandidateSet]:
        """Each user's candidates bit for bit as `candidates([user])` computes them alone, in shared calls.

        Matrix kernels may round a row differently depending on how many rows share a call
        (oneDNN's matmul computes the last `rows % block` rows of a call with another kernel),
        so a plain batched `candidates(users)` can differ from the one-user answer in the last
        bit. This method shares model calls only in layouts that a one-time check on this
        machine (`batching_plan`) showed reproduce the one-user bits: user-tower calls of at
        most `tower_rows` users, one FAISS search, and one ranker call over the users whose
        candidate lists are full (N rows each) if N-row blocks are row-exact; any other user
        is ranked alone. If the check fails, every user is computed alone.

        Args and Returns: as `candidates`.
        """
        return self._in_chunks(user_ids, exclude, recent, self._candidates_each)

    def _candidates_each(self, user_ids: list[str], extra: Sequence[Collection[str]] | None,
                         recent: Sequence[Sequence[str]] | None = None,
                         plan: BatchingPlan | None = None) -> list[CandidateSet]:
        plan = plan or self.batching_plan()

        def recent_of(rows) -> list[Sequence[str]] | None:  # one-user calls get None for an empty recent,
            if recent is None:                              # as `candidates([u])` does
                return None
            picked = [recent[i] for i in rows]
            return picked if any(len(r) for r in picked) else None

        if plan.alone:
            return [self._candidates_batch([u], None if extra is None else [extra[i]], recent_of([i]))[0]
                    for i, u in enumerate(user_ids)]
        if not user_ids:
            return []
        c = plan.tower_rows
        queries = np.concatenate([self.tower.embed_ids(self.features, user_ids[lo:lo + c], recent_of(range(lo, min(
            lo + c, len(user_ids))))) for lo in range(0, len(user_ids), c)])
        ids, scores = retrieve(self.features, self.index, user_ids, queries, self.config.num_candidates, extra,
                               recent)
        full = (ids != "").sum(axis=1) == ids.shape[1]
        shared = np.flatnonzero(full) if plan.rank_shared else np.zeros(0, dtype=np.int64)
        out: list[CandidateSet | None] = [None] * len(user_ids)
        if len(shared):
            scored = self.scorer.score([user_ids[i] for i in shared], ids[shared], scores[shared],
                                       recent_of(shared.tolist()))
            for i, cands in zip(shared.tolist(), scored):
                out[i] = cands
        for i, cands in enumerate(out):
            if cands is None:
                out[i] = self.scorer.score([user_ids[i]], ids[i:i + 1], scores[i:i + 1], recent_of([i]))[0]
        return out  # type: ignore[return-value]

    def batching_plan(self, sample_users: int = 24) -> BatchingPlan:
        """How `candidates_each` may share calls and still give the one-user bits (checked once, cached).

        Computes `sample_users` known users alone, then finds the largest user-tower call size
        whose rows equal the one-row calls, checks whether full N-row ranker blocks scored in
        one call equal their one-user calls, and finally checks `candidates_each` end to end
        against the one-user CandidateSets (bytes); any mismatch there → compute users alone.
        """
        with self._plan_lock:
            if self._plan is None:
                self._plan = self._check_plan(sample_users)
                log.info("batched candidates: %s", self._plan, extra={"event": "batching_plan",
                                                                      **dataclasses.asdict(self._plan)})
            return self._plan

    def _check_plan(self, sample_users: int) -> BatchingPlan:
        users = sorted(self._known_users)[:sample_users]
        if len(users) < 4:
            return BatchingPlan(tower_rows=1, rank_shared=False, alone=True)
        alone_rows = np.concatenate([self.tower.embed_ids(self.features, [u]) for u in users])
        tower_rows = 1
        for c in (16, 12, 8, 7, 6, 5, 4, 3, 2):
            if 2 * c > len(users):
                continue
            chunked = np.concatenate([self.tower.embed_ids(self.features, users[lo:lo + c])
                                      for lo in range(0, len(users), c)])
            if chunked.tobytes() == alone_rows.tobytes():
                tower_rows = c
                break
        alone = [self.candidates([u])[0].to_bytes() for u in users]
        ids, scores = retrieve(self.features, self.index, users, alone_rows, self.config.num_candidates)
        full = np.flatnonzero((ids != "").sum(axis=1) == ids.shape[1])
        rank_shared = len(full) >= 2 and [c.to_bytes() for c in self.scorer.score(
            [users[i] for i in full], ids[full], scores[full])] == [alone[i] for i in full]
        plan = BatchingPlan(tower_rows=tower_rows, rank_shared=bool(rank_shared), alone=False)
        got = [c.to_bytes() for c in self._candidates_each(users, None, None, plan)]
        if got != alone:
            return BatchingPlan(tower_rows=1, rank_shared=False, alone=True)
        return plan

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
                  exclude: Sequence[Collection[str]] | None = None,
                  recent: Sequence[Sequence[str]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """candidates → blend_top_k for each user: [(item_ids [<=k], scores [<=k])]."""
        weights = weights or self.default_weights
        cands = self.candidates(user_ids, exclude, recent)
        return [self.blend_top_k(c, weights, k)[:2] for c in cands]

    # -- unknown users ------------------------------------------------------------------
    def fallback_weights(self, weights: BlendWeights | None = None) -> BlendWeights:
        """The blend the fallback applies for `weights` (None = the default): the same, or
        POPULARITY_ONLY for a version saved without the item rating prior."""
        if not self.has_quality_prior:
            return POPULARITY_ONLY
        return weights or self.default_weights

    def popular_items(self, k: int, exclude: Collection[str] = (),
                      weights: BlendWeights | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The unknown-user answer: the catalogue's train priors blended with `weights`, top k not in `exclude`.

        See `fallback_candidates` for the priors; `weights` None = the version's default blend.

        Returns:
          (item_ids [<=k], scores [<=k] float64 blended scores, best first; ties by popularity).
        """
        if k < 0:
            raise InvalidRequestError(f"k must be >= 0, got {k}")
        ids, scores, _ = self.blend_top_k(self.fallback_candidates, self.fallback_weights(weights), k, exclude)
        return ids, scores

    def quality_ratings(self, quality: np.ndarray) -> np.ndarray:
        """[n] quality head values in [0, 1] → the data's rating units on the version's rating scale."""
        from ranking import denormalize_quality

        return denormalize_quality(quality, self.rating_scale)


_DEFAULT_SCALE = (1.0, 5.0)  # ranking.denormalize_quality's (MovieLens, synthetic)


def _rating_scale(ranker: Ranker) -> tuple[float, float]:
    """The version's rating scale: ranker.json "rating_scale" if recorded, else ranking's default 1-5."""
    scale = getattr(ranker, "meta", {}).get("rating_scale")
    if scale is None:
        return _DEFAULT_SCALE
    lo, hi = float(scale[0]), float(scale[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ArtifactMismatchError(f"the ranker's rating_scale {scale} is not an interval [lo, hi] with lo < hi")
    return lo, hi


def _engagement_calibrated(ranker: Ranker) -> bool:
    """Whether the ranker records a fitted engagement calibration in ranker.json (non-identity Platt,
    or the stacked engagement model, which is calibrated on the validation candidates by construction)."""
    cal = getattr(ranker, "meta", {}).get("calibration")
    if isinstance(cal, dict) and cal.get("method") == "stacked":
        return True
    if not isinstance(cal, dict) or cal.get("method") != "platt":
        return False
    return (float(cal.get("a", 1.0)), float(cal.get("b", 0.0))) != (1.0, 0.0)


def _fallback_candidates(features: FeatureStore, ids: np.ndarray, num_users: int, scale: tuple[float, float],
                         version: str) -> tuple[CandidateSet, bool]:
    """Every catalogue item's train priors as a CandidateSet, most popular first (ties by index row).

    engagement = the item's popularity as a frequency: the share of the train users (the user
      vocabulary) who engaged with it in train (FeatureStore.seen; each user once). Not smoothed:
      the denominator is the whole train population, not the item's own exposures, so a rarely
      shown item is not inflated; in [0, 1] like the engagement head.
    quality = the item's Bayesian-average train rating (FeatureStore.rating_prior, shrunk towards
      the global mean with RATING_PRIOR_STRENGTH pseudo-ratings), normalised to [0, 1] on the
      version's rating scale like the quality head: (prior - lo) / (hi - lo), clipped. 0 for every
      item when the store has no prior (then the fallback blends POPULARITY_ONLY).
    retrieval_scores = 0.

    Returns:
      (the CandidateSet, whether the quality prior exists).
    """
    engaged_users: dict[str, int] = {}
    for items in features.seen.values():
        for item in items:
            engaged_users[item] = engaged_users.get(item, 0) + 1
    reach = np.array([engaged_users.get(i, 0) for i in ids], dtype=np.float64) / max(num_users, 1)
    prior = features.rating_prior
    if prior is None:
        log.warning("version %s has no item rating prior (trained before it was saved): unknown users get "
                    "popularity alone, whatever the request's blend weights", version,
                    extra={"event": "fallback_without_quality_prior", "model_version": version})
        quality = np.zeros(len(ids))
    else:
        from ranking import normalize_rating

        quality = np.clip(normalize_rating(prior.of(ids), scale), 0.0, 1.0)
    order = np.argsort(-reach, kind="stable")
    return CandidateSet(item_ids=np.asarray(ids[order], dtype=object),
                        retrieval_scores=np.zeros(len(ids), dtype=np.float32),
                        engagement=np.clip(reach[order], 0.0, 1.0).astype(np.float32),
                        quality=quality[order].astype(np.float32), model_version=version), prior is not None


class NewUserScoring:
    """CandidateSets for users unknown to the model from their events, by a version's new-user scorer.

    engagement = the scorer's mixture (1 − w)·reach + w·P(item | events) (features.cooccurrence)
    with reach = the fallback's popularity prior; quality = the fallback's quality prior;
    retrieval_scores = the mixture too. The events and `exclude` are left out and the top n kept
    by the mixture (ties by popularity, then catalogue order). The request's blend weights apply
    to these heads as to the model's (blend_top_k). Used by RecommendPipeline.candidates (serving,
    evaluation); the Beam job scores train users only.
    """

    def __init__(self, fallback: CandidateSet, scorer: ItemCooccurrence, version: str) -> None:
        row = {str(i): r for r, i in enumerate(scorer.item_ids)}
        ids = np.asarray(fallback.item_ids).astype(str)
        missing = [i for i in ids if i not in row]
        if missing or len(ids) != len(row):
            raise ArtifactMismatchError(f"version {version}: the new-user scorer's catalogue ({len(row)} items) is "
                                        f"not the index's ({len(ids)} items; e.g. {missing[:3]} missing)")
        at = np.fromiter((row[i] for i in ids), dtype=np.int64, count=len(ids))  # fallback position → scorer row
        self.reach = np.zeros(len(ids))
        self.quality = np.zeros(len(ids))
        self.reach[at] = fallback.engagement
        self.quality[at] = fallback.quality
        self.item_ids = np.asarray(scorer.item_ids, dtype=object)
        self.scorer = scorer
        self.model_version = version

    def candidates(self, recent: Sequence[str], n: int, exclude: Collection[str] = ()) -> CandidateSet:
        engagement = np.clip(self.scorer.engagement(self.reach, [str(r) for r in recent]), 0.0, 1.0)
        drop = frozenset(map(str, recent)) | frozenset(map(str, exclude))
        scores = engagement.copy()
        if drop:
            scores[[c for c in self.scorer.columns(list(drop)) if c >= 0]] = -np.inf
        order = np.lexsort((-self.reach, -scores))  # by the mixture, ties by popularity, then catalogue order
        order = order[np.isfinite(scores[order])][:n]
        return CandidateSet(item_ids=self.item_ids[order], retrieval_scores=engagement[order].astype(np.float32),
                            engagement=engagement[order].astype(np.float32),
                            quality=self.quality[order].astype(np.float32), model_version=self.model_version)


def retrieve(features: FeatureStore, index: ItemIndex, user_ids: Sequence[str], queries: np.ndarray, n: int,
             extra_exclude: Sequence[Collection[str]] | None = None,
             recent: Sequence[Sequence[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FAISS top-n for each user's query, the user's train-seen and `recent` items (and `extra_exclude`) left out.

    Args:
      user_ids: b raw user ids (whose seen items are excluded).
      queries: [b, d] user-tower embeddings.
      extra_exclude: None or b collections of further item ids to leave out.
      recent: None or b sequences of the users' streamed engagements (also excluded).

    Returns:
      (item ids [b, n] object, "" in padded slots; scores [b, n] float32, -inf in padded slots).
    """
    seen = features.seen_items(user_ids, recent)
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
        # As fixed-width str arrays: the ranker turns object arrays into exactly these before
        # making tensors (ranking.export._tensor), so converting once here gives the same
        # tensors without a per-call conversion of every candidate row.
        self._item_features = _as_text(features.item_features(ids))

    def score(self, user_ids: Sequence[str], ids: np.ndarray, scores: np.ndarray,
              recent: Sequence[Sequence[str]] | None = None) -> list[CandidateSet]:
        """CandidateSets for b users from their retrieved candidates.

        Args:
          user_ids: b raw user ids.
          ids: [b, N] object candidate ids in retrieval order, "" in padded slots.
          scores: [b, N] float32 retrieval scores.
          recent: None or b sequences of the users' streamed engagements, newest first, merged
            into the ranker's history input (FeatureStore.history).

        Raises:
          ArtifactMismatchError: a candidate is not in the catalogue this scorer was built on.
        """
        user_rows = _as_text(self.ranker.user_features(self.features, list(user_ids), recent))  # b rows, unrepeated
        valid = ids != ""
        counts = valid.sum(axis=1)
        owner = np.repeat(np.arange(len(user_ids)), counts)
        flat_ids = ids[valid].astype(str)
        try:
            rows = np.fromiter(map(self._item_row.__getitem__, flat_ids), dtype=np.int64, count=len(flat_ids))
        except KeyError as e:
            raise ArtifactMismatchError(f"the FAISS index returned item {e.args[0]!r}, which is not in the feature "
                                        "store's catalogue; rebuild the index") from e
        engagement, quality = self.ranker.score({k: v[owner] for k, v in user_rows.items()},
                                                {k: v[rows] for k, v in self._item_features.items()})
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return [CandidateSet(item_ids=np.asarray(flat_ids[a:b], dtype=object),
                             retrieval_scores=scores[u, :counts[u]].astype(np.float32),
                             engagement=engagement[a:b].astype(np.float32), quality=quality[a:b].astype(np.float32),
                             model_version=self.model_version)
                for u, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _as_text(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Object (string) columns as numpy str arrays, the form the ranker makes tensors from; others as they are."""
    return {k: v.astype(str) if v.dtype == object else v for k, v in columns.items()}


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


__all__ = ["BatchingPlan", "CandidateScorer", "NewUserScoring", "POPULARITY_ONLY", "PipelineConfig", "RecommendPipeline", "retrieve", "save_pipeline_config",
           "load_pipeline_config"]
