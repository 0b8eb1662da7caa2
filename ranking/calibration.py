"""Calibrating the engagement head: Platt scaling fit on held-out candidates, applied by the exported Ranker.

p_cal = σ(a · logit(p) + b), a > 0: strictly increasing (it never changes the order of
candidates) and maps into (0, 1). Fit by maximum likelihood (Newton's method) on a held-out
part of the validation carve, the distribution of candidates the server scores (Platt 1999).
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
    """σ(a · logit(p) + b); the identity is a = 1, b = 0."""

    a: float = 1.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.a) and np.isfinite(self.b)) or self.a <= 0:
            raise ValueError(f"Platt calibration needs finite a > 0 and finite b, got a={self.a}, b={self.b}")

    def apply(self, p: np.ndarray) -> np.ndarray:
        """[n] probabilities → [n] calibrated probabilities (float32, in [0, 1], same order)."""
        z = self.a * _logit(p) + self.b
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # σ(z) without overflow

    def to_dict(self) -> dict:
        return {"method": "platt", "a": float(self.a), "b": float(self.b)}

    @classmethod
    def from_dict(cls, d: dict | None) -> PlattCalibration:
        if not d:
            return cls()
        if d.get("method") != "platt":
            raise ValueError(f"unknown calibration method {d.get('method')!r}; expected 'platt'")
        return cls(float(d["a"]), float(d["b"]))


def fit_platt(p: np.ndarray, y: np.ndarray, iterations: int = 50, l2: float = 1e-6) -> PlattCalibration:
    """Maximum-likelihood (a, b) of σ(a · logit(p) + b) for labels `y` in {0, 1}.

    Args:
      p: [n] uncalibrated probabilities.
      y: [n] 0/1 labels; both classes must be present.
      iterations: Newton steps (converges in a handful).
      l2: ridge on (a - 1, b) for numerical safety.
    """
    x = _logit(p)
    y = np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_platt needs equal, non-empty p and y; got {len(x)} and {len(y)}")
    if y.min() == y.max():
        raise ValueError("fit_platt needs both labels (engaged and not) among the held-out candidates")
    theta = np.array([1.0, 0.0])
    feats = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iterations):
        z = feats @ theta
        q = 0.5 * (1.0 + np.tanh(0.5 * z))
        grad = feats.T @ (q - y) + l2 * (theta - np.array([1.0, 0.0]))
        w = np.maximum(q * (1 - q), 1e-12)
        hess = (feats * w[:, None]).T @ feats + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-10:
            break
    a = float(max(theta[0], 1e-3))  # a <= 0 would reverse or flatten the order: keep it increasing
    return PlattCalibration(a, float(theta[1]))


__all__ = ["PlattCalibration", "fit_platt"]
