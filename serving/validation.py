"""Checks every RPC's input before any work is done; a bad field is INVALID_ARGUMENT, never INTERNAL.

Each check raises `InvalidRequestError` naming the field, what was seen and what is allowed;
the servicer translates it into the status code.
"""
from __future__ import annotations

import dataclasses
import math

from core.errors import InvalidRequestError


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
class RecommendQuery:
    """A validated Recommend request.

    Attributes:
      user_id: the user, as sent.
      num_results: k, in [1, limits.max_num_results].
      weights: (engagement, quality) blend weights, finite, >= 0, not both 0; None = server defaults.
      exclude: item ids that must not be returned.
      explain: fill per-item explanations.
    """

    user_id: str
    num_results: int
    weights: tuple[float, float] | None
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
    """Finite, non-negative, and not both zero (a zero score for every item ranks nothing)."""
    for name, w in (("engagement", engagement), ("quality", quality)):
        if not math.isfinite(w):
            raise InvalidRequestError(f"{field}.{name} must be finite, got {w}")
        if w < 0:
            raise InvalidRequestError(f"{field}.{name} must be >= 0, got {w}")
    if engagement == 0 and quality == 0:
        raise InvalidRequestError(f"{field}: engagement and quality are both 0; set at least one > 0 "
                                  "or omit weights for the server defaults")
    return float(engagement), float(quality)


_NO_EXCLUDES: frozenset[str] = frozenset()


def validate_recommend(request, limits: RequestLimits) -> RecommendQuery:
    """Validates a recsys.v1.RecommendRequest."""
    user_id = check_id(request.user_id, "user_id", limits)
    k = check_num_results(request.num_results, limits)
    weights = (check_weights(request.weights.engagement, request.weights.quality)
               if request.HasField("weights") else None)
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
