"""Baselines every model is compared against: random, popularity, EASE and item-kNN.

Each is a `Recommender` (evaluation/protocol.py) with a frozen config. `fit` reads only
the train part of the split (hyper-parameter selection reads fit + validation, never
test); `recommend` scores the given users against the whole catalogue and returns the
top k with each user's train items excluded, ties broken by lower column index.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from evaluation.metrics import evaluate_rankings
from evaluation.protocol import EvalData, Recommender, build_eval_data, top_k_excluding
from features import Split

log = logging.getLogger(__name__)


class _ScoringRecommender:
    """Shared `recommend`: dense scores for a batch of users → top k excluding train items."""

    name: str = ""
    _data: EvalData | None = None

    def fit(self, data: EvalData) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        """[len(user_rows), I] scores over the catalogue; higher ranks first."""
        raise NotImplementedError

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        """[len(user_rows), k] catalogue columns, best first, train items excluded, -1 padded."""
        if self._data is None:
            raise RuntimeError(f"{type(self).__name__}.recommend called before fit")
        rows = np.asarray(user_rows, dtype=np.int64)
        return top_k_excluding(self.score(rows), self._data.train[rows], k)


class _ItemItemRecommender(_ScoringRecommender):
    """Scores X_u · W: the user's binary train row times an item-item weight matrix W [I, I].

    Subclasses compute W in `fit` (a dense solve or similarity, hence the catalogue cap).
    """

    name = ""
    weights: np.ndarray | sp.csr_matrix | None = None

    def _fit_weights(self, data: EvalData, max_items: int, too_large: str,
                     weights: Callable[[], np.ndarray | sp.csr_matrix]) -> None:
        """Checks the catalogue fits the dense [I, I] computation, then sets W = weights()."""
        if data.num_items > max_items:
            raise ValueError(too_large.format(n=data.num_items, max_items=max_items))
        self._data = data
        self.weights = weights()

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        scores = self._data.train[user_rows] @ self.weights
        return np.asarray(scores.toarray() if sp.issparse(scores) else scores)


# -- random --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RandomConfig:
    """Uniform random scores; the floor every model must clear."""

    seed: int = 0


class RandomRecommender(_ScoringRecommender):
    """Uniform random scores, seeded per (seed, user row): the same user always gets the
    same ranking, whatever the batch it is scored in."""

    config_cls = RandomConfig

    def __init__(self, config: RandomConfig = RandomConfig()) -> None:
        self.config = config
        self.name = "random"

    def fit(self, data: EvalData) -> None:
        self._data = data

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        n = self._data.num_items
        out = np.empty((len(user_rows), n))
        for r, u in enumerate(user_rows):
            out[r] = np.random.default_rng([self.config.seed, int(u)]).random(n)
        return out


# -- popularity ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PopularityConfig:
    """Most-engaged-in-train first (no parameters; a config so every model has one)."""


class PopularityRecommender(_ScoringRecommender):
    """Scores = train engagement counts (FeatureStore.item_counts, fit on train only), the
    same statistic serving's popularity fallback uses. Ties by lower column index."""

    config_cls = PopularityConfig

    def __init__(self, config: PopularityConfig = PopularityConfig()) -> None:
        self.config = config
        self.name = "popularity"
        self.counts: np.ndarray | None = None

    def fit(self, data: EvalData) -> None:
        self._data = data
        self.counts = data.features.popularity(data.item_ids).astype(np.float64)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(user_rows), len(self.counts)))


# -- EASE ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EASEConfig:
    """EASE^R (Steck 2019). With `tune`, λ is picked from `lambda_grid` on the validation
    carve (fit on split.fit, score split.validation) before refitting on train."""

    l2: float = 500.0                      # λ, the L2 penalty; used as is when tune is off
    tune: bool = True
    lambda_grid: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0)
    tune_metric: str = "ndcg@10"           # a key of evaluate_rankings
    max_items: int = 20_000                # the dense [I, I] solve is O(I^3) time, O(I^2) memory


