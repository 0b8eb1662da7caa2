"""Choices a training run makes on the validation carve: retrieval fusion β, engagement calibration, default blend.

Every function here reads one `ValidationCandidates` table — each validation user's served
candidate list (the top N of a retriever trained on `split.fit` only, the user's fit items
excluded) scored by a ranker trained on `split.fit` only — and nothing from test. The
metrics are evaluation.metrics' (the ones `recsys evaluate` reports), over these lists:

  ndcg@k — binary gain (engaged in validation), IDCG over ALL the user's validation
    engagements (also those the retriever missed), users with none skipped;
  map@k — AP@k normalised by min(k, |validation engagements|);
  mean_hit_rating@k — mean validation rating of the top-k items that were hits (NaN-free);
  <flag>_share@k — share of top-k slots holding an item of a flagged type (e.g. clickbait).

Rules (each returns its whole selection table, which the manifest records):
  β: the grid value with the best ndcg@k of the engagement order z = logit + β·(s − 1)
     (ties → the smaller β; 0 = the ranker alone).
  calibration: Platt (a, b) by maximum likelihood on the chosen β's z over all candidates.
  stacking: the stacked engagement model (ranking.stacking, a logistic regression over the heads,
     s and graph features) replaces fusion + calibration iff its OUT-OF-FOLD ndcg@k (users in 2
     seeded folds) is at least the chosen β's; the blend is then chosen on its out-of-fold values.
  blend: among additive-on-logits (1−α)·logit(e) + α·logit(q) and multiplicative
     e^(1−α)·q^α for α ∈ BLEND_SHARES, the best ndcg@k whose mean_hit_rating@k is at least
     the engagement-only blend's (ties → the earlier grid entry; engagement-only always
     qualifies, so a blend is always chosen).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from evaluation.metrics import average_precision_at_k, ndcg_at_k
from evaluation.protocol import top_k_excluding
from features.cooccurrence import NewUserConfig, conditional_neighbors, engagement_matrix, mixed_engagement, profile
from ranking import BlendWeights, blend_scores
from ranking.calibration import PlattCalibration, fit_platt, sigmoid
from ranking.stacking import StackedEngagement, crossfit_logits, fit_stacker, user_folds

BLEND_SHARES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclasses.dataclass
class ValidationCandidates:
    """Served candidate lists of the validation users, padded to [n users, N].

    Attributes:
      user_ids: [n] users (each with >= 1 validation engagement).
      valid: [n, N] bool, False in padded slots.
      logit: [n, N] the engagement head's logit (no fusion, no calibration).
      affinity: [n, N] the retriever's score s of each candidate.
      quality: [n, N] the quality head (normalised rating in [0, 1]).
      engaged: [n, N] bool label: the candidate is among the user's validation engagements.
      rating: [n, N] the validation rating of engaged candidates (NaN otherwise).
      num_relevant: [n] the user's validation engagements (retrieved or not).
      flags: name → [n, N] bool item-type flags (e.g. "clickbait").
      stack: [n, N, F] the stacked engagement model's features (ranking.stacking.STACK_FEATURES), or None.
    """

    user_ids: np.ndarray
    valid: np.ndarray
    logit: np.ndarray
    affinity: np.ndarray
    quality: np.ndarray
    engaged: np.ndarray
    rating: np.ndarray
    num_relevant: np.ndarray
    flags: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    stack: np.ndarray | None = None

    def fused_logit(self, beta: float) -> np.ndarray:
        """[n, N] z = logit + β·(s − 1), the served engagement logit before calibration."""
        return self.logit + beta * (self.affinity - 1.0) if beta else self.logit.copy()


def _relevance(c: ValidationCandidates) -> sp.csr_matrix:
    """[n, N + m] binary gains: candidate columns, plus one column per validation engagement the list missed."""
    n, width = c.engaged.shape
    missed = np.maximum(c.num_relevant - (c.engaged & c.valid).sum(axis=1), 0)
    extra = int(missed.max()) if n else 0
    rows, cols = np.nonzero(c.engaged & c.valid)
    miss_rows = np.repeat(np.arange(n), missed)
    miss_cols = width + np.concatenate([np.arange(m) for m in missed]) if n else np.zeros(0, np.int64)
    r = np.concatenate([rows, miss_rows])
    k = np.concatenate([cols, miss_cols]).astype(np.int64)
    return sp.csr_matrix((np.ones(len(r)), (r, k)), shape=(n, width + extra))


def list_metrics(c: ValidationCandidates, scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """The module's metrics of ordering each user's candidates by `scores` [n, N] (higher first, ties by position)."""
    s = np.where(c.valid, np.asarray(scores, dtype=np.float64), -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top_valid = np.take_along_axis(c.valid, order, axis=1)
    ranked = np.full((len(order), k), -1, dtype=np.int64)  # lists shorter than k: -1 padded
    ranked[:, :order.shape[1]] = np.where(top_valid, order, -1)
    rel = _relevance(c)
    out = {f"ndcg@{k}": float(np.nanmean(ndcg_at_k(ranked, rel, k))) if len(ranked) else float("nan"),
           f"map@{k}": float(np.nanmean(average_precision_at_k(ranked, rel, k))) if len(ranked) else float("nan")}
    hits = np.take_along_axis(c.engaged, order, axis=1) & top_valid
    ratings = np.take_along_axis(c.rating, order, axis=1)[hits]
    ratings = ratings[np.isfinite(ratings)]
    out[f"mean_hit_rating@{k}"] = float(ratings.mean()) if len(ratings) else float("nan")
    for name, flag in c.flags.items():
        shown = np.take_along_axis(flag, order, axis=1)[top_valid]
        out[f"{name}_share@{k}"] = float(shown.mean()) if len(shown) else float("nan")
    return out


def select_fusion(c: ValidationCandidates, grid: Sequence[float], k: int = 10) -> tuple[float, pd.DataFrame]:
    """β by the module's rule; the table has one row per β (ndcg@k, map@k, chosen)."""
    rows = []
    for beta in sorted(set(float(b) for b in grid)):
        m = list_metrics(c, c.fused_logit(beta), k)
        rows.append({"retrieval_weight": beta, f"ndcg@{k}": m[f"ndcg@{k}"], f"map@{k}": m[f"map@{k}"]})
    table = pd.DataFrame(rows)
    best = int(np.argmax(np.nan_to_num(table[f"ndcg@{k}"].to_numpy(), nan=-np.inf)))  # first max = smallest β
    table["chosen"] = np.arange(len(table)) == best
    return float(table["retrieval_weight"].iloc[best]), table


