"""The stacked engagement model: P(engaged | user, candidate) learned on serving-shaped candidates.

The ranker's engagement head is trained on train engagements against sampled negatives or
logged impressions, which is not what the server asks of it: order a retriever's top N by
how likely the user is to engage NEXT. The stacker is a logistic regression fit on exactly
that distribution, one time window earlier (workflows.train._select_on_validation): each
validation user's top N of a retriever trained on split.fit alone, label = engaged in the
validation window, features scored by a ranker trained on split.fit alone — so every
feature is out-of-sample for the label (stacking, Wolpert 1992). Its features, all
computed inside the ranker's graph (ranking.model.StackInputs), so serving, Beam and
evaluation read the stacked value through the one `Ranker.score`:

  engagement_logit   the ranker's engagement head (its logit)
  retrieval_score    s − 1, the retriever's score of the pair (the FAISS inner product)
  quality_logit      the quality head's served logit
  sim_last           cosine of the candidate's retriever item vector with the user's latest item's
  sim_recent5        … with the mean of the user's 5 latest items' (unit) vectors
  sim_max20          the largest cosine with any of the user's 20 latest items
  log_item_count     log(1 + the item's engagements in the training log)
  log_item_recent    log(1 + its engagements in the log's latest RECENT_FRACTION by time)
  item_trend         log((recent + 1) / (RECENT_FRACTION · count + 1)): rising (> 0) or fading
  log_user_count     log(1 + the user's engagements in the training log)

The retriever lacks the user's ORDER of items (its history is a bag) and explicit
popularity recency; the ranker head lacks the serving label. The fit (fit_stacker) is a
listwise conditional logit for the order, then a logistic calibration of its score (with the
user's activity) for the value, so the served engagement is calibrated on the validation
candidates; both are folded into one linear logit over the raw features.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ranking.calibration import newton_logistic, sigmoid

STACK_FEATURES: tuple[str, ...] = (
    "engagement_logit", "retrieval_score", "quality_logit", "sim_last", "sim_recent5", "sim_max20",
    "log_item_count", "log_item_recent", "item_trend", "log_user_count")
# The features the ranker's graph computes beyond its heads and the retrieval score (StackInputs' output order).
EXTRA_FEATURES: tuple[str, ...] = STACK_FEATURES[3:]
ITEM_STATS: tuple[str, ...] = ("log_item_count", "log_item_recent", "item_trend")
RECENT_FRACTION = 0.1
SIM_WINDOWS = (1, 5, 20)  # sim_last, sim_recent5 (mean of the last 5), sim_max20 (max over the last 20)


@dataclasses.dataclass(frozen=True)
class ActivityStats:
    """Per-item and per-user activity of a training log (unknown ids read 0 in the graph).

    item_ids [I], item_values [I, 3] (ITEM_STATS); user_ids [U], user_values [U] (log_user_count).
    """

    item_ids: np.ndarray
    item_values: np.ndarray
    user_ids: np.ndarray
    user_values: np.ndarray


def activity_stats(log: pd.DataFrame, recent_fraction: float = RECENT_FRACTION) -> ActivityStats:
    """ActivityStats of the engaged rows of `log` (interactions schema); "recent" = the latest
    `recent_fraction` of those rows by timestamp (ties at the cut included)."""
    engaged = log.loc[log["engaged"] == 1, ["user_id", "item_id", "timestamp"]]
    items = engaged["item_id"].astype(str)
    counts = items.value_counts()
    if len(engaged):
        cut = np.quantile(engaged["timestamp"].to_numpy(dtype=np.float64), 1.0 - recent_fraction)
        recent = items[engaged["timestamp"].to_numpy(dtype=np.float64) >= cut].value_counts()
    else:
        recent = counts.iloc[:0]
    recent = recent.reindex(counts.index, fill_value=0).to_numpy(dtype=np.float64)
    n = counts.to_numpy(dtype=np.float64)
    values = np.stack([np.log1p(n), np.log1p(recent), np.log((recent + 1.0) / (recent_fraction * n + 1.0))], axis=1)
    users = engaged["user_id"].astype(str).value_counts()
    return ActivityStats(np.asarray(counts.index, dtype=object), values.astype(np.float32),
                         np.asarray(users.index, dtype=object), np.log1p(users.to_numpy(np.float64)).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class StackedEngagement:
    """logit = weights · x + intercept over STACK_FEATURES (raw, unstandardised x)."""

    weights: tuple[float, ...]
    intercept: float

    def __post_init__(self) -> None:
        if len(self.weights) != len(STACK_FEATURES) or not np.isfinite([*self.weights, self.intercept]).all():
            raise ValueError(f"a stacked engagement model needs {len(STACK_FEATURES)} finite weights and a finite "
                             f"intercept, got {self.weights}, {self.intercept}")

    def logit(self, x: np.ndarray) -> np.ndarray:
        """[n, F] features → [n] logits (float64)."""
        return np.asarray(x, dtype=np.float64) @ np.asarray(self.weights) + self.intercept

    def apply(self, x: np.ndarray) -> np.ndarray:
        """[n, F] features → [n] P(engaged)."""
        return sigmoid(self.logit(x))

    def to_dict(self) -> dict:
        return {"method": "stacked", "features": list(STACK_FEATURES),
                "weights": {k: float(w) for k, w in zip(STACK_FEATURES, self.weights)},
                "intercept": float(self.intercept)}


def fit_stacker(x: np.ndarray, y: np.ndarray, valid: np.ndarray, l2: float = 1.0) -> StackedEngagement:
    """The stacked engagement model of n users' served lists, in two steps.

    1. Order: a conditional (listwise) logit — each user's softmax over their valid candidates,
       maximised for the user's engaged ones, ridge `l2` on the standardised weights (L-BFGS).
       Only within-user differences matter here, as they do for the served order; a pooled
       logistic fit would spend its weights on which USERS engage (measured worse, bench/RESULTS.md).
    2. Calibration: a logistic regression of the label on (that score, log_user_count) with an
       intercept over every valid candidate (Newton), so σ(logit) is P(engaged | user, candidate)
       on the served distribution; its score coefficient is kept > 0, so the order of step 1 stands.

    The result is one linear logit over STACK_FEATURES (step 2 folded into step 1's weights).

    Args:
      x: [n, N, F] features (F = len(STACK_FEATURES)), finite where valid; y, valid: [n, N] bool.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=bool) & np.asarray(valid, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if x.ndim != 3 or x.shape[2] != len(STACK_FEATURES) or x.shape[:2] != valid.shape or y.shape != valid.shape:
        raise ValueError(f"fit_stacker needs [n, N, {len(STACK_FEATURES)}] features and [n, N] labels and validity; "
                         f"got {x.shape}, {y.shape}, {valid.shape}")
    if not np.isfinite(x[valid]).all():
        raise ValueError("fit_stacker: features must be finite")
    if not y.any() or y.sum() == valid.sum():
        raise ValueError("fit_stacker needs both labels (engaged and not) among the validation candidates")
    w = _listwise_weights(x, y, valid, l2)
    score = x[valid] @ w
    user = x[valid][:, STACK_FEATURES.index("log_user_count")]
    a, c, b = _logistic(np.column_stack([score, user]), y[valid])
    a = max(a, 1e-6)
    weights = a * w
    weights[STACK_FEATURES.index("log_user_count")] += c
    return StackedEngagement(tuple(float(v) for v in weights), float(b))


def _listwise_weights(x: np.ndarray, y: np.ndarray, valid: np.ndarray, l2: float) -> np.ndarray:
    """Weights [F] (raw feature units) of the ridge conditional logit of module fit_stacker step 1."""
    from scipy.optimize import minimize

    rows = y.any(axis=1)  # users with no engaged candidate carry no information on the order
    x, y, valid = x[rows], y[rows], valid[rows]
    flat = x[valid]
    mu, sd = flat.mean(axis=0), flat.std(axis=0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    xs = np.where(valid[..., None], (x - mu) / sd, 0.0)
    positives = y.sum(axis=1).astype(np.float64)
    yf = y.astype(np.float64)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.where(valid, xs @ w, -np.inf)
        top = s.max(axis=1, keepdims=True)
        e = np.where(valid, np.exp(s - top), 0.0)
        z = e.sum(axis=1, keepdims=True)
        p = e / z
        value = -(np.where(y, s, 0.0).sum() - positives @ (top[:, 0] + np.log(z[:, 0]))) + 0.5 * l2 * w @ w
        grad = -(np.einsum("nk,nkf->f", yf, xs) - np.einsum("n,nk,nkf->f", positives, p, xs)) + l2 * w
        return float(value), grad

    result = minimize(loss, np.zeros(x.shape[2]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return result.x / sd


def _logistic(x: np.ndarray, y: np.ndarray, iterations: int = 50, l2: float = 1e-6) -> np.ndarray:
    """Maximum-likelihood logistic regression of y on the columns of x plus an intercept (Newton
    with step halving, on standardised columns): [coefficients..., intercept] in raw units."""
    y = np.asarray(y, dtype=np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    feats = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta = newton_logistic(feats, y, np.r_[np.zeros(x.shape[1]), np.log(rate) - np.log1p(-rate)], l2,
                            iterations=iterations, tol=1e-10)
    coef = theta[:-1] / sd
    return np.r_[coef, theta[-1] - np.sum(theta[:-1] * mu / sd)]


def user_folds(n_users: int, folds: int = 2, seed: int = 0) -> np.ndarray:
    """[n_users] fold index of each user (a seeded permutation, sizes within 1)."""
    order = np.random.default_rng(seed).permutation(n_users)
    out = np.empty(n_users, dtype=np.int64)
    out[order] = np.arange(n_users) % folds
    return out


def crossfit_logits(x: np.ndarray, y: np.ndarray, valid: np.ndarray, folds: np.ndarray,
                    l2: float = 1.0) -> np.ndarray:
    """Out-of-fold stacked logits: [n users, N, F] features, [n, N] labels and validity, [n] folds
    → [n, N] logits, each user's from the model fit on the other folds' users (0 in padded slots)."""
    out = np.zeros(valid.shape, dtype=np.float64)
    for f in np.unique(folds):
        held = folds == f
        model = fit_stacker(x[~held], y[~held], valid[~held], l2)
        out[held] = np.where(valid[held], model.logit(x[held].reshape(-1, x.shape[2])).reshape(valid[held].shape),
                             0.0)
    return out


def feature_matrix(engagement_logit: np.ndarray, retrieval_score: np.ndarray, quality_logit: np.ndarray,
                   extra: np.ndarray) -> np.ndarray:
    """[n, F] in STACK_FEATURES order from the heads' logits, the retrieval score s (as s − 1) and
    the graph's extra features [n, len(EXTRA_FEATURES)]."""
    extra = np.asarray(extra, dtype=np.float64).reshape(len(engagement_logit), len(EXTRA_FEATURES))
    return np.column_stack([np.asarray(engagement_logit, np.float64), np.asarray(retrieval_score, np.float64) - 1.0,
                            np.asarray(quality_logit, np.float64), extra])


__all__: Sequence[str] = ("ActivityStats", "EXTRA_FEATURES", "STACK_FEATURES", "StackedEngagement",
                          "activity_stats", "crossfit_logits", "feature_matrix", "fit_stacker", "user_folds")
