"""Ranking metrics for the offline evaluation, vectorised over users with numpy/scipy.

Every function takes `ranked` [n, K] int64 catalogue column indices, best first, with -1
as padding (never relevant), and a relevance matrix [n, I] in CSR form whose row r holds
the gains of user r's relevant test items (binary 1.0, or graded, e.g. the rating).
Row r of `ranked` and row r of `relevance` are the same user. Per-user functions return
[n] float64 arrays; users with no relevant item get NaN where the metric divides by
|relevant| (NDCG, AP, recall) and are excluded from every mean in `evaluate_rankings`.

A ranking is a list, so it has no ties; ties exist only in how a model's scores become a
ranking, and `evaluation.protocol.top_k_excluding` breaks them by lower column index.

Sources: Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques",
ACM TOIS 20(4), 2002 (DCG with linear gain and log2(i+1) discount); trec_eval
(`ndcg_cut`, `P`, `recall`, `recip_rank`); Microsoft Recommenders
`recommenders.evaluation.python_evaluation` (`map_at_k`: AP normalised by min(k, |rel|)).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from evaluation.protocol import EvalData


def _check(ranked: np.ndarray, relevance: sp.csr_matrix | None = None) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D [users, K], got shape {ranked.shape}")
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must hold integer column indices, got dtype {ranked.dtype}")
    ranked = ranked.astype(np.int64, copy=False)
    if relevance is not None:
        if relevance.shape[0] != ranked.shape[0]:
            raise ValueError(f"ranked has {ranked.shape[0]} rows but relevance has {relevance.shape[0]}; "
                             "row r of both must be the same user")
        if ranked.size and (ranked.min() < -1 or ranked.max() >= relevance.shape[1]):
            raise ValueError(f"ranked holds column indices outside [-1, {relevance.shape[1]}) "
                             f"(min {ranked.min()}, max {ranked.max()})")
    if ranked.size:
        s = np.sort(ranked, axis=1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if dup.any():
            r = int(np.flatnonzero(dup.any(axis=1))[0])
            raise ValueError(f"ranked row {r} lists an item twice; a ranking holds each item at most once")
    return ranked


def _check_k(k: int, ranked: np.ndarray) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > ranked.shape[1]:
        raise ValueError(f"k={k} exceeds the ranking length {ranked.shape[1]}; pad rankings with -1 to length k")


def gains_at_ranks(ranked: np.ndarray, relevance: sp.csr_matrix) -> np.ndarray:
    """[n, K] gain of the item at each rank (0 for non-relevant items and -1 padding)."""
    ranked = _check(ranked, relevance)
    rel = sp.csr_matrix(relevance, dtype=np.float64, copy=True)
    rel.sum_duplicates()  # canonical: sorted column indices, no duplicates
    n, num_items = rel.shape
    # Look every (row, column) pair up at once in the sorted flat keys row * I + column.
    row_of_nz = np.repeat(np.arange(n, dtype=np.int64), np.diff(rel.indptr))
    keys = row_of_nz * num_items + rel.indices.astype(np.int64)
    query = np.arange(n, dtype=np.int64)[:, None] * num_items + ranked
    pos = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
    out = np.zeros(ranked.shape, dtype=np.float64)
    if len(keys):
        found = (keys[pos] == query) & (ranked >= 0)
        out[found] = rel.data[pos[found]]
    return out


def _num_relevant(relevance: sp.csr_matrix) -> np.ndarray:
    rel = sp.csr_matrix(relevance)
    rel.sum_duplicates()
    return np.diff((rel > 0).tocsr().indptr).astype(np.float64)


def _discounts(k: int) -> np.ndarray:
    """[k] 1 / log2(i + 1) for 1-based ranks i = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (users with no relevant item)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# Each metric is computed from g = [n, k] gains at ranks (and |relevant| or IDCG), so
# evaluate_ranked looks gains up once and the public per-metric functions share the code.
def _ndcg(g: np.ndarray, idcg: np.ndarray, k: int) -> np.ndarray:
    return _safe_div(g[:, :k] @ _discounts(k), idcg)


