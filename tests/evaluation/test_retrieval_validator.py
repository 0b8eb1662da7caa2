"""evaluation.retrieval_validator: the two-tower's epoch-selection metrics, by evaluation's definitions.

It replaced retrieval/train.py's own top-k / recall / NDCG; the reference below is that
code, kept as the independent implementation the validator must agree with to 1e-9.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from evaluation import RetrievalValidator, retrieval_validator


def _reference(scores: np.ndarray, exclude: sp.csr_matrix, relevant: list[set[int]], k_recall: int = 100,
               k_ndcg: int = 10) -> dict:
    """retrieval/train.py before the validator: top_k_scores + recall_ndcg over -inf-masked scores."""
    scores = scores.copy()
    coo = exclude.tocoo()
    scores[coo.row, coo.col] = -np.inf
    k = min(k_recall, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k_ndcg + 2))
    recalls, ndcgs = [], []
    for row, rel in zip(top, relevant):
        if not rel:
            continue
        hits = np.fromiter((c in rel for c in row[:max(k_recall, k_ndcg)]), dtype=bool)
        recalls.append(hits[:k_recall].sum() / len(rel))
        dcg = (hits[:k_ndcg] * discounts[:len(hits[:k_ndcg])]).sum()
        ndcgs.append(dcg / discounts[:min(k_ndcg, len(rel))].sum())
    return {f"recall_at_{k_recall}": float(np.mean(recalls)) if recalls else 0.0,
            f"ndcg_at_{k_ndcg}": float(np.mean(ndcgs)) if ndcgs else 0.0}


def _case(seed: int, users: int = 300, items: int = 800):
    """Seeded float32 scores (no ties), each user's earlier items, held-out items (some users none)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((users, items)).astype(np.float32)
    seen = rng.random((users, items)) < 0.05
    heldout = (rng.random((users, items)) < 0.02) & ~seen
    heldout[rng.random(users) < 0.1] = False  # users with nothing relevant are not averaged
    # planted signal so the metrics are far from 0: held-out items score higher on average
    scores += (heldout * rng.random((users, items)) * 2.5).astype(np.float32)
    relevant = [set(np.flatnonzero(r).tolist()) for r in heldout]
    return scores, sp.csr_matrix(seen.astype(np.float64)), sp.csr_matrix(heldout.astype(np.float64)), relevant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_validator_equals_the_former_retrieval_metrics(seed):
    scores, exclude, relevance, relevant = _case(seed)
    got = retrieval_validator()(scores, exclude, relevance)
    want = _reference(scores, exclude, relevant)
    assert set(got) == {"recall_at_100", "ndcg_at_10"}
    assert 0.05 < got["ndcg_at_10"] < 1 and 0.05 < got["recall_at_100"] < 1
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9)


def test_retrieval_validator_batches_users_without_changing_the_result():
    scores, exclude, relevance, _ = _case(3, users=50, items=200)
    whole = RetrievalValidator()(scores, exclude, relevance)
    assert RetrievalValidator(batch_users=7)(scores, exclude, relevance) == whole


def test_retrieval_validator_golden_values_and_edge_cases():
    # one user, 4 items: item 2 excluded; relevant {0, 3}; ranking by score: 3, (2 excluded), 1, 0
    scores = np.array([[0.1, 0.5, 0.9, 0.8]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[0, 0, 1, 0]], dtype=np.float64))
    relevance = sp.csr_matrix(np.array([[1, 0, 0, 1]], dtype=np.float64))
    got = RetrievalValidator(k_recall=2, k_ndcg=2)(scores, exclude, relevance)
    # top-2 = [3, 1]: one hit of two → recall 0.5; DCG = 1, IDCG = 1 + 1/log2(3)
    assert got == pytest.approx({"recall_at_2": 0.5, "ndcg_at_2": 1 / (1 + 1 / np.log2(3))}, abs=1e-12)
    nobody = sp.csr_matrix((1, 4))
    assert RetrievalValidator()(scores, exclude, nobody) == {"recall_at_100": 0.0, "ndcg_at_10": 0.0}
    perfect = RetrievalValidator(k_recall=1, k_ndcg=1)(scores, exclude, sp.csr_matrix([[0, 0, 0, 1.0]]))
    assert perfect == {"recall_at_1": 1.0, "ndcg_at_1": 1.0}
    with pytest.raises(ValueError, match=">= 1"):
        RetrievalValidator(k_recall=0)
