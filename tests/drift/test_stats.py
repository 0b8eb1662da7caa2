"""PSI and KS against hand-computed values and scipy.stats.ks_2samp, including empty and one-value windows."""
import math

import numpy as np
import pytest
from scipy import stats

from drift import Profile, QuantityProfile, compare_profiles, fit_profile, ks_statistic, psi


def test_psi_hand_computed():
    e, a = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(e, a) == pytest.approx(expected, abs=1e-12)
    assert psi(e, a) == pytest.approx(0.274653, abs=1e-6)


def test_psi_identical_is_zero_and_counts_are_normalised():
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert psi([2, 3, 5], [20, 30, 50]) == pytest.approx(0.0, abs=1e-15)


def test_psi_empty_bin_uses_epsilon_and_both_empty_contributes_nothing():
    # bin 2 empty in the live window: (0 - 0.5) * ln(1e-4 / 0.5)
    got = psi([0.5, 0.5, 0.0], [1.0, 0.0, 0.0])
    want = (1.0 - 0.5) * math.log(1.0 / 0.5) + (0.0 - 0.5) * math.log(1e-4 / 0.5)
    assert got == pytest.approx(want, abs=1e-12)


def test_psi_empty_window_is_nan():
    assert math.isnan(psi([0.5, 0.5], [0, 0]))
    assert math.isnan(psi([0, 0], [1, 1]))


def test_psi_rejects_mismatched_or_negative():
    with pytest.raises(ValueError, match="same length"):
        psi([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        psi([0.5, 0.5], [-1, 2])


@pytest.mark.parametrize("seed", range(5))
def test_ks_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rng.integers(1, 300))
    y = rng.normal(0.3, 1.2, size=rng.integers(1, 300))
    y[:5] = np.round(y[:5], 1)  # ties
    assert ks_statistic(x, y) == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-12)


def test_ks_with_ties_and_one_value_matches_scipy_and_hand():
    x = np.array([1.0, 2.0, 2.0, 3.0])
    assert ks_statistic(x, [2.0]) == pytest.approx(stats.ks_2samp(x, [2.0]).statistic)
    # F_x(2) = 0.75, F_y(2) = 1 → 0.25; F_x(1) = .25 vs 0 → .25; at 3: 1 vs 1 → D = 0.25
    assert ks_statistic(x, [2.0]) == pytest.approx(0.25)
    assert ks_statistic([5.0], [5.0]) == 0.0
    assert ks_statistic([1.0], [2.0]) == 1.0


def test_ks_empty_is_nan_and_nans_are_dropped():
    assert math.isnan(ks_statistic([], [1.0, 2.0]))
    assert math.isnan(ks_statistic([1.0], [np.nan]))
    assert ks_statistic([1.0, np.nan, 2.0], [1.0, 2.0]) == 0.0


def test_numeric_profile_bins_at_quantiles_and_compares():
    ref = np.arange(1000, dtype=float)
    q = QuantityProfile.fit(ref, "numeric")
    assert len(q.edges) == 9 and len(q.proportions) == 10
    assert np.allclose(q.proportions, 0.1)
    same = q.compare(ref)
    assert same["psi"] == pytest.approx(0.0, abs=1e-12) and same["ks"] == 0.0 and same["n"] == 1000
    shifted = q.compare(ref + 500)
    # half the mass lands in the top bin: hand-computed with the same bins
    counts = np.bincount(np.searchsorted(q.edges, ref + 500, side="left"), minlength=10)
    assert shifted["psi"] == pytest.approx(psi(np.full(10, 0.1), counts))
    assert shifted["ks"] == pytest.approx(stats.ks_2samp(np.asarray(q.sample), ref + 500).statistic)
    assert shifted["psi"] > 0.25


def test_profile_empty_and_one_value_windows():
    q = QuantityProfile.fit(np.arange(100, dtype=float), "numeric")
    empty = q.compare(np.array([]))
    assert math.isnan(empty["psi"]) and math.isnan(empty["ks"]) and empty["n"] == 0
    one = q.compare(np.array([5.0]))  # bin 0 (<= 9.9): proportions (1, 0, ..., 0)
    want = (1 - 0.1) * math.log(1 / 0.1) + 9 * (0 - 0.1) * math.log(1e-4 / 0.1)
    assert one["psi"] == pytest.approx(want) and one["n"] == 1
    assert one["ks"] == pytest.approx(stats.ks_2samp(np.asarray(q.sample), [5.0]).statistic)
    constant = QuantityProfile.fit(np.full(50, 3.0), "numeric")  # every quantile equal: two bins
    assert constant.edges == (3.0,) and constant.proportions == (1.0, 0.0)
    assert constant.compare([3.0, 3.0])["psi"] == 0.0


def test_categorical_profile_other_bin_and_unseen_values():
    values = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20, dtype=object)
    q = QuantityProfile.fit(values, "categorical", max_categories=2)
    assert q.categories == ("a", "b") and q.proportions == pytest.approx((0.5, 0.3, 0.2))
    assert list(q.bin_counts(["a", "zzz", "c", "b"])) == [1, 1, 2]
    r = q.compare(["a"] * 50 + ["b"] * 30 + ["new"] * 20)
    assert r["psi"] == pytest.approx(0.0, abs=1e-12) and math.isnan(r["ks"])


def test_profile_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(0)
    p = fit_profile({"input": {"x": (rng.normal(size=3000), "numeric"), "c": (np.array(["u", "v"] * 10), "categorical")}},
                    {"k": 10})
    loaded = Profile.load(p.save(tmp_path / "r.json"))
    assert loaded == p and len(loaded.groups["input"]["x"].sample) == 1000
    rows = compare_profiles(loaded, {"input": {"x": rng.normal(size=500)}})
    assert [(r["group"], r["quantity"]) for r in rows] == [("input", "x")] and rows[0]["psi"] < 0.1


def test_ks_of_a_large_live_window_is_thinned_within_its_bound():
    rng = np.random.default_rng(3)
    q = QuantityProfile.fit(rng.normal(size=5000), "numeric")
    live = rng.normal(0.2, 1.0, size=50_000)
    exact = stats.ks_2samp(np.asarray(q.sample), live).statistic
    assert abs(q.compare(live)["ks"] - exact) <= 1 / 1999 + 1 / 50_000  # thinned to 2000 order statistics
