"""Near-cache validation by Redis's invalidation messages (serving/invalidation.py) on a real redis-server:
strict by construction (stale before the writer's call returns, no sleeps), flushes and reconnects make older
snapshots stale, and a server's near hits then read nothing from Redis."""
from __future__ import annotations

import socket
import time

import pytest
import redis

from feedback import Event, EventLog, EventLogConfig, state_key
from protos.recsys.v1 import recommender_pb2 as pb
from serving.invalidation import CounterInvalidations, socket_quiet

pytestmark = pytest.mark.integration

PREFIX = state_key("recsys:events", "")[:-2]
T0 = 1_767_225_600


def wait_for(condition, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def tracker(request, redis_url):
    client = redis.Redis.from_url(redis_url, protocol=request.param)
    pool = client.connection_pool
    t = CounterInvalidations(lambda: pool.connection_class(**pool.connection_kwargs), PREFIX,
                             reconnect_s=0.05).start()
    assert t.up and t.unsupported == ""
    yield t
    t.close()
    client.close()


def test_socket_quiet_sees_unread_bytes_and_a_closed_peer():
    a, b = socket.socketpair()
    try:
        assert socket_quiet(a.fileno())
        b.sendall(b"x")
        assert not socket_quiet(a.fileno())
        assert socket_quiet(a.fileno()) is False  # a peek reads nothing: still there
        a.recv(1)
        assert socket_quiet(a.fileno())
        b.close()
        assert not socket_quiet(a.fileno())  # end of stream: not quiet
    finally:
        a.close()


def test_an_engagement_is_stale_before_log_events_append_returns(tracker, redis_url):
    """Every trial without a sleep: snapshot, append an engagement through the event log, then the very next check
    must say stale for that user (the writer's flush round trip + the reader's checks), and stay stale once the
    message is applied, while another user's entry is fresh again."""
    log = EventLog(redis_url, EventLogConfig())
    try:
        for i in range(300):
            user = f"u{i}"
            since = tracker.snapshot()
            log.append([Event(f"e{i}", user, "i1", "engagement", T0 + i)])
            assert not tracker.fresh(state_key("recsys:events", user), since), f"trial {i}"
            # another user's entry is fresh again once the reader has applied the message (until then: unsure)
            wait_for(lambda s=since, o=f"other{i}": tracker.fresh(state_key("recsys:events", o), s), what="reader")
            assert not tracker.fresh(state_key("recsys:events", user), since)
        # an impression changes no counter: nothing to invalidate
        since = tracker.snapshot()
        log.append([Event("imp", "u0", "i2", "impression", T0)])
        assert tracker.fresh(state_key("recsys:events", "u0"), since)
    finally:
        log.close()


def test_any_write_of_a_counter_by_any_client_invalidates_it(tracker, redis_url):
    client = redis.Redis.from_url(redis_url)
    key = state_key("recsys:events", "w")
    for change in (lambda: client.incr(key), lambda: client.set(key, 7), lambda: client.delete(key),
                   lambda: client.set(key, 1, px=1)):
        since = tracker.snapshot()
        change()
        time.sleep(0.01)  # expiry is lazy/active: give Redis a moment for the px=1 case
        client.get(key)
        wait_for(lambda s=since: not tracker.fresh(key, s), what="the invalidation")
    untouched = state_key("recsys:events", "untouched")
    wait_for(lambda: tracker.fresh(untouched, tracker.snapshot()), what="the reader to apply every message")
    since = tracker.snapshot()
    for i in range(20):
        client.set(f"not-a-counter-{i}", 1)
    client.ping()
    assert tracker.fresh(untouched, since)  # keys outside the prefix send nothing: not even bytes to read
    client.close()


def test_a_flush_or_a_lost_connection_makes_every_older_snapshot_stale(tracker, redis_url):
    client = redis.Redis.from_url(redis_url)
    key = state_key("recsys:events", "f")
    since = tracker.snapshot()
    client.flushdb()
    client.ping()
    assert not tracker.fresh(key, since)
    wait_for(lambda: tracker.fresh(key, tracker.snapshot()), what="the reader to apply the flush")
    since = tracker.snapshot()
    assert tracker.fresh(key, since)
    killed = [c for c in client.client_list() if c.get("redir") not in (None, "-1")]
    assert len(killed) == 1  # the tracking connection
    client.client_kill_filter(_id=killed[0]["id"])
    wait_for(lambda: tracker.reconnects >= 2 and tracker.up, what="the reconnect")
    assert not tracker.fresh(key, since)  # messages may have been missed while it was down
    assert tracker.fresh(key, tracker.snapshot())
    client.close()


def test_near_hits_read_nothing_from_redis_while_invalidations_are_up(start, known_users, redis_url,
                                                                      redis_server):
    client = redis_server.client()
    server, stub = start(redis_url)
    other, other_stub = start(redis_url, cache={"near_invalidations": False})
    assert server.cache.invalidations is not None and server.cache.invalidations.up
    assert other.cache.invalidations is None
    assert server.metrics.registry.get_sample_value("recsys_near_tracking_up") == 1.0

    def mgets() -> int:
        return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

    request = pb.RecommendRequest(user_id=known_users[0], num_results=5)
    first = stub.Recommend(request, timeout=30)
    assert first.source == pb.ONLINE
    for s in (stub, other_stub):  # the other server's first read is a Redis hit, then near hits on both
        assert s.Recommend(request, timeout=30).source == pb.CACHE
        assert s.Recommend(request, timeout=30).source == pb.CACHE
    before = mgets()
    for _ in range(20):
        assert stub.Recommend(request, timeout=30).source == pb.CACHE
    assert mgets() - before == 0  # no read per near hit
    before = mgets()
    for _ in range(20):
        assert other_stub.Recommend(request, timeout=30).source == pb.CACHE
    assert mgets() - before == 20  # the read-validated mode: one counter read per near hit
    # An engagement logged through the other server: this one's very next request recomputes.
    other_stub.LogEvents(pb.LogEventsRequest(events=[pb.Event(
        event_id="x1", user_id=known_users[0], item_id=first.items[0].item_id, type=pb.ENGAGEMENT, timestamp=T0)]), timeout=10)
    assert stub.Recommend(request, timeout=30).source == pb.ONLINE
    assert server.metrics.registry.get_sample_value("recsys_near_invalidations") >= 1
    client.close()
