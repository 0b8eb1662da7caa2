"""Checks every RPC's input before any work is done; a bad field is INVALID_ARGUMENT, never INTERNAL.

Each check raises `InvalidRequestError` naming the field, what was seen and what is allowed;
the servicer translates it into the status code.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from core.errors import InvalidRequestError
from ranking.blender import BlendWeights

# The blend weights a request may send (recsys.v1.BlendWeights): each 0 or in [WEIGHT_MIN, WEIGHT_MAX].
# Only the ratio w_e : w_q changes the order in either mode, so the bounds cost no ordering
# beyond ratios of 1:30 .. 30:1; they keep the float32 `score` on the wire from flattening.
# Measured on the tiny test version (retrieval-fused engagement down to ~1e-12 in a top 20):
# exponents of 4 underflow the multiplicative score of a quarter of the users' top items to
# (sub)normal float32 zeros, 5 and 10 flatten nearly every user's; exponents of 0.01 round the
# quality-only score e.g. q^0.01 ≈ 0.9929 of 41 of 296 users' top 20 into ties, 0.1 of 1.
# With exponents <= 3 the product of heads >= 1e-12 and >= 0.3 stays a normal float32.
WEIGHT_MIN = 0.1
WEIGHT_MAX = 3.0
_MODES = {1: "additive", 2: "multiplicative"}  # recsys.v1.BlendMode; 0 = the version's default
_TRANSFORMS = {1: "identity", 2: "log", 3: "logit"}  # recsys.v1.BlendTransform; 0 = the default


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Bounds on request fields, so one request cannot make the server do unbounded work."""

    max_num_results: int = 100     # num_results must be in [1, max_num_results]
    max_id_length: int = 256       # user and item ids: 1..this many UTF-8 bytes
    max_exclude_ids: int = 1000    # exclude_item_ids entries per request
    max_context_entries: int = 64  # context map entries per request

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"RequestLimits.{f.name} must be >= 1, got {getattr(self, f.name)}")


@dataclasses.dataclass(frozen=True)
class BlendRequest:
    """A request's validated blend: weights in range, mode and transform None = the version's default."""

    engagement: float
    quality: float
    mode: str | None = None
    transform: str | None = None

    def resolve(self, defaults: BlendWeights) -> BlendWeights:
        """The blend to serve: these weights over the version's `defaults` (see BlendWeights.with_blend).

        Raises:
          InvalidRequestError naming weights.transform when the transform does not fit the mode
          (LOG or LOGIT with a multiplicative blend, chosen or the version's default).
        """
        try:
            return defaults.with_blend(self.engagement, self.quality, self.mode, self.transform)
        except InvalidRequestError as e:
            mode = self.mode or f"{defaults.mode} (the version's default)"
            raise InvalidRequestError(f"weights.transform {self.transform!r} does not apply to the {mode} mode: "
                                      f"{e}") from e


class RecommendQuery(NamedTuple):
    """A validated Recommend request (a named tuple: built on every cache hit, where a frozen
    dataclass's __init__ costs more than the rest of the validation).

    Attributes:
      user_id: the user, as sent.
      num_results: k, in [1, limits.max_num_results].
      weights: the requested blend (weights each 0 or in [WEIGHT_MIN, WEIGHT_MAX], not both 0;
        mode, transform); None = the server's defaults.
      exclude: item ids that must not be returned.
      explain: fill per-item explanations.
    """

    user_id: str
    num_results: int
    weights: BlendRequest | None
    exclude: frozenset[str]
    explain: bool


def check_id(value: str, field: str, limits: RequestLimits) -> str:
    """Non-empty, at most limits.max_id_length UTF-8 bytes, no control characters."""
    if not value:
        raise InvalidRequestError(f"{field} is empty")
    # A UTF-8 character is at most 4 bytes, so short ids need no encoding to be checked.
    if 4 * len(value) > limits.max_id_length and len(value.encode("utf-8")) > limits.max_id_length:
        raise InvalidRequestError(f"{field} is {len(value.encode('utf-8'))} bytes long; the maximum is "
                                  f"{limits.max_id_length}")
    if not value.isprintable():
        raise InvalidRequestError(f"{field} {value[:40]!r} contains control characters")
    return value


