"""Calibrating the engagement head: Platt scaling fit on held-out candidates, applied by the exported Ranker.

p_cal = σ(a · (logit(p) + γ · gap) + b), a > 0: strictly increasing in p (for a fixed gap)
and in (0, 1). `gap` is the candidate's retrieval_gap context feature (its retriever score
minus the best in the user's list, ≤ 0); γ ≥ 0 is the retrieval fusion weight chosen per
training run on held-out validation users (0 = none; ranking.selection.select_fusion).
(a, b) are fit by maximum likelihood (Newton's method) on the same held-out candidates,
the distribution the server scores (Platt 1999).
"""
from __future__ import annotations

import dataclasses

import numpy as np

_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclasses.dataclass(frozen=True)
class PlattCalibration:
    """σ(a · (logit(p) + gap_weight · gap) + b); the identity is a = 1, b = 0, gap_weight = 0."""

    a: float = 1.0
    b: float = 0.0
    gap_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.a) and np.isfinite(self.b)) or self.a <= 0:
            raise ValueError(f"Platt calibration needs finite a > 0 and finite b, got a={self.a}, b={self.b}")
        if not np.isfinite(self.gap_weight) or self.gap_weight < 0:
            raise ValueError(f"the retrieval fusion weight must be finite and >= 0, got {self.gap_weight}")

    def apply(self, p: np.ndarray, gap: np.ndarray | None = None) -> np.ndarray:
        """[n] probabilities (and [n] retrieval gaps) → [n] calibrated probabilities (float32, in [0, 1])."""
        z = fuse(p, gap, self.gap_weight)
        z = self.a * z + self.b
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # σ(z) without overflow

    def to_dict(self) -> dict:
        return {"method": "platt", "a": float(self.a), "b": float(self.b), "gap_weight": float(self.gap_weight)}

    @classmethod
    def from_dict(cls, d: dict | None) -> PlattCalibration:
        if not d:
            return cls()
        if d.get("method") != "platt":
            raise ValueError(f"unknown calibration method {d.get('method')!r}; expected 'platt'")
        return cls(float(d["a"]), float(d["b"]), float(d.get("gap_weight", 0.0)))


def fuse(p: np.ndarray, gap: np.ndarray | None, weight: float) -> np.ndarray:
    """logit(p) + weight · gap (gap None or weight 0: logit(p))."""
    z = _logit(p)
    if gap is not None and weight:
        z = z + weight * np.asarray(gap, dtype=np.float64)
    return z


def fit_platt(p: np.ndarray, y: np.ndarray, iterations: int = 50, l2: float = 1e-6, gap: np.ndarray | None = None,
              gap_weight: float = 0.0) -> PlattCalibration:
    """Maximum-likelihood (a, b) of σ(a · (logit(p) + gap_weight · gap) + b) for labels `y` in {0, 1}.

    Args:
      p: [n] uncalibrated probabilities.
      gap, gap_weight: the retrieval fusion (see the module docstring); None / 0 = none.
      y: [n] 0/1 labels; both classes must be present.
      iterations: Newton steps (converges in a handful).
      l2: ridge on (a - 1, b) for numerical safety.
    """
    x = fuse(p, gap, gap_weight)
    y = np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_platt needs equal, non-empty p and y; got {len(x)} and {len(y)}")
    if y.min() == y.max():
        raise ValueError("fit_platt needs both labels (engaged and not) among the held-out candidates")
    # Newton's method on the standardised logit (well conditioned whatever γ·gap adds), with
    # step halving so the log-likelihood never decreases; mapped back to (a, b) at the end.
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    feats = np.stack([(x - mu) / sd, np.ones_like(x)], axis=1)
    prior = np.array([sd, mu])  # (a, b) = (1, 0) in standardised coordinates: the l2 anchor

    def nll(t: np.ndarray) -> float:
        z = feats @ t
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * np.sum((t - prior) ** 2))

    theta = prior.copy()
    current = nll(theta)
    for _ in range(iterations):
        z = feats @ theta
        q = 0.5 * (1.0 + np.tanh(0.5 * z))
        grad = feats.T @ (q - y) + l2 * (theta - prior)
        w = np.maximum(q * (1 - q), 1e-12)
        hess = (feats * w[:, None]).T @ feats + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            cand = theta - scale * step
            value = nll(cand)
            if value <= current:
                break
            scale /= 2
        else:
            break
        theta, current = cand, value
        if np.abs(scale * step).max() < 1e-10:
            break
    theta = np.array([theta[0] / sd, theta[1] - theta[0] * mu / sd])  # back to a·x + b
    a = float(max(theta[0], 1e-3))  # a <= 0 would reverse or flatten the order: keep it increasing
    return PlattCalibration(a, float(theta[1]), float(gap_weight) if gap is not None else 0.0)


__all__ = ["PlattCalibration", "fit_platt", "fuse"]
