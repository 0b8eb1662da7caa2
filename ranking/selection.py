"""Choosing the version's default blend on held-out validation candidates, by a written rule.

The rule (README, "Ranker and blender"): among the grid of blends, take the one with the
best validation NDCG@k whose mean hit rating@k is at least the engagement-only blend's;
ties go to the earlier grid entry. The engagement-only blend always qualifies, so a blend
is always chosen. Only validation rows are read: nothing is selected on test.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ranking.blender import BlendWeights, rank_by_blend

SHARES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def blend_grid(shares: Sequence[float] = SHARES) -> list[BlendWeights]:
    """Weights (1-α, α) for each quality share α, multiplicative e^(1-α)·q^α and additive on logits."""
    out = []
    for mode, transform in (("multiplicative", "identity"), ("additive", "logit")):
        for a in shares:
            out.append(BlendWeights(engagement=float(1.0 - a), quality=float(a), mode=mode, transform=transform))
    return out


def blend_candidates(rows: pd.DataFrame, weights: BlendWeights, k: int = 10) -> dict[str, float]:
    """List metrics of one blend over per-user candidate lists.

    Args:
      rows: one row per (user_id, candidate) with `engaged` (0/1), `rating` (NaN if none),
        `engagement` and `quality` (the heads), in each user's retrieval order.
      weights: the blend.
      k: cut-off.

    Returns:
      ndcg@k: binary gain, IDCG over the user's engaged candidates (users with none skipped);
      map@k: AP@k = Σ_{i≤k} P@i·rel_i / min(k, |engaged candidates|);
      mean_hit_rating@k: mean rating of the top-k hits that have a rating;
      <col>_share@k for each boolean column named in rows.attrs.get("flags", ()): the share
        of top-k slots holding a flagged item (e.g. clickbait).
    """
    flags = tuple(rows.attrs.get("flags", ()))
    ndcg, ap, ratings = [], [], []
    flagged = {f: [0, 0] for f in flags}
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for _, g in rows.groupby("user_id", sort=False):
        y = g["engaged"].to_numpy()
        n_rel = int(y.sum())
        order, _ = rank_by_blend(g["engagement"].to_numpy(), g["quality"].to_numpy(), weights)
        top = order[:k]
        for f in flags:
            flagged[f][0] += int(g[f].to_numpy()[top].sum())
            flagged[f][1] += len(top)
        if n_rel == 0:
            continue
        rel = y[top]
        ndcg.append(float((rel * disc[:len(top)]).sum() / disc[:min(k, n_rel)].sum()))
        prec = np.cumsum(rel) / np.arange(1, len(top) + 1)
        ap.append(float((prec * rel).sum() / min(k, n_rel)))
        r = g["rating"].to_numpy()[top][rel == 1]
        ratings.extend(r[np.isfinite(r)])
    out = {f"ndcg@{k}": float(np.mean(ndcg)) if ndcg else float("nan"),
           f"map@{k}": float(np.mean(ap)) if ap else float("nan"),
           f"mean_hit_rating@{k}": float(np.mean(ratings)) if ratings else float("nan")}
    for f, (hit, slots) in flagged.items():
        out[f"{f}_share@{k}"] = hit / slots if slots else float("nan")
    return out


def select_blend(rows: pd.DataFrame, grid: Sequence[BlendWeights] | None = None,
                 k: int = 10) -> tuple[BlendWeights, pd.DataFrame]:
    """The default blend by the module's rule, and the selection table (one row per grid entry).

    `rows` as for blend_candidates: held-out validation candidates only.
    """
    grid = list(grid or blend_grid())
    table = []
    for w in grid:
        m = blend_candidates(rows, w, k)
        table.append({"mode": w.mode, "transform": w.transform, "engagement_weight": w.engagement,
                      "quality_weight": w.quality, **m})
    df = pd.DataFrame(table)
    eng_only = (df["quality_weight"] == 0) & (df["engagement_weight"] > 0)
    floor = float(df.loc[eng_only, f"mean_hit_rating@{k}"].iloc[0]) if eng_only.any() else -np.inf
    hit = df[f"mean_hit_rating@{k}"].to_numpy()
    eligible = eng_only.to_numpy() | (np.nan_to_num(hit, nan=-np.inf) >= floor) | (np.isnan(hit) & np.isnan(floor))
    score = np.where(eligible, np.nan_to_num(df[f"ndcg@{k}"].to_numpy(), nan=-np.inf), -np.inf)
    best = int(np.argmax(score))
    df["eligible"] = eligible
    df["chosen"] = np.arange(len(df)) == best
    return grid[best], df


FUSION_WEIGHTS: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def select_fusion(rows: pd.DataFrame, logit: np.ndarray, gap: np.ndarray,
                  weights: Sequence[float] = FUSION_WEIGHTS, k: int = 10) -> tuple[float, pd.DataFrame]:
    """The retrieval fusion weight γ of the engagement head, chosen on held-out validation candidates.

    Each γ orders every user's candidates by logit + γ · gap (gap = retrieval_gap ≤ 0); the
    γ with the best NDCG@k (blend_candidates, engagement alone) wins, ties to the smaller γ.
    `rows` as for blend_candidates (its engagement/quality columns are replaced).

    Returns:
      (γ, table of γ → ndcg@k, map@k).
    """
    table = []
    for g in weights:
        z = np.asarray(logit, np.float64) + g * np.asarray(gap, np.float64)
        m = blend_candidates(rows.assign(engagement=1.0 / (1.0 + np.exp(-np.clip(z, -700, 700))), quality=1.0),
                             BlendWeights(1.0, 0.0, "multiplicative"), k)
        table.append({"fusion_weight": float(g), f"ndcg@{k}": m[f"ndcg@{k}"], f"map@{k}": m[f"map@{k}"]})
    df = pd.DataFrame(table)
    best = int(np.argmax(np.nan_to_num(df[f"ndcg@{k}"].to_numpy(), nan=-np.inf)))
    df["chosen"] = np.arange(len(df)) == best
    return float(df["fusion_weight"].iloc[best]), df


__all__ = ["FUSION_WEIGHTS", "SHARES", "blend_candidates", "blend_grid", "select_blend", "select_fusion"]
