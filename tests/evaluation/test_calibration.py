"""Expected calibration error and the reliability diagram against hand-computed values."""
import numpy as np
import pytest

from evaluation.calibration import expected_calibration_error, plot_reliability, reliability_bins


def test_reliability_bins_are_equal_mass_over_sorted_predictions():
    p = np.array([0.9, 0.1, 0.4, 0.2, 0.8, 0.3])
    y = np.array([1, 0, 1, 0, 0, 0])
    bins = reliability_bins(p, y, bins=3)
    # sorted: 0.1(0) 0.2(0) | 0.3(0) 0.4(1) | 0.8(0) 0.9(1)
    assert [b["count"] for b in bins] == [2, 2, 2]
    np.testing.assert_allclose([b["confidence"] for b in bins], [0.15, 0.35, 0.85])
    np.testing.assert_allclose([b["accuracy"] for b in bins], [0.0, 0.5, 0.5])
    assert (bins[0]["lo"], bins[0]["hi"]) == (0.1, 0.2)
    # ECE = (2/6)(0.15) + (2/6)(0.15) + (2/6)(0.35) = 0.65 / 3
    assert expected_calibration_error(p, y, bins=3) == pytest.approx(0.65 / 3)


def test_reliability_bins_split_uneven_counts_by_floor_edges():
    p = np.linspace(0.05, 0.95, 7)
    y = np.array([0, 0, 1, 0, 1, 1, 1])
    bins = reliability_bins(p, y, bins=3)  # edges ⌊b·7/3⌋ = 0, 2, 4, 7
    assert [b["count"] for b in bins] == [2, 2, 3]
    want = (2 * abs(0 - p[:2].mean()) + 2 * abs(0.5 - p[2:4].mean()) + 3 * abs(1 - p[4:].mean())) / 7
    assert expected_calibration_error(p, y, bins=3) == pytest.approx(want)


def test_ece_edge_cases():
    assert expected_calibration_error(np.array([1.0, 1.0, 0.0]), np.array([1, 1, 0])) == 0.0  # perfect
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([1, 0]), bins=1) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([1, 0]), bins=2) == pytest.approx(1.0)
    assert np.isnan(expected_calibration_error(np.zeros(0), np.zeros(0)))
    assert len(reliability_bins(np.array([0.3, 0.6]), np.array([0, 1]), bins=15)) == 2  # empty bins are dropped
    with pytest.raises(ValueError, match="probabilities"):
        reliability_bins(np.array([1.5]), np.array([1]))
    with pytest.raises(ValueError, match="length"):
        reliability_bins(np.array([0.5]), np.array([1, 0]))


def test_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 200_000)
    y = rng.uniform(0, 1, len(p)) < p
    assert expected_calibration_error(p, y) < 0.003
    assert expected_calibration_error(np.clip(3 * p, 0, 1), y) > 0.1


def test_plot_reliability_writes_a_png(tmp_path):
    bins = reliability_bins(np.array([0.1, 0.2, 0.7, 0.9]), np.array([0, 0, 1, 1]), bins=2)
    path = plot_reliability(bins, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
