"""Baselines every model is compared against: random, popularity, EASE, recency-weighted
EASE, item-kNN, and the bias-only rating baseline.

Each is a `Recommender` (evaluation/protocol.py) with a frozen config. `fit` reads only
the train part of the split (hyper-parameter selection, `grid_search` on the validation
carve, reads fit + validation, never test, and is recorded as a `Selection`);
`recommend` scores the given users against the whole catalogue and returns the top k
with each user's train items excluded, ties broken by lower column index.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
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


# -- selection on the validation carve -----------------------------------------------------
@dataclasses.dataclass
class Selection:
    """A hyper-parameter choice made on the validation carve, with every point that was tried.

    Attributes:
      model: the model's name (its row in the report).
      metric: what was compared: a key of evaluate_rankings such as "ndcg@10" (higher is
        better) or "rmse" (lower is better).
      chosen: {parameter: value} of the best point.
      table: one row per point tried, in the order tried: its parameters and `metric`.
      extensions: one message per automatic grid extension (see grid_search).
      edges: the searched parameters (with more than one value) whose chosen value is the
        lowest or highest of their final grid, i.e. the optimum may lie outside it.
    """

    model: str
    metric: str
    chosen: dict[str, float]
    table: list[dict[str, float]]
    extensions: list[str] = dataclasses.field(default_factory=list)
    edges: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def grid_search(what: str, axes: dict[str, Sequence[float]], score: Callable[[dict[str, float]], float],
                metric: str, lower_is_better: bool = False, extend: str = "", max_extensions: int = 0,
                bounds: tuple[float, float] = (0.0, np.inf), integer: bool = False) -> Selection:
    """Scores every point of the grid `axes` and returns the best one (ties: the earlier point).

    Points are visited in itertools.product order (the first axis outermost), so `score` can
    reuse work across the inner axes (e.g. one EASE solve per λ). NaN scores never win.

    With `extend`, that axis (positive values, meant to be log-spaced) grows automatically:
    whenever the best point has the axis's lowest (highest) value, one value beyond that
    edge is added, v_0² / v_1 below (v_n² / v_{n-1} above; the ratio of the two outermost
    values on that side, so the spacing stays even in log scale), its points are scored and
    the best is taken again; at most `max_extensions` times, each logged and recorded. With
    `integer` new values are rounded to integers; a value outside `bounds` is clipped to
    them, and the extension stops once the edge is at its bound.

    Args:
      what: a label for log lines, e.g. "EASE".
      axes: {parameter: grid values}; every grid non-empty.
      score: the validation metric of one point {parameter: value}.
      metric: the metric's name (the table's column).
      lower_is_better: e.g. for RMSE.
      extend: the name of the axis to extend at its edges ("" = none).
      max_extensions: the cap on extensions.
      bounds: (lowest, highest) value the extended axis may take, e.g. (1, I) for neighbours.
      integer: the extended axis takes integers (e.g. neighbours).

    Returns:
      The Selection (model = `what`).
    """
    if not axes or any(len(v) == 0 for v in axes.values()):
        raise ValueError(f"{what}: every hyper-parameter grid needs at least one value, got {dict(axes)}")
    if extend and (extend not in axes or min(axes[extend]) <= 0):
        raise ValueError(f"{what}: the extended axis {extend!r} must be one of {list(axes)} with positive values")
    if max_extensions < 0:
        raise ValueError(f"{what}: max_extensions must be >= 0, got {max_extensions}")
    names = list(axes)
    values = {n: list(dict.fromkeys(float(v) for v in axes[n])) for n in names}
    table: list[dict[str, float]] = []
    extensions: list[str] = []

    def run(grid: dict[str, list[float]]) -> None:
        for point in itertools.product(*(grid[n] for n in names)):
            params = dict(zip(names, point))
            t0 = time.perf_counter()
            value = float(score(params))
            table.append({**params, metric: value})
            log.info("validation: %s %s -> %s %.5f (%.2fs)", what,
                     " ".join(f"{n}={v:g}" for n, v in params.items()), metric, value, time.perf_counter() - t0)

    def best_row() -> dict[str, float]:
        sign = -1.0 if lower_is_better else 1.0

        def key(t: tuple[int, dict[str, float]]) -> tuple[float, int]:
            v = t[1][metric]
            return (-np.inf if np.isnan(v) else sign * v, -t[0])
        return max(enumerate(table), key=key)[1]

    run(values)
    best = best_row()
    while extend and len(values[extend]) > 1:
        grid = sorted(values[extend])
        at = best[extend]
        if at not in (grid[0], grid[-1]):
            break
        side, new = ("lower", grid[0] ** 2 / grid[1]) if at == grid[0] else ("upper", grid[-1] ** 2 / grid[-2])
        new = float(np.clip(round(new) if integer else new, *bounds))
        if new in grid:
            log.info("%s: %s=%g is on the %s edge of its grid, at its bound %g", what, extend, at, side, new)
            break
        if len(extensions) >= max_extensions:
            log.warning("%s: %s=%g is still on the %s edge of its grid after %d extension(s) (the cap); "
                        "widen the grid", what, extend, at, side, len(extensions))
            break
        msg = (f"{what}: best {extend}={at:g} is on the {side} edge of [{grid[0]:g} .. {grid[-1]:g}]; "
               f"extending the grid with {new:g} (extension {len(extensions) + 1} of at most {max_extensions})")
        log.info(msg)
        extensions.append(msg)
        values[extend].append(new)
        run({**values, extend: [new]})
        best = best_row()
    edges = [n for n in names if len(values[n]) > 1 and best[n] in (min(values[n]), max(values[n]))]
    chosen = {n: best[n] for n in names}
    log.info("%s: selected %s (%s %.5f on validation)%s", what, " ".join(f"{n}={v:g}" for n, v in chosen.items()),
             metric, best[metric], f"; on the edge of: {', '.join(edges)}" if edges else "")
    return Selection(model=what, metric=metric, chosen=chosen, table=table, extensions=extensions, edges=edges)


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


def _validation_metric(model: Recommender, inner: EvalData, metric: str) -> float:
    """`metric` of a model fitted on inner.train, ranking inner's test (= validation) users."""
    k = int(metric.split("@", 1)[1]) if "@" in metric else 10  # "mrr" is MRR@10 here
    got = evaluate_rankings(rank_users(model, inner.test_users, k), inner, ks=(k,))
    if metric not in got:
        raise ValueError(f"unknown tuning metric {metric!r}; choose one of {sorted(got)}")
    return got[metric]


