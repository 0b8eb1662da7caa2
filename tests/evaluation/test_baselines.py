"""Baselines: closed forms, exclusions, reproducibility, validation-based λ selection."""
import logging

import numpy as np
import pytest
import scipy.sparse as sp

from evaluation import (
    BiasRecommender,
    EASEConfig,
    EASERecencyConfig,
    EASERecencyRecommender,
    EASERecommender,
    ItemKNNConfig,
    ItemKNNRecommender,
    PopularityRecommender,
    RandomConfig,
    RandomRecommender,
    build_eval_data,
    evaluate_rankings,
    rank_users,
    select_lambda,
)
from evaluation.baselines import ease_weights, item_knn_weights
from features import SplitConfig, fit_feature_store, split_interactions


@pytest.fixture(scope="module")
def data(small_synthetic):
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    return build_eval_data(small_synthetic, split, fit_feature_store(small_synthetic, split.train))


def _all_models():
    return [RandomRecommender(), PopularityRecommender(), EASERecommender(EASEConfig(tune=False)),
            ItemKNNRecommender(ItemKNNConfig(neighbors=20, tune=False)),
            EASERecencyRecommender(EASERecencyConfig(decay=0.8, tune=False)), BiasRecommender()]


def test_random_recommender_is_reproducible_and_independent_of_batching(data):
    a, b = RandomRecommender(RandomConfig(seed=7)), RandomRecommender(RandomConfig(seed=7))
    a.fit(data)
    b.fit(data)
    users = data.test_users
    whole = a.recommend(users, 10)
    np.testing.assert_array_equal(whole, rank_users(b, users, 10, batch_size=7))
    other = RandomRecommender(RandomConfig(seed=8))
    other.fit(data)
    assert not np.array_equal(whole, other.recommend(users, 10))


def test_popularity_ranks_by_train_counts_with_ties_by_column(data):
    model = PopularityRecommender()
    model.fit(data)
    counts = data.features.popularity(data.item_ids)
    train = data.train.toarray() != 0
    got = model.recommend(data.test_users, 15)
    for r, u in enumerate(data.test_users):
        cand = [c for c in range(data.num_items) if not train[u, c]]
        cand.sort(key=lambda c: (-counts[c], c))
        np.testing.assert_array_equal(got[r], cand[:15])


@pytest.mark.parametrize("model", _all_models(), ids=lambda m: m.name)
def test_baselines_never_recommend_train_items(data, model):
    model.fit(data)
    ranked = model.recommend(data.test_users, 30)
    train = data.train[data.test_users].toarray() != 0
    rows, pos = np.nonzero(ranked >= 0)
    assert not train[rows, ranked[rows, pos]].any()
    assert (ranked >= 0).all()  # 100 items, few train items per user: always 30 candidates


@pytest.mark.parametrize("model", [m for m in _all_models() if m.name not in ("random", "bias")],
                         ids=lambda m: m.name)
def test_baselines_beat_random_on_planted_structure(data, model):
    rand = RandomRecommender()
    rand.fit(data)
    model.fit(data)
    base = evaluate_rankings(rank_users(rand, data.test_users, 10), data, ks=(10,))["ndcg@10"]
    got = evaluate_rankings(rank_users(model, data.test_users, 10), data, ks=(10,))["ndcg@10"]
    assert got > 1.5 * base


def test_ease_weights_solve_the_constrained_ridge_regression():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float64))
    lam = 3.0
    b = ease_weights(x, lam)
    np.testing.assert_allclose(np.diag(b), 0.0)
    # Steck (2019): B minimises ||X - XB||² + λ||B||² s.t. diag(B) = 0. Stationarity: for
    # each column j, (XᵀX + λI) B_j - XᵀX_j is zero except at row j (the multiplier).
    g = (x.T @ x).toarray()
    resid = (g + lam * np.eye(12)) @ b - g
    np.testing.assert_allclose(resid - np.diag(np.diag(resid)), 0.0, atol=1e-9)
    with pytest.raises(ValueError, match="lambda"):
        ease_weights(x, 0.0)


def test_item_knn_weights_are_shrunk_cosine_pruned_to_neighbours():
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((30, 10)) < 0.4).astype(np.float64))
    dense = x.toarray()
    shrink, k = 2.0, 3
    w = item_knn_weights(x, neighbors=k, shrink=shrink).toarray()
    full = np.zeros((10, 10))
    for i in range(10):
        for j in range(10):
            if i != j:
                full[i, j] = dense[:, i] @ dense[:, j] / (
                    np.linalg.norm(dense[:, i]) * np.linalg.norm(dense[:, j]) + shrink)
    for j in range(10):
        kept = np.flatnonzero(w[:, j])
        assert len(kept) <= k
        np.testing.assert_allclose(w[kept, j], full[kept, j], rtol=1e-9)
        # the kept neighbours are the k most similar items
        assert full[kept, j].min() >= np.sort(full[:, j])[-k] - 1e-12


def test_select_lambda_picks_the_best_validation_score_and_logs_it(data, caplog):
    with caplog.at_level(logging.INFO, logger="evaluation.baselines"):
        best, scores = select_lambda(data, grid=(1.0, 50.0, 5000.0))
    assert {1.0, 50.0, 5000.0} <= set(scores)
    assert scores[best] == max(scores.values())
    assert "ease: selected l2=" in caplog.text
    model = EASERecommender(EASEConfig(lambda_grid=(1.0, 50.0, 5000.0)))
    model.fit(data)
    assert model.l2 == best and model.tuning == scores
    assert model.selection.chosen == {"l2": best} and model.selection.metric == "ndcg@10"


def test_select_lambda_needs_a_validation_carve(small_synthetic):
    split = split_interactions(small_synthetic.interactions, SplitConfig(val_fraction=0.0))
    data = build_eval_data(small_synthetic, split, fit_feature_store(small_synthetic, split.train))
    with pytest.raises(ValueError, match="--val-fraction"):
        select_lambda(data)


def test_recommend_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before fit"):
        PopularityRecommender().recommend(np.array([0]), 5)
