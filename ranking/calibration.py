"""Platt calibration of the engagement head, fit on held-out candidates (Platt 1999).

p = σ(a · z + b) with z the served engagement logit (the ranker's logit plus the retrieval
fusion β·(s − 1), ranking.model) and a > 0, so the map is strictly increasing: the ranking
of any user's candidates is unchanged, only the values become probabilities. (a, b) are
the maximum-likelihood fit on the validation carve's served candidates (each validation
user's retrieved top N, label = the item is among that user's validation engagements);
the exported model applies them in its graph, so serving, Beam and evaluation all read the
calibrated value through the one `Ranker.score`.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PlattCalibration:
    """σ(a · z + b); the identity map on the head's own sigmoid is a = 1, b = 0."""

    a: float = 1.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.a) and np.isfinite(self.b)) or self.a <= 0:
            raise ValueError(f"Platt calibration needs finite a > 0 and finite b, got a={self.a}, b={self.b}")

    def apply(self, z: np.ndarray) -> np.ndarray:
        """[n] logits → [n] calibrated probabilities (float64)."""
        return sigmoid(self.a * np.asarray(z, dtype=np.float64) + self.b)

    def to_dict(self) -> dict:
        return {"method": "platt", "a": float(self.a), "b": float(self.b)}


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def newton_logistic(feats: np.ndarray, y: np.ndarray, theta: np.ndarray, l2: float, prior: np.ndarray | None = None,
                    iterations: int = 100, tol: float = 1e-12) -> np.ndarray:
    """θ maximising Σ [y·s − log(1 + eˢ)] − l2/2 · ‖θ − prior‖², s = feats · θ (penalised logistic
    regression; the intercept, if any, is a column of ones in `feats`).

    Newton's method from `theta` with step halving, so the penalised log-likelihood never
    decreases; stops after `iterations` steps, when a step moves no coordinate by `tol`, or when
    no halving improves. Shared by Platt calibration and the stacked engagement model.
    """
    prior = np.zeros_like(theta) if prior is None else prior

    def nll(t: np.ndarray) -> float:
        s = feats @ t
        return float(np.sum(np.logaddexp(0.0, s) - y * s) + 0.5 * l2 * np.sum((t - prior) ** 2))

    current = nll(theta)
    for _ in range(iterations):
        p = sigmoid(feats @ theta)
        grad = feats.T @ (p - y) + l2 * (theta - prior)
        hess = (feats * np.maximum(p * (1 - p), 1e-12)[:, None]).T @ feats + l2 * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            cand = theta - scale * step
            value = nll(cand)
            if value <= current:
                break
            scale /= 2
        else:
            break
        theta, current = cand, value
        if np.abs(scale * step).max() < tol:
            break
    return theta


def fit_platt(z: np.ndarray, y: np.ndarray, iterations: int = 100, l2: float = 1e-6) -> PlattCalibration:
    """Maximum-likelihood (a, b) of P(y = 1) = σ(a · z + b).

    Newton's method on the standardised logit (well conditioned whatever the logit's
    scale), started at the base rate, with step halving so the log-likelihood never
    decreases, and a tiny ridge towards the identity for numerical safety; a is kept > 0 (a ≤ 0 would reverse or
    flatten the order).

    Args:
      z: [n] logits; y: [n] labels in {0, 1}, both present.
    """
    x = np.asarray(z, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_platt needs equal, non-empty logits and labels; got {len(x)} and {len(y)}")
    if not np.isfinite(x).all():
        raise ValueError("fit_platt: logits must be finite")
    if y.min() == y.max():
        raise ValueError("fit_platt needs both labels (engaged and not) among the held-out candidates")
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    feats = np.stack([(x - mu) / sd, np.ones_like(x)], axis=1)
    prior = np.array([sd, mu])  # (a, b) = (1, 0) in standardised coordinates

    # Start from the base rate (a = 0): well conditioned even when the identity map puts every
    # probability near 0 (the fused logits of a retrieval-weighted head are far below 0).
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta = newton_logistic(feats, y, np.array([0.0, np.log(rate) - np.log1p(-rate)]), l2, prior, iterations, 1e-12)
    a, b = theta[0] / sd, theta[1] - theta[0] * mu / sd
    return PlattCalibration(float(max(a, 1e-6)), float(b))


__all__ = ["PlattCalibration", "fit_platt", "newton_logistic", "sigmoid"]
