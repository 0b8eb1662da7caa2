"""Calibration of the engagement head: expected calibration error and the reliability diagram.

Equal-mass bins (Nixon et al. 2019, "adaptive calibration error"; Guo et al. 2017 for ECE):
sort the n predictions ascending (ties by input order, a stable sort) and cut them into B
contiguous bins of ⌊n/B⌋ or ⌈n/B⌉ predictions (bin b holds sorted positions
[⌊b·n/B⌋, ⌊(b+1)·n/B⌋)). For each non-empty bin: conf_b = mean prediction, acc_b = mean label.
  ECE = Σ_b (n_b / n) · |acc_b − conf_b|      (B = 15 by default; undefined for n = 0 → NaN)
Empty bins (n < B) are dropped. Equal-mass rather than equal-width bins because served
engagement probabilities crowd near 0: equal-width bins would put nearly every candidate in
the first bin and say nothing about the rest.
"""
from __future__ import annotations

import pathlib

import numpy as np

DEFAULT_BINS = 15


def reliability_bins(p: np.ndarray, y: np.ndarray, bins: int = DEFAULT_BINS) -> list[dict[str, float]]:
    """The equal-mass bins of the module docstring: [{count, confidence, accuracy, lo, hi}] per non-empty bin.

    Args:
      p: [n] predicted probabilities in [0, 1].
      y: [n] labels in {0, 1}.
      bins: B >= 1.
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(p) != len(y):
        raise ValueError(f"predictions and labels differ in length: {len(p)} vs {len(y)}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if not np.all(np.isfinite(p)) or (len(p) and (p.min() < 0 or p.max() > 1)):
        raise ValueError("predictions must be finite probabilities in [0, 1]")
    n = len(p)
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    edges = (np.arange(bins + 1) * n) // bins
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        out.append({"count": int(hi - lo), "confidence": float(ps[lo:hi].mean()), "accuracy": float(ys[lo:hi].mean()),
                    "lo": float(ps[lo]), "hi": float(ps[hi - 1])})
    return out


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE over `bins` equal-mass bins (module docstring); NaN for no predictions. In [0, 1], 0 = calibrated."""
    table = reliability_bins(p, y, bins)
    n = sum(b["count"] for b in table)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in table))


def plot_reliability(table: list[dict[str, float]], path: str | pathlib.Path, title: str = "") -> pathlib.Path:
    """Reliability diagram (mean label against mean prediction per bin, with the diagonal) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    conf = [b["confidence"] for b in table]
    acc = [b["accuracy"] for b in table]
    n = sum(b["count"] for b in table) or 1
    ece = sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in table)
    top = max([*conf, *acc, 1e-3]) * 1.05
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect calibration")
    ax.plot(conf, acc, "o-", color="tab:blue", label=f"engagement head ({len(table)} equal-mass bins)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted engagement in bin")
    ax.set_ylabel("observed engagement rate in bin")
    ax.set_title(title or f"Reliability, ECE = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["DEFAULT_BINS", "expected_calibration_error", "plot_reliability", "reliability_bins"]