def select_on_validation(data: EvalData, make: Callable[[float], Recommender], grid: Sequence[float],
                         metric: str = "ndcg@10", what: str = "parameter") -> tuple[float, dict[float, float]]:
    """Fits `make(value)` on split.fit for each value of `grid`, scores split.validation and
    returns (the best value, {value: metric}); ties go to the earlier grid value."""
    if not grid:
        raise ValueError(f"the {what} grid is empty")
    inner = validation_data(data)

    def score(p: dict[str, float]) -> float:
        model = make(p["value"])
        model.fit(inner)
        return _validation_metric(model, inner, metric)

    sel = grid_search(what, {"value": grid}, score, metric)
    return sel.chosen["value"], {row["value"]: row[metric] for row in sel.table}


# -- EASE ----------------------------------------------------------------------------------
# Three decades in 1-2-5 steps (log-spaced, ratio 2-2.5: fine enough that the optimum is
# within ~1.6x of a grid point); grid_search extends past whichever edge wins.
EASE_LAMBDA_GRID: tuple[float, ...] = (10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)


@dataclasses.dataclass(frozen=True)
class EASEConfig:
    """EASE^R (Steck 2019). With `tune`, λ is picked from `lambda_grid` (log-spaced) on the
    validation carve (fit on split.fit, score split.validation) before refitting on train;
    when the best λ is the grid's lowest or highest, the grid is extended past that edge
    (see grid_search), at most `max_extensions` times."""

    l2: float = 500.0                      # λ, the L2 penalty; used as is when tune is off
    tune: bool = True
    lambda_grid: tuple[float, ...] = EASE_LAMBDA_GRID
    max_extensions: int = 4
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
        self.tuning: dict[float, float] = {}  # {λ: validation metric}, as selection.table
        self.selection: Selection | None = None

    def fit(self, data: EvalData) -> None:
        def weights() -> np.ndarray:
            if self.config.tune:
                self.selection = select_ease(data, self.config.lambda_grid, self.config.tune_metric,
                                             self.config.max_extensions)
                self.l2 = self.selection.chosen["l2"]
                self.tuning = {row["l2"]: row[self.selection.metric] for row in self.selection.table}
            return ease_weights(data.train, self.l2)

        self._fit_weights(data, self.config.max_items, "EASE needs a dense {n}x{n} solve; the catalogue exceeds "
                          "--ease-max-items {max_items} (raise it if you have the memory)", weights)