def check_num_results(value: int, limits: RequestLimits, field: str = "num_results") -> int:
    if value <= 0 or value > limits.max_num_results:
        raise InvalidRequestError(f"{field} must be in [1, {limits.max_num_results}], got {value}")
    return value


def check_weights(engagement: float, quality: float, field: str = "weights") -> tuple[float, float]:
    """Each finite and 0 or in [WEIGHT_MIN, WEIGHT_MAX]; not both zero (a zero score for every item ranks nothing)."""
    for name, w in (("engagement", engagement), ("quality", quality)):
        if not math.isfinite(w):
            raise InvalidRequestError(f"{field}.{name} must be finite, got {w}")
        if w != 0 and not WEIGHT_MIN <= w <= WEIGHT_MAX:
            raise InvalidRequestError(f"{field}.{name} must be 0 or in [{WEIGHT_MIN:g}, {WEIGHT_MAX:g}], got {w}")
    if engagement == 0 and quality == 0:
        raise InvalidRequestError(f"{field}: engagement and quality are both 0; set at least one > 0 "
                                  "or omit weights for the server defaults")
    return float(engagement), float(quality)


def check_blend(weights, field: str = "weights") -> BlendRequest:
    """A recsys.v1.BlendWeights: the weights (check_weights), a known mode and a transform that fits it."""
    engagement, quality = check_weights(weights.engagement, weights.quality, field)
    if weights.mode and weights.mode not in _MODES:
        raise InvalidRequestError(f"{field}.mode {weights.mode} is not a BlendMode: use ADDITIVE ({1}), "
                                  f"MULTIPLICATIVE ({2}) or leave it unset for the version's default")
    if weights.transform and weights.transform not in _TRANSFORMS:
        raise InvalidRequestError(f"{field}.transform {weights.transform} is not a BlendTransform: use IDENTITY (1), "
                                  "LOG (2), LOGIT (3) or leave it unset for the version's default")
    mode, transform = _MODES.get(weights.mode), _TRANSFORMS.get(weights.transform)
    if mode == "multiplicative" and transform not in (None, "identity"):
        raise InvalidRequestError(f"{field}.transform {transform.upper()} applies to the ADDITIVE mode only; the "
                                  "MULTIPLICATIVE mode takes the raw heads (leave transform unset or IDENTITY)")
    return BlendRequest(engagement, quality, mode, transform)


_NO_EXCLUDES: frozenset[str] = frozenset()


def validate_recommend(request, limits: RequestLimits) -> RecommendQuery:
    """Validates a recsys.v1.RecommendRequest."""
    user_id = check_id(request.user_id, "user_id", limits)
    k = check_num_results(request.num_results, limits)
    weights = check_blend(request.weights) if request.HasField("weights") else None
    excludes = request.exclude_item_ids
    exclude = _NO_EXCLUDES
    if excludes:  # most requests have none: skip the per-item work (this runs on every cache hit)
        if len(excludes) > limits.max_exclude_ids:
            raise InvalidRequestError(f"exclude_item_ids has {len(excludes)} entries; "
                                      f"the maximum is {limits.max_exclude_ids}")
        for i, item in enumerate(excludes):
            check_id(item, f"exclude_item_ids[{i}]", limits)
        exclude = frozenset(excludes)
    if len(request.context) > limits.max_context_entries:
        raise InvalidRequestError(f"context has {len(request.context)} entries; the maximum is "
                                  f"{limits.max_context_entries}")
    return RecommendQuery(user_id, k, weights, exclude, request.explain)


def validate_similar(request, limits: RequestLimits) -> tuple[str, int]:
    """Validates a recsys.v1.SimilarItemsRequest; returns (item_id, num_results)."""
    return check_id(request.item_id, "item_id", limits), check_num_results(request.num_results, limits)