def select_stacking(c: ValidationCandidates, beta: float, l2: float = 1.0, folds: int = 2, seed: int = 0,
                    k: int = 10) -> tuple[StackedEngagement | None, np.ndarray, pd.DataFrame]:
    """The stacked engagement model (ranking.stacking) against the fused head of the chosen β.

    The stacker's validation ndcg@k is measured out of fold: users split into `folds` seeded
    folds, each fold's lists scored by the model fit on the others. Rule: serve the stacker
    (refit on every validation candidate) iff its out-of-fold ndcg@k >= the fused head's
    (whose β was chosen on all of validation, a 1-parameter in-sample advantage).

    Returns:
      (the stacker or None, its out-of-fold logits [n, N], the comparison table).
    """
    if c.stack is None:
        raise ValueError("select_stacking needs the candidates' stacked features (ValidationCandidates.stack)")
    fold = user_folds(len(c.user_ids), folds, seed)
    oof = crossfit_logits(c.stack, c.engaged, c.valid, fold, l2)
    fused = list_metrics(c, c.fused_logit(beta), k)
    stacked = list_metrics(c, oof, k)
    table = pd.DataFrame([{"engagement": f"fused, β = {beta:g}", **fused},
                          {"engagement": f"stacked (out of {folds} folds)", **stacked}])
    use = bool(stacked[f"ndcg@{k}"] >= fused[f"ndcg@{k}"])
    table["chosen"] = [not use, use]
    model = fit_stacker(c.stack, c.engaged, c.valid, l2) if use else None
    return model, oof, table


def fit_calibration(c: ValidationCandidates, beta: float) -> PlattCalibration:
    """Platt (a, b) on every valid candidate's fused logit against its validation label."""
    return fit_platt(c.fused_logit(beta)[c.valid], c.engaged[c.valid])


