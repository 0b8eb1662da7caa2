"""The experiment report's statistics: delta-method intervals against a brute-force bootstrap, the A/A false-positive
rate over 200 seeds of the offline simulator, power on a known effect, the sample-ratio check, attribution."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.experiments import analyze, compare, ratio_estimate, srm_check
from evaluation.simulator import UserModel, aa_experiment, simulate_events
from features.synthetic import SyntheticConfig, generate_synthetic, synthetic_truth

CFG = SyntheticConfig(num_users=600, num_items=120, num_interactions=5000, seed=4)


@pytest.fixture(scope="module")
def truth():
    return synthetic_truth(CFG)


def test_truth_is_what_the_generator_drew(truth):
    items = generate_synthetic(CFG).items
    np.testing.assert_allclose(items["true_quality"].to_numpy(), truth.true_quality)


def test_ratio_interval_matches_a_bootstrap_over_users():
    rng = np.random.default_rng(0)
    n = 400
    x = rng.integers(1, 30, n).astype(float)
    y = rng.binomial(x.astype(int), rng.beta(2, 8, n)).astype(float)
    est = ratio_estimate(y, x)
    assert est.value == pytest.approx(y.sum() / x.sum())
    boot = [(y[i].sum() / x[i].sum()) for i in (rng.integers(0, n, n) for _ in range(2000))]
    assert est.se == pytest.approx(np.std(boot), rel=0.1)


def test_compare_is_a_two_sided_z_test():
    a, b = ratio_estimate(np.array([1.0, 2, 3, 4]), np.ones(4)), ratio_estimate(np.array([2.0, 3, 4, 5]), np.ones(4))
    out = compare(a, b)
    z = 1.0 / np.sqrt(a.se ** 2 + b.se ** 2)
    from scipy import stats

    assert out["z"] == pytest.approx(z) and out["p_value"] == pytest.approx(2 * stats.norm.sf(z))
    assert compare(b, a)["diff"] == -out["diff"]


def test_aa_false_positive_rate_over_200_seeds_is_near_5_percent(truth):
    p_ctr, p_rating, srm = [], [], 0
    for seed in range(200):
        frame = simulate_events(truth, aa_experiment(f"aa-{seed}"), 400, k=5, seed=seed)
        result = analyze(frame, "A", {"A": 0.5, "B": 0.5}, k=5)
        p_ctr.append(result["tests"]["B"]["ctr_at_k"]["p_value"])
        p_rating.append(result["tests"]["B"]["mean_rating"]["p_value"])
        srm += result["srm"]["mismatch"]
    fpr = np.mean(np.array(p_ctr) < 0.05)
    assert 0.02 <= fpr <= 0.08, fpr  # 5% ± 3 binomial sd of 200 draws (bench/experiments.py: 1,000 seeds)
    assert 0.02 <= np.mean(np.array(p_rating) < 0.05) <= 0.08
    assert srm <= 2  # alpha 0.001


def test_a_real_effect_is_found_with_the_right_sign(truth):
    frame = simulate_events(truth, aa_experiment("power"), 3000, k=5, seed=1, boost={"B": 0.3})
    test = analyze(frame, "A", {"A": 0.5, "B": 0.5}, k=5)["tests"]["B"]["ctr_at_k"]
    assert test["diff"] > 0 and test["p_value"] < 0.05


def test_a_skewed_split_trips_the_sample_ratio_check(truth):
    frame = simulate_events(truth, aa_experiment("skew", (0.6, 0.4)), 3000, k=5, seed=2)
    srm = analyze(frame, "A", {"A": 0.5, "B": 0.5}, k=5)["srm"]
    assert srm["mismatch"] and srm["p_value"] < 0.001
    assert not srm_check({"A": 510, "B": 490}, {"A": 0.5, "B": 0.5})["mismatch"]
    assert srm_check({"A": 500, "B": 3}, {"A": 1.0, "B": 0.0})["mismatch"]


def test_engagements_follow_the_served_list_arm_over_their_own_stamp():
    frame = pd.DataFrame({
        "user_id": ["u", "u", "u", "v"], "item_id": ["a", "b", "a", "c"], "type": ["impression", "impression",
                                                                                     "engagement", "engagement"],
        "position": [1, 2, 1, 0], "request_id": ["r1", "r1", "r1", ""], "arm": ["B", "B", "A", "A"],
        "rating": [np.nan] * 4})
    result = analyze(frame, "A", k=10)
    assert result["arms"]["B"]["clicks_at_k"] == 1 and result["arms"]["B"]["ctr_at_k"] == pytest.approx(0.5)
    assert result["arms"]["A"]["engagements"] == 1  # v's loose engagement keeps its stamped arm
    assert result["srm"] is None


def test_user_model_rewards_quality(truth):
    from evaluation.simulator import SimulatedUsers

    best, worst = np.argsort(-truth.true_quality)[:10], np.argsort(truth.true_quality)[:10]
    users = np.repeat(np.arange(200)[:, None], 10, axis=1)
    sim = SimulatedUsers(truth, UserModel(quality_sensitivity=1.0), seed=0)
    good = sim.respond_many(users, np.tile(best, (200, 1)))[0].mean()
    bad = sim.respond_many(users, np.tile(worst, (200, 1)))[0].mean()
    assert good > bad