def select_ease(data: EvalData, grid: Sequence[float] = EASE_LAMBDA_GRID, metric: str = "ndcg@10",
                max_extensions: int = 4) -> Selection:
    """EASE's λ by `metric` on the validation carve (fit on split.fit, score split.validation),
    the grid extended past an edge when the best λ lands on it (grid_search)."""
    inner = validation_data(data)

    def score(p: dict[str, float]) -> float:
        model = EASERecommender(EASEConfig(l2=p["l2"], tune=False, max_items=max(inner.num_items, 1)))
        model.fit(inner)
        return _validation_metric(model, inner, metric)

    return grid_search("ease", {"l2": grid}, score, metric, extend="l2", max_extensions=max_extensions)


def select_lambda(data: EvalData, grid: Sequence[float] = EASE_LAMBDA_GRID, metric: str = "ndcg@10",
                  max_extensions: int = 4) -> tuple[float, dict[float, float]]:
    """EASE's λ by `metric` on the validation carve; see select_ease.

    Returns:
      (best λ, {λ: validation metric} for every λ tried, extensions included).
    """
    sel = select_ease(data, grid, metric, max_extensions)
    return sel.chosen["l2"], {row["l2"]: row[metric] for row in sel.table}


# -- recency-weighted EASE -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EASERecencyConfig:
    """EASE fit as usual, scored on a recency-weighted history (EASERecencyRecommender).
    With `tune`, (λ, decay) is picked jointly on the validation carve over lambda_grid ×
    decay_grid, λ's grid extended past an edge as for EASE; decay 1 is plain EASE and comes
    first, so a tie keeps it."""

    l2: float = 500.0
    decay: float = 0.9
    tune: bool = True
    lambda_grid: tuple[float, ...] = EASE_LAMBDA_GRID
    decay_grid: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3)
    max_extensions: int = 4
    tune_metric: str = "ndcg@10"
    max_items: int = 20_000