def _precision(hits: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(axis=1) / k


def _recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return _safe_div(hits[:, :k].sum(axis=1), n_rel)


def _average_precision(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    h = hits[:, :k]
    prec_at_i = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    return _safe_div((prec_at_i * h).sum(axis=1), np.minimum(n_rel, k))


def _reciprocal_rank(hits: np.ndarray) -> np.ndarray:
    found = hits > 0
    return np.where(found.any(axis=1), 1.0 / (np.argmax(found, axis=1) + 1.0), 0.0)


def _hit_rate(hits: np.ndarray, k: int) -> np.ndarray:
    return (hits[:, :k].sum(axis=1) > 0).astype(np.float64)


def _coverage(ranked: np.ndarray, num_items: int, k: int) -> float:
    top = ranked[:, :k]
    return float(len(np.unique(top[top >= 0]))) / num_items


def _binary_hits(ranked: np.ndarray, relevance: sp.csr_matrix, k: int) -> np.ndarray:
    ranked = _check(ranked, relevance)
    _check_k(k, ranked)
    return (gains_at_ranks(ranked[:, :k], relevance) > 0).astype(np.float64)


def dcg_at_k(ranked: np.ndarray, relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """[n] DCG@k = Σ_{i=1..k} gain_i / log2(i + 1) (Järvelin & Kekäläinen 2002, linear gain).

    gain_i is the relevance value of the item at 1-based rank i (0 if not relevant).
    """
    ranked = _check(ranked, relevance)
    _check_k(k, ranked)
    return gains_at_ranks(ranked[:, :k], relevance) @ _discounts(k)


def ideal_dcg_at_k(relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """[n] IDCG@k: the DCG@k of the user's relevant items sorted by gain, descending."""
    rel = sp.csr_matrix(relevance, dtype=np.float64, copy=True)
    rel.sum_duplicates()
    n = rel.shape[0]
    rows = np.repeat(np.arange(n), np.diff(rel.indptr))
    order = np.lexsort((-rel.data, rows))  # by row, then gain descending
    rows, data = rows[order], rel.data[order]
    counts = np.bincount(rows, minlength=n)
    rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    top = (rank < k) & (data > 0)
    return np.bincount(rows[top], weights=data[top] / np.log2(rank[top] + 2.0), minlength=n)


def ndcg_at_k(ranked: np.ndarray, relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """[n] NDCG@k = DCG@k / IDCG@k, in [0, 1]; NaN for users with no relevant item.

    Linear gain, log2(i + 1) discount, IDCG over the user's relevant test items sorted by
    gain (Järvelin & Kekäläinen 2002; trec_eval `ndcg_cut.k`). With binary relevance this
    is the engagement NDCG; pass the rating matrix for graded NDCG.
    """
    return _safe_div(dcg_at_k(ranked, relevance, k), ideal_dcg_at_k(relevance, k))


def precision_at_k(ranked: np.ndarray, relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """[n] Precision@k = hits@k / k, in [0, 1] (trec_eval `P.k`: padding counts as a miss)."""
    return _precision(_binary_hits(ranked, relevance, k), k)


def recall_at_k(ranked: np.ndarray, relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """[n] Recall@k = hits@k / |relevant|, in [0, 1]; NaN if |relevant| = 0 (trec_eval `recall.k`)."""
    return _recall(_binary_hits(ranked, relevance, k), _num_relevant(relevance), k)


def average_precision_at_k(ranked: np.ndarray, relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """[n] AP@k = Σ_{i=1..k} P@i · rel_i / min(k, |relevant|), in [0, 1]; NaN if |relevant| = 0.

    rel_i is 1 if the item at rank i is relevant, P@i the precision at cut-off i. The
    min(k, |relevant|) denominator makes a perfect top-k score 1.0 even for users with more
    than k relevant items (Microsoft Recommenders `map_at_k`). trec_eval's `map_cut.k` and
    ranx's `map@k` divide by |relevant| instead; the two agree when |relevant| <= k.
    """
    return _average_precision(_binary_hits(ranked, relevance, k), _num_relevant(relevance), k)


def reciprocal_rank(ranked: np.ndarray, relevance: sp.csr_matrix) -> np.ndarray:
    """[n] 1 / (1-based rank of the first relevant item among all K ranked), 0 if none.

    The reciprocal rank at cut-off K = ranked.shape[1] (trec_eval `recip_rank` over a run
    of K items); MRR is its mean over users.
    """
    ranked = _check(ranked, relevance)
    return _reciprocal_rank(gains_at_ranks(ranked, relevance))


def hit_rate_at_k(ranked: np.ndarray, relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """[n] 1.0 if any of the top k items is relevant, else 0.0."""
    return _hit_rate(_binary_hits(ranked, relevance, k), k)


def catalogue_coverage(ranked: np.ndarray, num_items: int, k: int) -> float:
    """|∪ over users of their top-k items| / |catalogue|, in [0, 1] (-1 padding ignored)."""
    ranked = _check(ranked)
    _check_k(k, ranked)
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    return _coverage(ranked, num_items, k)


def evaluate_ranked(ranked: np.ndarray, gain: sp.csr_matrix, num_items: int,
                    ks: Sequence[int] = (10, 100)) -> dict[str, float]:
    """All metrics, averaged over the rows of `gain` with at least one relevant item.

    Args:
      ranked: [n, K'] column indices, best first, -1 padded. Truncated (or -1 padded) to
        K = max(ks) columns first, so "mrr" is MRR@max(ks) whatever K' is.
      gain: [n, I] CSR graded gains (> 0 = relevant). Binary metrics use gain > 0; the
        "ndcg_graded@k" keys use the gains themselves.
      num_items: catalogue size |I| for coverage.
      ks: the cut-offs.

    Returns:
      {"users": n evaluated, "ndcg@k", "ndcg_graded@k", "map@k", "recall@k",
      "precision@k", "hit_rate@k", "coverage@k" for each k, "mrr"}. Rows with no relevant
      item are excluded from every mean (and from coverage); with no evaluable row every
      mean is NaN.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    ranked = _check(ranked, gain)
    kmax = ks[-1]
    if ranked.shape[1] < kmax:
        ranked = np.pad(ranked, ((0, 0), (0, kmax - ranked.shape[1])), constant_values=-1)
    ranked = ranked[:, :kmax]
    gain = sp.csr_matrix(gain, dtype=np.float64, copy=True)
    gain.sum_duplicates()
    gain.data[gain.data < 0] = 0.0  # a judged-non-relevant item carries no gain
    gain.eliminate_zeros()
    keep = np.flatnonzero(np.diff(gain.indptr) > 0)
    ranked, gain = ranked[keep], gain[keep]
    n_rel = np.diff(gain.indptr).astype(np.float64)
    graded = gains_at_ranks(ranked, gain)
    hits = (graded > 0).astype(np.float64)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else float("nan")

    out: dict[str, float] = {"users": float(len(keep))}
    for k in ks:
        out[f"ndcg@{k}"] = mean(_ndcg(hits, ideal_dcg_at_k((gain > 0).astype(np.float64), k), k))
        out[f"ndcg_graded@{k}"] = mean(_ndcg(graded, ideal_dcg_at_k(gain, k), k))
        out[f"map@{k}"] = mean(_average_precision(hits, n_rel, k))
        out[f"recall@{k}"] = mean(_recall(hits, n_rel, k))
        out[f"precision@{k}"] = mean(_precision(hits, k))
        out[f"hit_rate@{k}"] = mean(_hit_rate(hits, k))
        out[f"coverage@{k}"] = _coverage(ranked, num_items, k) if len(keep) else float("nan")
    out["mrr"] = mean(_reciprocal_rank(hits))
    return out


def evaluate_rankings(ranked: np.ndarray, data: EvalData, ks: Sequence[int] = (10, 100)) -> dict[str, float]:
    """Every metric of `evaluate_ranked` for rankings of `data.test_users`.

    Args:
      ranked: [len(data.test_users), K] catalogue column indices, row r ranking user
        data.test_users[r], best first, -1 padded.
      data: the split; relevance is data.test_gain (binary metrics use gain > 0).
      ks: cut-offs; "mrr" is MRR@max(ks).

    Returns:
      A dict of floats, e.g. {"users": 943, "ndcg@10": …, "ndcg_graded@10": …, "map@10": …,
      "recall@100": …, "coverage@10": …, "mrr": …}.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(data.test_users):
        raise ValueError(f"ranked must have one row per test user ({len(data.test_users)}), got shape {ranked.shape}")
    return evaluate_ranked(ranked, data.test_gain[data.test_users], data.num_items, ks)
