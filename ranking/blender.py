"""The blender: one score per candidate from the two ranker heads, late, with no model call.

"Approach 2" of decoupled objectives (DESIGN.md §4): the ranker predicts engagement and
quality separately; this pure function combines them with weights taken from config or
from each request, so re-weighting never retrains and never re-runs the ranker.

  additive:        score = w_e · f(engagement) + w_q · f(quality)
  multiplicative:  score = engagement^w_e · quality^w_q      (0^0 = 1: a zero exponent ignores its head)

where f is `transform`: identity, log (log-probability) or logit, both heads clipped to
[TINY, 1 - EPS] first for log/logit so scores stay finite. The lower bound is the smallest
positive float64, not EPS: the retrieval-fused engagement head (ranking.model) puts most
candidates far below 1e-6, and clipping there would tie them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from core.errors import InvalidRequestError

EPS = 1e-6
TINY = float(np.finfo(np.float64).tiny)  # ~2.2e-308: log(TINY) ≈ -708, finite
BlendMode = Literal["additive", "multiplicative"]
Transform = Literal["identity", "log", "logit"]
_MODES = ("additive", "multiplicative")
_TRANSFORMS = ("identity", "log", "logit")


@dataclasses.dataclass(frozen=True)
class BlendWeights:
    """How to combine the heads; validated on construction (InvalidRequestError).

    Attributes:
      engagement: w_e (additive) or the exponent a (multiplicative); finite, >= 0.
      quality: w_q (additive) or the exponent b (multiplicative); finite, >= 0.
        Not both 0: a blend that ignores both heads ranks nothing.
      mode: "additive" or "multiplicative".
      transform: f applied to each head in the additive form; the multiplicative form
        takes the raw heads and requires "identity".
    """

    engagement: float = 1.0
    quality: float = 1.0
    mode: BlendMode = "additive"
    transform: Transform = "identity"

    def __post_init__(self) -> None:
        for name in ("engagement", "quality"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise InvalidRequestError(f"blend weight '{name}' must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise InvalidRequestError(f"blend weight '{name}' must be finite and >= 0, got {value}")
            object.__setattr__(self, name, float(value))
        if self.engagement == 0 and self.quality == 0:
            raise InvalidRequestError("blend weights 'engagement' and 'quality' are both 0; at least one must be > 0")
        if self.mode not in _MODES:
            raise InvalidRequestError(f"blend mode must be one of {', '.join(_MODES)}; got {self.mode!r}")
        if self.transform not in _TRANSFORMS:
            raise InvalidRequestError(f"blend transform must be one of {', '.join(_TRANSFORMS)}; got {self.transform!r}")
        if self.mode == "multiplicative" and self.transform != "identity":
            raise InvalidRequestError(
                f"blend transform {self.transform!r} applies to the additive mode only; the multiplicative mode "
                "uses engagement^a · quality^b on the raw heads (use transform 'identity')")

    def with_weights(self, engagement: float, quality: float) -> BlendWeights:
        """The same mode and transform with new (validated) weights, e.g. from a request."""
        return dataclasses.replace(self, engagement=engagement, quality=quality)

    def with_blend(self, engagement: float, quality: float, mode: BlendMode | None = None,
                   transform: Transform | None = None) -> BlendWeights:
        """New weights and, optionally, another mode and transform (a request's choice over these defaults).

        `mode` None keeps this mode. `transform` None means this transform when the result is
        additive (a multiplicative default's is "identity") and "identity" when it is
        multiplicative, the only transform that form takes.
        """
        mode = self.mode if mode is None else mode
        if transform is None:
            transform = self.transform if mode == "additive" else "identity"
        return BlendWeights(engagement, quality, mode, transform)


def _transform(x: np.ndarray, transform: Transform) -> np.ndarray:
    if transform == "identity":
        return x
    x = np.clip(x, TINY, 1.0 - EPS)
    if transform == "log":
        return np.log(x)
    return np.log(x) - np.log1p(-x)


def _check_head(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} scores must be 1-D [num_candidates], got shape {x.shape}")
    # min/max propagate NaN and see ±inf, so this one comparison checks finite and in [0, 1].
    if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):
        bad = x[~(np.isfinite(x) & (x >= 0.0) & (x <= 1.0))][0]
        raise ValueError(f"{name} scores must be finite and in [0, 1], got {bad}")
    return x


def _power(x: np.ndarray, exponent: float) -> np.ndarray:
    """x ** exponent; exponents 1 and 0 skip the pow call (IEEE pow(x, 1) = x, pow(x, 0) = 1 even at 0)."""
    if exponent == 1.0:
        return x
    if exponent == 0.0:
        return np.ones_like(x)
    return np.power(x, exponent)


def blend_scores(engagement: np.ndarray, quality: np.ndarray, w: BlendWeights) -> np.ndarray:
    """Combines the two ranker heads into one score per candidate.

    Args:
      engagement: [num_candidates] probabilities in [0, 1].
      quality: [num_candidates] predicted quality in [0, 1] (normalised rating).
      w: validated weights; see BlendWeights and the module docstring for the formulas.

    Returns:
      [num_candidates] float64 scores; higher ranks first. With w_e > 0 (and, for the
      multiplicative form, quality > 0) the score strictly increases with engagement,
      and symmetrically for quality.
    """
    if not isinstance(w, BlendWeights):
        raise TypeError(f"w must be a BlendWeights, got {type(w).__name__}")
    e = _check_head("engagement", engagement)
    q = _check_head("quality", quality)
    if e.shape != q.shape:
        raise ValueError(f"engagement has {e.shape[0]} scores and quality {q.shape[0]}; they must match")
    if w.mode == "additive":
        return w.engagement * _transform(e, w.transform) + w.quality * _transform(q, w.transform)
    # 0^0 = 1, so a zero exponent ignores its head even where the head is 0.
    return _power(e, w.engagement) * _power(q, w.quality)


def rank_by_blend(engagement: np.ndarray, quality: np.ndarray, w: BlendWeights) -> tuple[np.ndarray, np.ndarray]:
    """Candidate positions ordered by blended score, best first, ties by position.

    Returns:
      (order [n] int64 positions into the inputs, scores [n] float64 blended scores of
      every candidate in input order).
    """
    scores = blend_scores(engagement, quality, w)
    return np.argsort(-scores, kind="stable"), scores