def recency_history(data: EvalData, decay: float) -> sp.csr_matrix:
    """[U, I] each user's train history weighted by recency; the pattern of data.train.

    For user u, take the engaged rows of data.split.train whose item is in the catalogue,
    ordered by timestamp with ties in source-row order (the split's index), and keep each
    item's latest row: a sequence j_1 … j_n, oldest first, of distinct items. Entry
    (u, j_m) is decay^(n - m): the most recent item weighs 1, the one before it `decay`,
    the one before that decay², and so on. decay = 1 gives data.train exactly.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"recency decay must be in (0, 1], got {decay}")
    hist = data.train.tocsr(copy=True)
    hist.sum_duplicates()  # canonical: sorted columns, as the products over it assume nothing else
    num_users, num_items = hist.shape
    tr = data.split.train.loc[data.split.train["engaged"] == 1]
    rows = pd.Index(data.user_ids).get_indexer(tr["user_id"])
    cols = pd.Index(data.item_ids).get_indexer(tr["item_id"])
    keep = (rows >= 0) & (cols >= 0)
    rows, cols = rows[keep].astype(np.int64), cols[keep].astype(np.int64)
    order = np.lexsort((tr.index.to_numpy()[keep], tr["timestamp"].to_numpy()[keep], rows))
    keys = (rows * num_items + cols)[order]
    # the latest row of each (user, item): first occurrence in the reversed order
    _, first_rev = np.unique(keys[::-1], return_index=True)
    latest = np.sort(len(keys) - 1 - first_rev)     # still by user, then time
    u = rows[order][latest]
    ends = np.cumsum(np.bincount(u, minlength=num_users))
    from_end = ends[u] - 1 - np.arange(len(u))      # 0 for each user's most recent item
    weight = np.power(float(decay), from_end.astype(np.float64))
    by_key = np.argsort(keys[latest], kind="stable")
    nz_keys = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(hist.indptr)) * num_items + hist.indices
    pos = np.searchsorted(keys[latest][by_key], nz_keys)
    if len(nz_keys) != len(latest) or not np.array_equal(keys[latest][by_key], nz_keys):
        raise ValueError("the split's train rows do not match data.train; build EvalData with build_eval_data")
    hist.data = weight[by_key][pos]
    return hist


class EASERecencyRecommender(_ItemItemRecommender):
    """EASE with recency-weighted scoring: B = ease_weights(train, λ) exactly as EASE, and
    user u's scores are h_u · B with h_u = recency_history(data, decay)[u] (the most recent
    train item weighs 1, each earlier one `decay` times the next) instead of the binary row;
    train items stay excluded. decay = 1 is EASE, bit for bit."""

    config_cls = EASERecencyConfig

    def __init__(self, config: EASERecencyConfig = EASERecencyConfig()) -> None:
        self.config = config
        self.name = "ease_recency"
        self.l2, self.decay = config.l2, config.decay
        self.selection: Selection | None = None
        self._history: sp.csr_matrix | None = None

    def fit(self, data: EvalData) -> None:
        def weights() -> np.ndarray:
            if self.config.tune:
                self.selection = select_ease_recency(data, self.config.lambda_grid, self.config.decay_grid,
                                                     self.config.tune_metric, self.config.max_extensions)
                self.l2, self.decay = self.selection.chosen["l2"], self.selection.chosen["decay"]
            return ease_weights(data.train, self.l2)

        self._fit_weights(data, self.config.max_items, "recency EASE needs a dense {n}x{n} solve; the catalogue "
                          "exceeds --ease-recency-max-items {max_items}", weights)
        self._history = recency_history(data, self.decay)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._history[user_rows] @ self.weights)


def select_ease_recency(data: EvalData, lambda_grid: Sequence[float] = EASE_LAMBDA_GRID,
                        decay_grid: Sequence[float] = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3),
                        metric: str = "ndcg@10", max_extensions: int = 4) -> Selection:
    """(λ, decay) of recency EASE by `metric` on the validation carve: B fit on split.fit,
    split.validation scored from the fit-part history (as select_ease does for EASE); one
    solve per λ, reused for every decay; λ's grid extended past an edge (grid_search)."""
    inner = validation_data(data)
    solved: dict[float, np.ndarray] = {}
    histories: dict[float, sp.csr_matrix] = {}

    def score(p: dict[str, float]) -> float:
        if p["l2"] not in solved:
            solved.clear()  # λ is the outer axis: one [I, I] matrix in memory at a time
            solved[p["l2"]] = ease_weights(inner.train, p["l2"])
        if p["decay"] not in histories:
            histories[p["decay"]] = recency_history(inner, p["decay"])
        model = EASERecencyRecommender(EASERecencyConfig(l2=p["l2"], decay=p["decay"], tune=False))
        model._data, model.weights, model._history = inner, solved[p["l2"]], histories[p["decay"]]
        return _validation_metric(model, inner, metric)

    return grid_search("ease_recency", {"l2": lambda_grid, "decay": decay_grid}, score, metric, extend="l2",
                       max_extensions=max_extensions)


# -- item kNN ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ItemKNNConfig:
    """Item-item cosine kNN (Sarwar et al. 2001), shrunk and pruned to `neighbors` per item.

    With `tune`, (neighbors, shrink) is picked on the validation carve over
    neighbors_grid × shrink_grid (24 points by default: neighbourhoods from small to a
    quarter of a MovieLens-sized catalogue, shrinkage from none to strong; the neighbours
    grid extended past an edge up to `max_extensions` times) before refitting on train.
    """

    neighbors: int = 100
    shrink: float = 10.0
    tune: bool = True
    neighbors_grid: tuple[int, ...] = (10, 25, 50, 100, 200, 400)
    shrink_grid: tuple[float, ...] = (0.0, 10.0, 50.0, 200.0)
    max_extensions: int = 3  # of the neighbours grid, past whichever edge wins (bounded by [1, I])
    tune_metric: str = "ndcg@10"
    max_items: int = 20_000  # the similarity is computed densely, O(I^2) memory


def _shrunk_cosine(x: sp.csr_matrix, shrink: float) -> np.ndarray:
    """Dense [I, I] x_iᵀx_j / (‖x_i‖·‖x_j‖ + shrink), zero diagonal."""
    if shrink < 0:
        raise ValueError(f"item-kNN shrink must be >= 0, got {shrink}")
    co = (x.T @ x).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    return sim


def _keep_neighbors(sim: np.ndarray, neighbors: int) -> sp.csr_matrix:
    """`sim` with only the `neighbors` largest entries of each column kept."""
    if neighbors < 1:
        raise ValueError(f"item-kNN neighbors must be >= 1, got {neighbors}")
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


