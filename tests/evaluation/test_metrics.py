"""Ranking metrics: hand-computed golden values, edge cases, and agreement with trec_eval."""
import math

import numpy as np
import pytest
import pytrec_eval
import scipy.sparse as sp

from evaluation import (
    average_precision_at_k,
    catalogue_coverage,
    dcg_at_k,
    evaluate_ranked,
    gains_at_ranks,
    hit_rate_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)

L3 = 1.0 / math.log2(3)  # discount at rank 2
L4 = 0.5                 # discount at rank 3


def _rel(rows):
    return sp.csr_matrix(np.asarray(rows, dtype=np.float64))


# user 0: gains {item0: 3, item2: 2, item3: 1}; user 1: nothing relevant; user 2: {item1: 1}
GAIN = _rel([[3, 0, 2, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]])
BINARY = (GAIN > 0).astype(np.float64)
RANKED = np.array([[0, 4, 2, -1, 5], [0, 1, 2, 3, 4], [5, 1, -1, -1, -1]])


def test_metrics_match_hand_computed_golden_values():
    # user 0 binary: hits at ranks 1 and 3 of 3.
    ndcg = ndcg_at_k(RANKED, BINARY, 3)
    assert ndcg[0] == pytest.approx((1 + L4) / (1 + L3 + L4))
    assert math.isnan(ndcg[1])                      # no relevant item: undefined
    assert ndcg[2] == pytest.approx(L3 / 1.0)       # one relevant item, found at rank 2
    graded = ndcg_at_k(RANKED, GAIN, 3)
    assert graded[0] == pytest.approx((3 + 2 * L4) / (3 + 2 * L3 + 1 * L4))
    assert dcg_at_k(RANKED, GAIN, 3)[0] == pytest.approx(3 + 2 * L4)
    ap = average_precision_at_k(RANKED, BINARY, 3)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert ap[2] == pytest.approx((1 / 2) / 1)      # min(k, |relevant|) = 1
    np.testing.assert_allclose(recall_at_k(RANKED, BINARY, 3), [2 / 3, np.nan, 1.0])
    np.testing.assert_allclose(precision_at_k(RANKED, BINARY, 3), [2 / 3, 0.0, 1 / 3])
    np.testing.assert_allclose(reciprocal_rank(RANKED, BINARY), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(hit_rate_at_k(RANKED, BINARY, 1), [1.0, 0.0, 0.0])
    assert catalogue_coverage(RANKED, 6, 2) == pytest.approx(len({0, 4, 1, 5}) / 6)


def test_evaluate_ranked_excludes_users_without_relevant_items():
    got = evaluate_ranked(RANKED, GAIN, num_items=6, ks=(3,))
    assert got["users"] == 2
    assert got["ndcg@3"] == pytest.approx(((1 + L4) / (1 + L3 + L4) + L3) / 2)
    assert got["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # user 1's 0.0 is not averaged in
    assert got["mrr"] == pytest.approx((1 + 0.5) / 2)
    # coverage counts only evaluated users' lists: {0, 4, 2} ∪ {5, 1}
    assert got["coverage@3"] == pytest.approx(5 / 6)
    assert set(got) == {"users", "ndcg@3", "ndcg_graded@3", "map@3", "recall@3", "precision@3", "hit_rate@3",
                        "coverage@3", "mrr"}


def test_perfect_ranking_scores_one_even_with_more_relevant_than_k():
    rel = _rel([[5, 4, 3, 2, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 2]])
    ranked = np.array([[0, 1, 2, 3, 4, 5, 6], [7, -1, -1, -1, -1, -1, -1]])
    got = evaluate_ranked(ranked, rel, num_items=8, ks=(3, 7))
    for key in ("ndcg@3", "ndcg_graded@3", "map@3", "hit_rate@3", "ndcg@7", "ndcg_graded@7", "map@7", "recall@7",
                "mrr"):
        assert got[key] == pytest.approx(1.0), key
    assert got["recall@3"] == pytest.approx((3 / 7 + 1) / 2)       # recall is capped by k
    assert got["precision@7"] == pytest.approx((7 / 7 + 1 / 7) / 2)  # padding counts as a miss


def test_no_hits_scores_zero():
    rel = _rel([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    ranked = np.array([[2, 3, 4], [0, 1, -1]])
    got = evaluate_ranked(ranked, rel, num_items=5, ks=(2, 3))
    for key, value in got.items():
        if key.startswith("coverage") or key == "users":
            continue
        assert value == 0.0, key


def test_padding_never_counts_as_relevant():
    # -1 must not be looked up as "the last column" or as the previous row's item.
    rel = _rel([[0, 0, 0, 1], [1, 0, 0, 1]])
    ranked = np.array([[-1, -1], [-1, 3]])
    np.testing.assert_array_equal(gains_at_ranks(ranked, rel), [[0, 0], [0, 1]])
    assert catalogue_coverage(ranked, 4, 2) == pytest.approx(1 / 4)


def test_rankings_shorter_than_k_are_padded_and_longer_truncated():
    rel = _rel([[0, 1, 0, 1]])
    short = evaluate_ranked(np.array([[1]]), rel, num_items=4, ks=(2,))
    padded = evaluate_ranked(np.array([[1, -1]]), rel, num_items=4, ks=(2,))
    long = evaluate_ranked(np.array([[1, 0, 3]]), rel, num_items=4, ks=(2,))
    assert short == padded
    assert long["recall@2"] == 0.5 and long["mrr"] == 1.0  # item 3 at rank 3 is beyond max(ks)=2


@pytest.mark.parametrize("ranked, message", [
    (np.array([[0, 0, 1]]), "twice"),
    (np.array([[0, 9, 1]]), "outside"),
    (np.array([[0.0, 1.0, 2.0]]), "integer"),
    (np.array([0, 1, 2]), "2-D"),
])
def test_invalid_rankings_are_rejected(ranked, message):
    with pytest.raises(ValueError, match=message):
        evaluate_ranked(ranked, _rel([[1, 0, 0, 0]]), num_items=4, ks=(2,))


def test_row_mismatch_and_bad_k_are_rejected():
    with pytest.raises(ValueError, match="same user"):
        ndcg_at_k(np.array([[0, 1]]), GAIN, 2)
    with pytest.raises(ValueError, match="exceeds"):
        precision_at_k(RANKED, BINARY, 6)
    with pytest.raises(ValueError, match="positive"):
        evaluate_ranked(RANKED, GAIN, 6, ks=(0,))


# -- agreement with an independent implementation (trec_eval via pytrec_eval) -------------
def _random_case(seed: int, users: int = 60, items: int = 150, depth: int = 20):
    rng = np.random.default_rng(seed)
    dense = np.zeros((users, items))
    for u in range(users):
        n_rel = int(rng.integers(0, 25))  # some users have none, some fewer than k, some more
        dense[u, rng.choice(items, n_rel, replace=False)] = rng.integers(1, 6, n_rel)  # graded gains 1..5
    ranked = np.full((users, depth), -1, dtype=np.int64)
    for u in range(users):
        length = int(rng.integers(1, depth + 1))  # every run is non-empty, some are shorter than depth
        # Bias the ranking towards relevant items so there are hits at every depth.
        weights = 1.0 + 4.0 * (dense[u] > 0)
        ranked[u, :length] = rng.choice(items, length, replace=False, p=weights / weights.sum())
    return sp.csr_matrix(dense), ranked


def _trec(gain: sp.csr_matrix, ranked: np.ndarray, measures: set[str]) -> dict[str, dict[str, float]]:
    """pytrec_eval on our data. Scores strictly decrease with rank, because trec_eval orders
    a run by score and breaks ties by docno, not by the rank we mean."""
    qrels, run = {}, {}
    for u in range(gain.shape[0]):
        row = gain.getrow(u)
        if row.nnz:
            qrels[f"u{u}"] = {f"i{c}": int(g) for c, g in zip(row.indices, row.data)}
        run[f"u{u}"] = {f"i{c}": float(ranked.shape[1] - p) for p, c in enumerate(ranked[u]) if c >= 0}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_trec_eval(seed):
    gain, ranked = _random_case(seed)
    binary = (gain > 0).astype(np.float64)
    trec = _trec(gain, ranked, {"ndcg_cut.5", "ndcg_cut.10", "P.5", "P.10", "recall.5", "recall.10",
                                "recip_rank", "map_cut.10"})
    trec_binary = _trec(binary, ranked, {"ndcg_cut.10"})
    users = [u for u in range(gain.shape[0]) if gain.getrow(u).nnz]
    assert len(users) < gain.shape[0]  # the case includes users with nothing relevant
    assert set(trec) == {f"u{u}" for u in users}  # trec_eval also skips them

    def ours(values):
        return np.asarray(values)[users]

    def theirs(measure, table=trec):
        return np.array([table[f"u{u}"][measure] for u in users])

    for k in (5, 10):
        # trec_eval's ndcg uses the qrels level as a linear gain: our graded NDCG.
        np.testing.assert_allclose(ours(ndcg_at_k(ranked, gain, k)), theirs(f"ndcg_cut_{k}"), atol=1e-6)
        np.testing.assert_allclose(ours(precision_at_k(ranked, binary, k)), theirs(f"P_{k}"), atol=1e-6)
        np.testing.assert_allclose(ours(recall_at_k(ranked, binary, k)), theirs(f"recall_{k}"), atol=1e-6)
    np.testing.assert_allclose(ours(ndcg_at_k(ranked, binary, 10)), theirs("ndcg_cut_10", trec_binary), atol=1e-6)
    # recip_rank runs over the whole run, i.e. all K ranked items.
    np.testing.assert_allclose(ours(reciprocal_rank(ranked, binary)), theirs("recip_rank"), atol=1e-6)
    # trec_eval's map_cut.k divides by |relevant|; our AP@k (Microsoft Recommenders' map_at_k)
    # by min(k, |relevant|). Compare the matching quantity: AP@k · min(k, R) / R. (ranx's
    # map@k uses the trec_eval denominator too, see ranx/metrics/average_precision.py, so it
    # would add nothing here but a numba compile.)
    n_rel = np.diff(binary.indptr)[users]
    ap = ours(average_precision_at_k(ranked, binary, 10))
    np.testing.assert_allclose(ap * np.minimum(10, n_rel) / n_rel, theirs("map_cut_10"), atol=1e-6)
    # ...and they coincide wherever |relevant| <= k.
    small = n_rel <= 10
    assert small.any() and (~small).any()
    np.testing.assert_allclose(ap[small], theirs("map_cut_10")[small], atol=1e-6)
    # The means evaluate_ranked reports are the means over exactly these users.
    got = evaluate_ranked(ranked, gain, gain.shape[1], ks=(5, 10, 20))
    assert got["users"] == len(users)
    assert got["ndcg_graded@10"] == pytest.approx(theirs("ndcg_cut_10").mean(), abs=1e-9)
    assert got["ndcg@10"] == pytest.approx(theirs("ndcg_cut_10", trec_binary).mean(), abs=1e-9)
    assert got["precision@5"] == pytest.approx(theirs("P_5").mean(), abs=1e-9)
    assert got["mrr"] == pytest.approx(theirs("recip_rank").mean(), abs=1e-9)
