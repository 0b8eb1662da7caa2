"""What a user did, as the event log stores it, and the checks every event passes before any is written."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from core.errors import InvalidRequestError

IMPRESSION = "impression"
ENGAGEMENT = "engagement"
RATING = "rating"
EVENT_TYPES: tuple[str, ...] = (IMPRESSION, ENGAGEMENT, RATING)
# Types that are positives: they enter the user's streamed history and make the cache stale.
ENGAGED_TYPES = frozenset({ENGAGEMENT, RATING})
# Events of one batch are joined with these in the log; ids are printable (no control characters).
ITEM_SEP = "\x1f"


class InvalidEventError(InvalidRequestError):
    """An event of a batch is malformed; `index` is its 0-based position in the batch."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"events[{index}]: {message}")
        self.index = index


@dataclasses.dataclass(frozen=True)
class Event:
    """One user event.

    Attributes:
      event_id: client-chosen unique id; a replay with a logged id writes nothing.
      user_id, item_id: raw ids (printable, non-empty).
      type: one of EVENT_TYPES.
      timestamp: seconds since 1970-01-01 UTC, > 0.
      value: the rating for RATING (finite), None otherwise.
      request_id: the served list the event answers ("" = none).
      position: the item's 1-based position in that list (0 = unknown).
      arm: the experiment arm the server assigned the user when it logged the event ("" = none;
        stamped by LogEvents, never sent by clients — see serving/experiments.py).
    """

    event_id: str
    user_id: str
    item_id: str
    type: str
    timestamp: int
    value: float | None = None
    request_id: str = ""
    position: int = 0
    arm: str = ""

    @property
    def engaged(self) -> bool:
        return self.type in ENGAGED_TYPES


def _check_id(index: int, value: str, field: str, max_length: int, required: bool = True) -> None:
    if not value:
        if required:
            raise InvalidEventError(index, f"{field} is empty")
        return
    if len(value.encode("utf-8")) > max_length:
        raise InvalidEventError(index, f"{field} is {len(value.encode('utf-8'))} bytes long; the maximum is "
                                       f"{max_length}")
    if not value.isprintable():
        raise InvalidEventError(index, f"{field} {value[:40]!r} contains control characters")


# Latest accepted timestamp: year 9999, so a milliseconds clock sent as seconds is caught.
MAX_TIMESTAMP = 253_402_300_799


def validate_events(events: Sequence[Event], max_events: int, max_id_length: int = 256) -> None:
    """Checks a batch before anything of it is written; raises InvalidEventError for the first bad event.

    Rules: 1..max_events events; event_id, user_id, item_id non-empty, printable, at most
    max_id_length UTF-8 bytes (request_id too when given); type one of EVENT_TYPES;
    timestamp in (0, MAX_TIMESTAMP] seconds; value finite and given exactly for RATING;
    position >= 0. An empty batch is InvalidRequestError (no index).
    """
    if not events:
        raise InvalidRequestError("events is empty; send at least one event")
    if len(events) > max_events:
        raise InvalidRequestError(f"events has {len(events)} entries; the maximum per batch is {max_events}")
    for i, e in enumerate(events):
        _check_id(i, e.event_id, "event_id", max_id_length)
        _check_id(i, e.user_id, "user_id", max_id_length)
        _check_id(i, e.item_id, "item_id", max_id_length)
        _check_id(i, e.request_id, "request_id", max_id_length, required=False)
        if e.type not in EVENT_TYPES:
            raise InvalidEventError(i, f"type {e.type!r} is not one of {', '.join(EVENT_TYPES)}")
        if not 0 < e.timestamp <= MAX_TIMESTAMP:
            raise InvalidEventError(i, f"timestamp {e.timestamp} is not seconds since 1970 in (0, {MAX_TIMESTAMP}]")
        if e.type == RATING:
            if e.value is None or not math.isfinite(e.value):
                raise InvalidEventError(i, f"a rating needs a finite value, got {e.value}")
        elif e.value is not None:
            raise InvalidEventError(i, f"value is only for ratings, got {e.value} on a {e.type}")
        if e.position < 0:
            raise InvalidEventError(i, f"position must be >= 0 (0 = unknown), got {e.position}")