def calibrated_engagement(c: ValidationCandidates, beta: float, calibration: PlattCalibration) -> np.ndarray:
    """[n, N] the served engagement: σ(a·z + b), 0 in padded slots."""
    return np.where(c.valid, calibration.apply(c.fused_logit(beta)), 0.0)


def blend_grid(shares: Sequence[float] = BLEND_SHARES) -> list[BlendWeights]:
    """Weights (1−α, α) per quality share α, multiplicative (raw heads) then additive on logits."""
    out = []
    for mode, transform in (("multiplicative", "identity"), ("additive", "logit")):
        for a in shares:
            out.append(BlendWeights(engagement=round(1.0 - a, 6), quality=round(a, 6), mode=mode, transform=transform))
    return out


def sweep_blends(c: ValidationCandidates, engagement: np.ndarray, grid: Sequence[BlendWeights],
                 k: int = 10) -> pd.DataFrame:
    """list_metrics of each blend of the served heads (`engagement` [n, N], c.quality): one row per blend."""
    e = np.clip(np.where(c.valid, engagement, 0.0), 0.0, 1.0).ravel()
    q = np.clip(np.where(c.valid, c.quality, 0.0), 0.0, 1.0).ravel()
    rows = []
    for w in grid:
        scores = blend_scores(e, q, w).reshape(c.valid.shape)
        rows.append({"mode": w.mode, "transform": w.transform, "engagement_weight": w.engagement,
                     "quality_weight": w.quality, **list_metrics(c, scores, k)})
    return pd.DataFrame(rows)


def select_blend(c: ValidationCandidates, engagement: np.ndarray, grid: Sequence[BlendWeights] | None = None,
                 k: int = 10) -> tuple[BlendWeights, pd.DataFrame]:
    """The default blend by the module's rule, and its table (sweep_blends + eligible, chosen)."""
    grid = list(grid or blend_grid())
    table = sweep_blends(c, engagement, grid, k)
    e_only = ((table["quality_weight"] == 0) & (table["engagement_weight"] > 0)).to_numpy()
    hit = table[f"mean_hit_rating@{k}"].to_numpy(dtype=np.float64)
    floor = hit[np.flatnonzero(e_only)[0]] if e_only.any() else -np.inf
    eligible = e_only | (np.nan_to_num(hit, nan=-np.inf) >= (floor if np.isfinite(floor) else -np.inf))
    score = np.where(eligible, np.nan_to_num(table[f"ndcg@{k}"].to_numpy(), nan=-np.inf), -np.inf)
    best = int(np.argmax(score))
    table["eligible"] = eligible
    table["chosen"] = np.arange(len(table)) == best
    return grid[best], table


__all__ = ["BLEND_SHARES", "ValidationCandidates", "blend_grid", "calibrated_engagement", "fit_calibration",
           "list_metrics", "select_blend", "select_fusion", "select_new_user_mixture", "select_stacking", "sigmoid",
           "sweep_blends"]