def ease_weights(x: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE item-item weights B [I, I] for a binary user-item matrix x [U, I].

    B = I - P · diagMat(1 / diag(P)) with P = (XᵀX + λI)⁻¹, i.e. B_ij = -P_ij / P_jj off
    the diagonal and B_jj = 0 (Steck, "Embarrassingly Shallow Autoencoders for Sparse
    Data", WWW 2019). Scores are X_u · B.
    """
    if l2 <= 0:
        raise ValueError(f"EASE l2 (lambda) must be > 0, got {l2}")
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += l2
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


class EASERecommender(_ItemItemRecommender):
    """EASE^R on the binary train engagement matrix."""

    config_cls = EASEConfig

    def __init__(self, config: EASEConfig = EASEConfig()) -> None:
        self.config = config
        self.name = "ease"
        self.l2 = config.l2
        self.tuning: dict[float, float] = {}

    def fit(self, data: EvalData) -> None:
        def weights() -> np.ndarray:
            if self.config.tune:
                self.l2, self.tuning = select_lambda(data, self.config.lambda_grid, self.config.tune_metric)
            return ease_weights(data.train, self.l2)

        self._fit_weights(data, self.config.max_items, "EASE needs a dense {n}x{n} solve; the catalogue exceeds "
                          "--ease-max-items {max_items} (raise it if you have the memory)", weights)


# -- item kNN ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ItemKNNConfig:
    """Item-item cosine kNN (Sarwar et al. 2001), shrunk and pruned to `neighbors` per item."""

    neighbors: int = 100
    shrink: float = 10.0
    max_items: int = 20_000  # the similarity is computed densely, O(I^2) memory


def item_knn_weights(x: sp.csr_matrix, neighbors: int, shrink: float) -> sp.csr_matrix:
    """Sparse item-item weights S [I, I] for a binary user-item matrix x [U, I].

    S_ij = x_iᵀx_j / (‖x_i‖·‖x_j‖ + shrink) for i ≠ j (cosine shrunk towards 0 for items
    with few co-occurrences), keeping in each column j only the `neighbors` largest
    (the item's neighbourhood); scores are X_u · S.
    """
    if neighbors < 1:
        raise ValueError(f"item-kNN neighbors must be >= 1, got {neighbors}")
    if shrink < 0:
        raise ValueError(f"item-kNN shrink must be >= 0, got {shrink}")
    co = (x.T @ x).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    n = sim.shape[0]
    k = min(neighbors, n)
    if k < n:
        # argpartition is deterministic for a given input, so the kept neighbours are too.
        top = np.argpartition(-sim, k - 1, axis=0)[:k]
        cols = np.broadcast_to(np.arange(n), top.shape)
        kept = sp.csr_matrix((sim[top, cols].ravel(), (top.ravel(), cols.ravel())), shape=sim.shape)
    else:
        kept = sp.csr_matrix(sim)
    kept.eliminate_zeros()
    return kept


class ItemKNNRecommender(_ItemItemRecommender):
    """Item-based collaborative filtering with cosine similarity."""

    config_cls = ItemKNNConfig

    def __init__(self, config: ItemKNNConfig = ItemKNNConfig()) -> None:
        self.config = config
        self.name = "itemknn"

    def fit(self, data: EvalData) -> None:
        self._fit_weights(data, self.config.max_items, "item-kNN computes a dense {n}x{n} similarity; the catalogue "
                          "exceeds --itemknn-max-items {max_items}",
                          lambda: item_knn_weights(data.train, self.config.neighbors, self.config.shrink))


# -- model selection on the validation carve -----------------------------------------------
def validation_data(data: EvalData) -> EvalData:
    """The split one step back: train = split.fit, test = split.validation.

    Same catalogue and feature store (fit on train, which only matters for models that read
    it, e.g. popularity); used to select hyper-parameters without looking at test.
    """
    split = data.split
    if len(split.validation) == 0:
        raise ValueError("hyper-parameter selection needs a validation carve; set --val-fraction > 0 "
                         "or turn tuning off")
    inner = Split(train=split.fit, validation=split.fit.iloc[:0], test=split.validation, config=split.config)
    return build_eval_data(data.dataset, inner, data.features)


def rank_users(model: Recommender, user_rows: np.ndarray, k: int, batch_size: int = 1024) -> np.ndarray:
    """[len(user_rows), k] rankings from `model.recommend`, in batches of `batch_size` users."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    user_rows = np.asarray(user_rows, dtype=np.int64)
    out = np.full((len(user_rows), k), -1, dtype=np.int64)
    for start in range(0, len(user_rows), batch_size):
        rows = user_rows[start:start + batch_size]
        got = np.asarray(model.recommend(rows, k))
        if got.shape != (len(rows), k):
            raise ValueError(f"model {getattr(model, 'name', model)!r} returned shape {got.shape} for "
                             f"{len(rows)} users and k={k}; expected {(len(rows), k)}")
        out[start:start + len(rows)] = got
    return out


def select_on_validation(data: EvalData, make: Callable[[float], Recommender], grid: Sequence[float],
                         metric: str = "ndcg@10", what: str = "parameter") -> tuple[float, dict[float, float]]:
    """Fits `make(value)` on split.fit for each value of `grid`, scores split.validation and
    returns (the best value, {value: metric}); ties go to the earlier grid value."""
    if not grid:
        raise ValueError(f"the {what} grid is empty")
    inner = validation_data(data)
    k = int(metric.split("@", 1)[1]) if "@" in metric else 10  # "mrr" is MRR@10 here
    scores: dict[float, float] = {}
    for value in grid:
        t0 = time.perf_counter()
        model = make(value)
        model.fit(inner)
        got = evaluate_rankings(rank_users(model, inner.test_users, k), inner, ks=(k,))
        if metric not in got:
            raise ValueError(f"unknown tuning metric {metric!r}; choose one of {sorted(got)}")
        scores[value] = got[metric]
        log.info("validation: %s=%g -> %s %.5f (%.2fs)", what, value, metric, got[metric], time.perf_counter() - t0)
    best = max(grid, key=lambda v: (scores[v], -list(grid).index(v)))
    log.info("selected %s=%g (%s %.5f on validation)", what, best, metric, scores[best])
    return best, scores


def select_lambda(data: EvalData, grid: Sequence[float] = (100.0, 250.0, 500.0, 1000.0),
                  metric: str = "ndcg@10") -> tuple[float, dict[float, float]]:
    """EASE's λ by `metric` on the validation carve (fit on split.fit, score split.validation).

    Returns:
      (best λ, {λ: validation metric}).
    """
    return select_on_validation(data, lambda v: EASERecommender(EASEConfig(l2=float(v), tune=False)), grid,
                                metric, what="EASE lambda")