def item_knn_weights(x: sp.csr_matrix, neighbors: int, shrink: float) -> sp.csr_matrix:
    """Sparse item-item weights S [I, I] for a binary user-item matrix x [U, I].

    S_ij = x_iᵀx_j / (‖x_i‖·‖x_j‖ + shrink) for i ≠ j (cosine shrunk towards 0 for items
    with few co-occurrences), keeping in each column j only the `neighbors` largest
    (the item's neighbourhood); scores are X_u · S.
    """
    if neighbors < 1:
        raise ValueError(f"item-kNN neighbors must be >= 1, got {neighbors}")
    return _keep_neighbors(_shrunk_cosine(x, shrink), neighbors)


class ItemKNNRecommender(_ItemItemRecommender):
    """Item-based collaborative filtering with cosine similarity."""

    config_cls = ItemKNNConfig

    def __init__(self, config: ItemKNNConfig = ItemKNNConfig()) -> None:
        self.config = config
        self.name = "itemknn"
        self.neighbors, self.shrink = config.neighbors, config.shrink
        self.selection: Selection | None = None

    def fit(self, data: EvalData) -> None:
        def weights() -> sp.csr_matrix:
            if self.config.tune:
                self.selection = select_item_knn(data, self.config.neighbors_grid, self.config.shrink_grid,
                                                 self.config.tune_metric, self.config.max_extensions)
                self.neighbors = int(self.selection.chosen["neighbors"])
                self.shrink = self.selection.chosen["shrink"]
            return item_knn_weights(data.train, self.neighbors, self.shrink)

        self._fit_weights(data, self.config.max_items, "item-kNN computes a dense {n}x{n} similarity; the catalogue "
                          "exceeds --itemknn-max-items {max_items}", weights)


def select_item_knn(data: EvalData, neighbors_grid: Sequence[int] = (10, 25, 50, 100, 200, 400),
                    shrink_grid: Sequence[float] = (0.0, 10.0, 50.0, 200.0), metric: str = "ndcg@10",
                    max_extensions: int = 3) -> Selection:
    """(neighbors, shrink) of item-kNN by `metric` on the validation carve (fit on split.fit,
    score split.validation); one similarity per shrink, pruned per neighbourhood size. The
    neighbours grid is extended past an edge (grid_search; integers within [1, I]); shrink 0
    is its natural lower bound and is not extended."""
    inner = validation_data(data)
    sims: dict[float, np.ndarray] = {}

    def score(p: dict[str, float]) -> float:
        if p["shrink"] not in sims:
            sims.clear()  # shrink is the outer axis: one dense [I, I] similarity at a time
            sims[p["shrink"]] = _shrunk_cosine(inner.train, p["shrink"])
        model = ItemKNNRecommender(ItemKNNConfig(neighbors=int(p["neighbors"]), shrink=p["shrink"], tune=False))
        model._data, model.weights = inner, _keep_neighbors(sims[p["shrink"]], int(p["neighbors"]))
        return _validation_metric(model, inner, metric)

    sel = grid_search("itemknn", {"shrink": shrink_grid, "neighbors": neighbors_grid}, score, metric,
                      extend="neighbors", max_extensions=max_extensions, bounds=(1, max(inner.num_items, 1)),
                      integer=True)
    sel.chosen["neighbors"] = int(sel.chosen["neighbors"])
    return sel


# -- bias-only rating baseline -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BiasConfig:
    """Rating baseline r̂_ui = μ + b_u + b_i (the "baseline predictors" of Koren, "Factor in
    the neighbors", TKDD 2010, §2.1), fit on the train part's rated engagements. With
    `tune`, the regularisation is picked by RMSE on the validation carve (fit on split.fit,
    predict split.validation) from `reg_grid`, extended past an edge like EASE's λ."""

    reg: float = 10.0
    tune: bool = True
    reg_grid: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    max_extensions: int = 4


@dataclasses.dataclass(frozen=True)
class RatingBiases:
    """A fitted bias model: μ, b_u per user id, b_i per item id, the train rating range."""

    mu: float
    user_bias: pd.Series
    item_bias: pd.Series
    rating_range: tuple[float, float]

    def predict(self, user_ids: Sequence, item_ids: Sequence) -> np.ndarray:
        """[n] μ + b_u + b_i clipped to the train rating range; b = 0 for ids unseen in train."""
        bu = self.user_bias.reindex(pd.Index(user_ids)).fillna(0.0).to_numpy(dtype=np.float64)
        bi = self.item_bias.reindex(pd.Index(item_ids)).fillna(0.0).to_numpy(dtype=np.float64)
        return np.clip(self.mu + bu + bi, *self.rating_range)