# -- the new-user (EVENTS) scorer ---------------------------------------------------------------
def select_new_user_mixture(histories: Mapping[str, Sequence[str]], item_ids: Sequence[str], quality: np.ndarray,
                            weights: BlendWeights, config: NewUserConfig) -> dict:
    """(w, d) of the new-user scorer (features.cooccurrence) on simulated new users of the train split.

    Rule: the train users with more than `first_events` distinct catalogue items are eligible;
    a seeded `simulated_share` of them (at least `min_simulated`, at most `max_simulated`) act as new users and are left
    out of the fit. P(j | i) and reach are fit on the other users' train histories; each
    simulated user's first `first_events` items (time order) are their events, the rest of
    their train items the relevant set. For every (w, d) of the grids the list is the catalogue
    ranked by blend(mixed engagement, quality prior) with `weights` (the version's default
    blend), the events excluded, top k; the best mean NDCG@k wins, ties → the smaller w, then the
    larger d (grid order). w = 0 — the popularity fallback — is always in the table, so the chosen
    mixture is never worse than the fallback on these users. Too few eligible users → w = 0.

    Args:
      histories: user → train items, oldest first (FeatureStore.seen).
      item_ids: [I] the catalogue; quality [I] the normalised quality prior in that order.

    Returns:
      {"weight", "decay", "table": [rows], "simulated_users", "fit_users", "rule"}.
    """
    item_ids = [str(i) for i in item_ids]
    col = {i: c for c, i in enumerate(item_ids)}
    n_items = len(item_ids)
    first = config.first_events

    def distinct(items: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for i in items:
            if i in col and i not in seen:
                seen.add(i)
                out.append(i)
        return out

    users = sorted(str(u) for u in histories)
    eligible = [u for u in users if len(distinct(histories[u])) > first]
    size = min(config.max_simulated, max(config.min_simulated, int(round(config.simulated_share * len(eligible)))))
    rule = ("simulated new users: a seeded share of the train users with more than first_events items, held out "
            "of the fit; best NDCG@k of blend(mixture, quality prior) with the default blend, events excluded; "
            "ties -> smaller w, then the decay grid's order")
    if len(eligible) < 2 * size or size < 1:
        return {"weight": 0.0, "decay": 1.0, "table": [], "simulated_users": 0, "fit_users": len(users),
                "rule": rule, "skipped": f"{len(eligible)} eligible users; need {2 * size} (--newuser-min-simulated)"}
    rng = np.random.default_rng(config.seed)
    simulated = sorted(rng.choice(np.asarray(eligible, dtype=object), size=size, replace=False).tolist())
    held = set(simulated)
    fit_users = [u for u in users if u not in held]
    x = engagement_matrix(histories, fit_users, item_ids)
    cond = conditional_neighbors(x, config.neighbors, config.max_pairs)
    reach = np.asarray(x.sum(axis=0)).ravel() / max(len(fit_users), 1)
    events, relevant = [], []
    for u in simulated:
        items = distinct(histories[u])
        events.append([col[i] for i in items[:first][::-1]])  # newest first
        relevant.append([col[i] for i in items[first:]])
    def indicator(columns: list[list[int]]) -> sp.csr_matrix:  # [simulated, I], 1 at each user's columns
        row = np.repeat(np.arange(len(columns)), [len(c) for c in columns])
        return sp.csr_matrix((np.ones(len(row)), (row, np.concatenate(columns))), shape=(len(columns), n_items))

    rel, excluded = indicator(relevant), indicator(events)
    q = np.clip(np.asarray(quality, dtype=np.float64), 0.0, 1.0)
    k = config.k
    rows = []
    block = 256  # users per top-k call: a [block, I] float64 score matrix, bounded at any catalogue size
    for d in config.decay_grid:
        profiles = np.stack([profile(cond, e, d) for e in events])
        for w in sorted(set(float(v) for v in config.weight_grid) | {0.0}):
            ranked = np.empty((len(simulated), k), dtype=np.int64)
            for lo in range(0, len(simulated), block):
                hi = min(lo + block, len(simulated))
                scores = np.stack([blend_scores(np.clip(mixed_engagement(reach, profiles[r], w), 0.0, 1.0), q, weights)
                                   for r in range(lo, hi)])
                ranked[lo:hi] = top_k_excluding(scores, excluded[lo:hi], k)  # ties: lower column first
            rows.append({"weight": w, "decay": float(d), f"ndcg@{k}": float(np.nanmean(ndcg_at_k(ranked, rel, k)))})
    metric = np.array([r[f"ndcg@{k}"] for r in rows])
    order = sorted(range(len(rows)), key=lambda i: (-np.nan_to_num(metric[i], nan=-np.inf), rows[i]["weight"], i))
    best = order[0]
    for i, r in enumerate(rows):
        r["chosen"] = i == best
    fallback = max(r[f"ndcg@{k}"] for r in rows if r["weight"] == 0.0)
    return {"weight": rows[best]["weight"], "decay": rows[best]["decay"], "table": rows,
            "simulated_users": len(simulated), "fit_users": len(fit_users), "rule": rule,
            f"ndcg@{k}": rows[best][f"ndcg@{k}"], f"fallback_ndcg@{k}": fallback}
