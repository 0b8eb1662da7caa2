"""feedback.events: the checks a batch passes before anything of it is written (pure, no Redis)."""
import math

import pytest

from core.errors import InvalidRequestError
from feedback import Event, InvalidEventError, validate_events


def ev(i: int = 0, **kw) -> Event:
    base = dict(event_id=f"e{i}", user_id="u1", item_id="i1", type="engagement", timestamp=1_700_000_000)
    return Event(**{**base, **kw})


@pytest.mark.parametrize("bad, field", [
    (dict(event_id=""), "event_id is empty"),
    (dict(user_id="a\nb"), "control characters"),
    (dict(item_id="x" * 300), "300 bytes"),
    (dict(type="click"), "type 'click'"),
    (dict(timestamp=0), "timestamp 0"),
    (dict(timestamp=1_700_000_000_000), "timestamp 1700000000000"),
    (dict(type="rating"), "finite value"),
    (dict(type="rating", value=math.nan), "finite value"),
    (dict(value=3.0), "only for ratings"),
    (dict(position=-1), "position"),
    (dict(request_id="r\x00"), "request_id"),
])
def test_validate_events_names_the_index_of_the_first_bad_event(bad, field):
    batch = [ev(0), ev(1), ev(2, **bad), ev(3, event_id="")]
    with pytest.raises(InvalidEventError) as info:
        validate_events(batch, max_events=10)
    assert info.value.index == 2
    assert str(info.value).startswith("events[2]: ")
    assert field in str(info.value)


def test_validate_events_accepts_every_type_and_refuses_empty_or_oversized_batches():
    validate_events([ev(0, type="impression", position=3, request_id="r-1"), ev(1),
                     ev(2, type="rating", value=4.5)], max_events=3)
    with pytest.raises(InvalidRequestError, match="empty"):
        validate_events([], max_events=3)
    with pytest.raises(InvalidRequestError, match="maximum per batch is 3"):
        validate_events([ev(i) for i in range(4)], max_events=3)