def rated_engagements(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with engaged == 1 and a finite rating: the rows the quality head is scored on."""
    rating = pd.to_numeric(rows["rating"], errors="coerce").to_numpy(dtype=np.float64)
    return rows.loc[(rows["engaged"].to_numpy() == 1) & np.isfinite(rating)]


# Above this many users AND items the dense Schur solve (O(min(U, I)^3) time, min(U, I)^2 float64 memory:
# 20 GB at 50k items) gives way to conjugate gradients on the sparse normal equations (O(rows) per step).
DENSE_BIAS_SOLVE_MAX = 10_000


def fit_biases(ratings: pd.DataFrame, reg: float, item_reg: float | None = None,
               dense_max: int = DENSE_BIAS_SOLVE_MAX) -> RatingBiases:
    """The exact minimiser of Σ (r_ui - μ - b_u - b_i)² + reg · Σ_u b_u² + item_reg · Σ_i b_i²
    (item_reg = reg unless given: the baseline's one shared reg).

    μ is the mean of the ratings (not penalised); the sum runs over `ratings`' rows (a pair
    rated twice counts twice). The biases solve the normal equations
    (AᵀA + reg·I) b = Aᵀ(r - μ), A the [rows, users + items] one-hot design. Its user
    block and item block are diagonal, so the larger side is eliminated (Schur complement)
    and the smaller side solved densely: O(min(U, I)³), exact up to round-off. When both sides
    exceed `dense_max`, Jacobi-preconditioned conjugate gradients on the sparse system solve it to
    a relative residual of 1e-10 instead (memory O(rows), time O(rows) per iteration).

    Args:
      ratings: rows with user_id, item_id, rating (finite).
      reg: > 0 (makes the system non-singular); the users' penalty.
      item_reg: > 0, the items' penalty (None = reg).
    """
    item_reg = reg if item_reg is None else item_reg
    if not (reg > 0 and item_reg > 0):
        raise ValueError(f"bias baseline reg must be > 0, got user reg {reg}, item reg {item_reg}")
    if len(ratings) == 0:
        raise ValueError("the bias baseline needs rated engagements in train; this data has no ratings")
    r = ratings["rating"].to_numpy(dtype=np.float64)
    u_idx, users = pd.factorize(ratings["user_id"], sort=True)
    i_idx, items = pd.factorize(ratings["item_id"], sort=True)
    mu = float(r.mean())
    resid = r - mu
    # counts[u, i] = how often u rated i: the off-diagonal block of AᵀA.
    counts = sp.csr_matrix((np.ones(len(r)), (u_idx, i_idx)), shape=(len(users), len(items)))
    rhs_u = np.bincount(u_idx, weights=resid, minlength=len(users))
    rhs_i = np.bincount(i_idx, weights=resid, minlength=len(items))
    d_u = np.asarray(counts.sum(axis=1)).ravel() + reg
    d_i = np.asarray(counts.sum(axis=0)).ravel() + item_reg
    if min(len(users), len(items)) > dense_max:
        b_u, b_i = _solve_two_block_cg(counts, d_u, d_i, rhs_u, rhs_i)
    else:
        b_u, b_i = _solve_two_block(counts, d_u, d_i, rhs_u, rhs_i) if len(users) <= len(items) else \
            _solve_two_block(counts.T.tocsr(), d_i, d_u, rhs_i, rhs_u)[::-1]
    return RatingBiases(mu=mu, user_bias=pd.Series(b_u, index=users), item_bias=pd.Series(b_i, index=items),
                        rating_range=(float(r.min()), float(r.max())))


def _solve_two_block(c: sp.csr_matrix, d_a: np.ndarray, d_b: np.ndarray, rhs_a: np.ndarray,
                     rhs_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solves [[diag(d_a), C], [Cᵀ, diag(d_b)]] [x_a; x_b] = [rhs_a; rhs_b] (C [a, b], a ≤ b)
    by eliminating x_b: (diag(d_a) - C diag(1/d_b) Cᵀ) x_a = rhs_a - C (rhs_b / d_b)."""
    scaled = c.multiply(1.0 / d_b[None, :]).tocsr()
    schur = -(scaled @ c.T).toarray()
    schur[np.diag_indices_from(schur)] += d_a
    x_a = np.linalg.solve(schur, rhs_a - scaled @ rhs_b)
    x_b = (rhs_b - c.T @ x_a) / d_b
    return x_a, x_b


def _solve_two_block_cg(c: sp.csr_matrix, d_a: np.ndarray, d_b: np.ndarray, rhs_a: np.ndarray,
                        rhs_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same system as _solve_two_block by Jacobi-preconditioned CG (SPD: reg > 0), never densified."""
    from scipy.sparse.linalg import LinearOperator, cg

    a, ct = len(d_a), c.T.tocsr()
    n = a + len(d_b)

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).ravel()
        return np.concatenate([d_a * x[:a] + c @ x[a:], ct @ x[:a] + d_b * x[a:]])
    diag = np.concatenate([d_a, d_b])
    x, info = cg(LinearOperator((n, n), matvec=matvec, dtype=np.float64), np.concatenate([rhs_a, rhs_b]),
                 rtol=1e-10, atol=0.0, maxiter=10_000,
                 M=LinearOperator((n, n), matvec=lambda v: np.asarray(v).ravel() / diag, dtype=np.float64))
    if info != 0:
        log.warning("bias baseline: conjugate gradients stopped after %d iterations before 1e-10", info)
    return x[:a], x[a:]


def rating_errors(biases: RatingBiases, rows: pd.DataFrame) -> dict[str, float]:
    """RMSE and MAE (rating units) of `biases` on the rated engagements of `rows`, and their count."""
    rated = rated_engagements(rows)
    if len(rated) == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "rated": 0}
    err = biases.predict(rated["user_id"], rated["item_id"]) - rated["rating"].to_numpy(dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))), "rated": int(len(rated))}


def select_bias_shrinkage(split: Split, reg: float, grid: Sequence[float] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
                          max_extensions: int = 4) -> tuple[tuple[float, float], Selection, dict[str, float]]:
    """Separate user and item penalties for the quality head's rating offset, or the shared `reg`.

    The (user reg, item reg) pair with the lowest validation RMSE (fit on split.fit's rated
    engagements, predict split.validation's), by one pass of coordinate search (about a third of
    the fits of the full grid²): the users' penalty over `grid` (+ `reg`) with the items' at `reg`,
    then the items' over the same grid with the users' at that choice; each axis extended past an
    edge (grid_search). Rule (the one-standard-error rule): the pair replaces the shared (reg, reg)
    only if its validation RMSE improvement holds beyond noise — the mean over rated validation
    rows of (squared error of the shared model − squared error of the pair) exceeds its standard
    error. A dataset whose users do rate differently keeps the shared reg; one whose ratings carry no
    user effect (the user biases fit noise) moves to a large user reg.

    Returns:
      ((user reg, item reg) to use, the grid's Selection, {mse_gain, mse_gain_se, adopted}).
    """
    if len(split.validation) == 0:
        raise ValueError("choosing the bias shrinkage needs a validation carve; set --val-fraction > 0")
    fit_rows, valid = rated_engagements(split.fit), rated_engagements(split.validation)
    truth = valid["rating"].to_numpy(dtype=np.float64)

    def sq_err(user_reg: float, item_reg: float) -> np.ndarray:
        return (fit_biases(fit_rows, user_reg, item_reg).predict(valid["user_id"], valid["item_id"]) - truth) ** 2

    def rmse(p: dict) -> float:
        return float(np.sqrt(np.mean(sq_err(p["user_reg"], p["item_reg"]))))

    grid = tuple(sorted(set(float(g) for g in grid) | {float(reg)}))  # the shared (reg, reg) is a grid point
    users = grid_search("bias shrinkage (users)", {"user_reg": grid, "item_reg": (float(reg),)}, rmse, "rmse",
                        lower_is_better=True, extend="user_reg", max_extensions=max_extensions)
    user_reg = float(users.chosen["user_reg"])
    items = grid_search("bias shrinkage (items)", {"user_reg": (user_reg,), "item_reg": grid}, rmse, "rmse",
                        lower_is_better=True, extend="item_reg", max_extensions=max_extensions)
    sel = Selection("bias shrinkage", "rmse", {"user_reg": user_reg, "item_reg": float(items.chosen["item_reg"])},
                    users.table + items.table, users.extensions + items.extensions, users.edges + items.edges)
    pair = (sel.chosen["user_reg"], sel.chosen["item_reg"])
    gain = sq_err(reg, reg) - sq_err(*pair)
    se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    adopted = bool(gain.mean() > max(se, 1e-9))  # 1e-9: round-off between (numerically) equal models
    return (pair if adopted else (reg, reg)), sel, {"mse_gain": float(gain.mean()), "mse_gain_se": se,
                                                    "adopted": adopted}


def select_bias_reg(split: Split, grid: Sequence[float] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
                    max_extensions: int = 4) -> Selection:
    """The bias baseline's reg by RMSE on the validation carve (fit on split.fit's rated
    engagements, predict split.validation's); the grid extended past an edge (grid_search)."""
    if len(split.validation) == 0:
        raise ValueError("choosing the bias baseline's reg needs a validation carve; set --val-fraction > 0 "
                         "or turn tuning off (--no-bias-tune)")
    fit_rows = rated_engagements(split.fit)
    return grid_search("bias", {"reg": grid}, lambda p: rating_errors(fit_biases(fit_rows, p["reg"]),
                                                                      split.validation)["rmse"],
                       "rmse", lower_is_better=True, extend="reg", max_extensions=max_extensions)


def fit_bias_baseline(split: Split, config: BiasConfig = BiasConfig()) -> tuple[RatingBiases, Selection | None]:
    """The bias baseline fit on split.train's rated engagements, reg chosen on validation when
    config.tune; returns (the model, the selection or None)."""
    selection = select_bias_reg(split, config.reg_grid, config.max_extensions) if config.tune else None
    reg = selection.chosen["reg"] if selection is not None else config.reg
    return fit_biases(rated_engagements(split.train), reg), selection


def bias_baseline_metrics(split: Split, rows: pd.DataFrame, config: BiasConfig = BiasConfig()) -> dict[str, float]:
    """{bias_baseline_rmse, bias_baseline_mae, bias_baseline_rated, bias_baseline_reg}: the bias
    baseline (fit_bias_baseline on `split`) on the rated engagements of `rows` — the rows
    the ranker's quality_rmse / quality_mae are computed on, so the numbers sit side by side.
    Without a validation carve, reg is config.reg (logged)."""
    if config.tune and len(split.validation) == 0:
        log.info("bias baseline: no validation carve; using reg=%g", config.reg)
        config = dataclasses.replace(config, tune=False)
    biases, selection = fit_bias_baseline(split, config)
    e = rating_errors(biases, rows)
    return {"bias_baseline_rmse": e["rmse"], "bias_baseline_mae": e["mae"], "bias_baseline_rated": e["rated"],
            "bias_baseline_reg": selection.chosen["reg"] if selection is not None else config.reg}


class BiasRecommender(_ScoringRecommender):
    """The bias rating baseline as a model: `diagnostics` holds its RMSE/MAE on the test
    split's rated engagements (bias_baseline_metrics, read from test only when asked);
    as a ranker it orders items by predicted rating μ + b_u + b_i, i.e. by b_i (unclipped;
    items unseen in train get b_i = 0), a shrunk mean-rating order."""

    config_cls = BiasConfig

    def __init__(self, config: BiasConfig = BiasConfig()) -> None:
        self.config = config
        self.name = "bias"
        self.biases: RatingBiases | None = None
        self.selection: Selection | None = None
        self._item_scores: np.ndarray | None = None

    def fit(self, data: EvalData) -> None:
        self.biases, self.selection = fit_bias_baseline(data.split, self.config)
        self._data = data
        bi = self.biases.item_bias.reindex(pd.Index(data.item_ids)).fillna(0.0).to_numpy(dtype=np.float64)
        self._item_scores = self.biases.mu + bi

    @property
    def diagnostics(self) -> dict[str, float]:
        """The rating errors on the test split's rated engagements (empty before fit)."""
        if self.biases is None:
            return {}
        e = rating_errors(self.biases, self._data.split.test)
        return {"bias_baseline_rmse": e["rmse"], "bias_baseline_mae": e["mae"], "bias_baseline_rated": e["rated"]}

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        bu = self.biases.user_bias.reindex(pd.Index(self._data.user_ids[user_rows])).fillna(0.0).to_numpy()
        return bu[:, None] + self._item_scores[None, :]
