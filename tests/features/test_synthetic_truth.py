"""SyntheticTruth's closed forms (the Bayes rating, the feed's impression probability) against the generator's own
draws, and bench/frontier_oracle.py's within-user AUC on hand values."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from features.synthetic import RATING_NOISE, SyntheticConfig, generate_synthetic, synthetic_truth

CFG = SyntheticConfig(num_users=3, num_items=25, num_interactions=150_000, seed=7)


@pytest.fixture(scope="module")
def drawn():
    return generate_synthetic(CFG), synthetic_truth(CFG)


def test_rating_moments_match_a_monte_carlo_of_the_rounding():
    truth = synthetic_truth(CFG)
    mean, var = truth.rating_moments()
    rng = np.random.default_rng(0)
    sim = np.clip(np.rint(truth.true_quality[None, :] + RATING_NOISE * rng.normal(size=(200_000, CFG.num_items))), 1, 5)
    np.testing.assert_allclose(mean, sim.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(var, sim.var(axis=0), atol=0.01)
    assert (var > 0).all() and (var <= RATING_NOISE ** 2 + 1 / 12 + 0.01).all()  # rounding adds ≤ 1/12


def test_rating_moments_are_the_generated_ratings_means(drawn):
    data, truth = drawn
    rated = data.interactions.dropna(subset=["rating"])
    got = rated.groupby(rated["item_id"].str[1:].astype(int))["rating"].agg(["mean", "count"])
    got = got[got["count"] >= 400]
    assert len(got) >= 10
    mean, var = truth.rating_moments()
    # each item's sample mean within 4 standard errors of the closed form
    assert (np.abs(got["mean"] - mean[got.index]) <= 4 * np.sqrt(var[got.index] / got["count"])).all()


def test_impression_probability_is_the_feeds_item_distribution(drawn):
    data, truth = drawn
    users = np.arange(CFG.num_users)
    prob = truth.impression_probability(users)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0)
    rows = data.interactions
    for u in users:
        shown = rows.loc[rows["user_id"] == f"u{u}", "item_id"].str[1:].astype(int).to_numpy()
        freq = np.bincount(shown, minlength=CFG.num_items) / len(shown)
        se = np.sqrt(prob[u] * (1 - prob[u]) / len(shown))
        assert len(shown) > 5_000 and (np.abs(freq - prob[u]) <= 5 * se + 1e-4).all(), u
    # the taste half matters: users differ, and an item's probability is not its popularity alone
    assert np.abs(prob[0] - prob[1]).max() > 0.01 and np.abs(prob[0] - truth.popularity).max() > 0.01


def test_within_user_auc_hand_values():
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "frontier_oracle.py"
    spec = importlib.util.spec_from_file_location("frontier_oracle", path)
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 9.0], [1.0, 1.0, 5.0, 0.0]])
    labels = np.array([[True, False, True, False], [True, False, False, False], [True, True, False, False]])
    valid = np.array([[True] * 4, [True] * 4, [True, True, True, False]])
    # user 0: positives (3, 1) vs negatives (2, 0) → 3 of 4 pairs in order = 0.75; user 1: 0 of 3 pairs;
    # user 2 (last candidate padded): positives (1, 1) vs negative 5 → 0 of 2
    assert oracle.within_user_auc(scores, labels, valid) == pytest.approx((0.75 + 0.0 + 0.0) / 3)
    # ties count half; a user with no negative among valid candidates is skipped
    assert oracle.within_user_auc(np.array([[1.0, 1.0, 0.0]]), np.array([[True, False, False]]),
                                  np.ones((1, 3), bool)) == pytest.approx(0.75)
    assert np.isnan(oracle.within_user_auc(np.array([[1.0, 2.0]]), np.array([[True, True]]), np.ones((1, 2), bool)))
