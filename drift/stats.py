"""Population stability index and the two-sample Kolmogorov–Smirnov statistic.

Both compare a reference distribution with a live one. Defined behaviour at the edges:
an empty sample (either side) gives NaN — "no data", which never crosses an alert
threshold; a one-value sample is an ordinary sample (its proportions are one 1 and zeros).
"""
from __future__ import annotations

import numpy as np

PSI_EPSILON = 1e-4  # proportions below this count as this in the log ratio (an empty bin would be ±inf)


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of `actual` against `expected` bin proportions.

    PSI = Σ_i (a_i − e_i) · ln(max(a_i, ε) / max(e_i, ε)), over the same bins, with a and e
    proportions (each summing to 1). Bins empty on both sides contribute 0. Conventional
    reading (Siddiqi, *Credit Risk Scorecards*, 2006): < 0.1 stable, 0.1–0.25 moderate
    shift, > 0.25 significant shift.

    Args:
      expected: [bins] reference proportions (or counts: normalised here).
      actual: [bins] live proportions or counts.
      epsilon: floor of a proportion inside the log.

    Returns:
      PSI >= 0, or NaN when either side has no mass (an empty window).
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"psi needs two 1-d arrays of the same length, got shapes {e.shape} and {a.shape}")
    if np.any(e < 0) or np.any(a < 0):
        raise ValueError("psi needs non-negative proportions or counts")
    se, sa = e.sum(), a.sum()
    if se <= 0 or sa <= 0:
        return float("nan")
    e, a = e / se, a / sa
    return float(np.sum((a - e) * np.log(np.maximum(a, epsilon) / np.maximum(e, epsilon))))


def ks_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic D = sup_t |F_x(t) − F_y(t)| of the empirical CDFs.

    The same statistic as scipy.stats.ks_2samp (two-sided); no p-value (with thousands of
    live values any visible shift is "significant" — the size of D is what matters).

    Returns:
      D in [0, 1], or NaN when either sample is empty. NaNs in the inputs are dropped first.
    """
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    y = np.sort(np.asarray(y, dtype=np.float64).ravel())
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    points = np.concatenate([x, y])
    fx = np.searchsorted(x, points, side="right") / len(x)
    fy = np.searchsorted(y, points, side="right") / len(y)
    return float(np.max(np.abs(fx - fy)))
