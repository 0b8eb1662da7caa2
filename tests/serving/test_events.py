"""LogEvents and streamed history over real gRPC, a real redis-server and the tiny trained version:
freshness (the very next Recommend reflects an engagement), unknown users personalised from events,
bad batches refused whole, replays, limits, Redis down, and served lists logged as impressions."""
from __future__ import annotations

import time

import grpc
import pytest

from pipeline import recent_key
from protos.recsys.v1 import recommender_pb2 as pb

pytestmark = pytest.mark.integration

K = 10
T0 = 1_767_225_600


def recommend(stub, user: str, k: int = K, **kwargs) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=user, num_results=k, **kwargs), timeout=30)


def ids(response) -> list[str]:
    return [item.item_id for item in response.items]


def event(n: int, user: str, item: str, kind=pb.ENGAGEMENT, **kw) -> pb.Event:
    return pb.Event(event_id=f"{user}-e{n}", user_id=user, item_id=item, type=kind, timestamp=T0 + n, **kw)


def log_events(stub, *events) -> pb.LogEventsResponse:
    return stub.LogEvents(pb.LogEventsRequest(events=list(events)), timeout=10)


def offline(pipeline, user: str, recent: list[str], k: int = K) -> list[str]:
    """The pipeline's own answer with `recent` (newest first) as streamed history."""
    cands = pipeline.candidates([user], recent=[recent] if recent else None)[0]
    return list(pipeline.blend_top_k(cands, pipeline.default_weights, k, frozenset())[0])


def wait_for(condition, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_an_engagement_is_reflected_in_the_very_next_recommend(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url)  # near cache on (30 s): invalidation must not wait for its TTL
    user = known_users[0]
    first = recommend(stub, user)
    assert first.source == pb.ONLINE
    assert recommend(stub, user).source == pb.CACHE
    clicked = first.items[0].item_id
    reply = log_events(stub, event(1, user, clicked, request_id=first.request_id, position=1))
    assert (reply.accepted, reply.duplicates) == (1, 0)
    after = recommend(stub, user)
    assert after.source == pb.ONLINE  # the old entry is stale at once
    assert clicked not in ids(after)  # engaged items are not recommended again
    assert ids(after) == offline(pipeline, user, [clicked])  # the merged history, exactly
    again = recommend(stub, user)
    assert again.source == pb.CACHE and ids(again) == ids(after)
    # A second engagement: newest first.
    second = after.items[0].item_id
    log_events(stub, event(2, user, second))
    assert ids(recommend(stub, user)) == offline(pipeline, user, [second, clicked])


def test_without_near_validation_the_logging_process_is_still_fresh(start, pipeline, known_users, redis_url):
    """--no-near-validate: near hits read nothing from Redis, yet the process that acknowledged an
    engagement never serves the list from before it; another process may lag up to the near TTL."""
    a, stub_a = start(redis_url, cache={"near_validate": False})
    b, stub_b = start(redis_url, cache={"near_validate": False})
    user = known_users[4]
    first = recommend(stub_a, user)
    assert recommend(stub_a, user).source == pb.CACHE and recommend(stub_b, user).source == pb.CACHE
    assert ids(recommend(stub_b, user)) == ids(first)  # now in b's near cache too
    clicked = first.items[0].item_id
    log_events(stub_a, event(1, user, clicked))
    after = recommend(stub_a, user)
    assert after.source == pb.ONLINE and ids(after) == offline(pipeline, user, [clicked])
    assert recommend(stub_a, user).source == pb.CACHE
    assert ids(recommend(stub_b, user)) == ids(first)  # b's unvalidated near hit: the documented lag


def test_another_server_sees_the_engagement_in_its_very_next_recommend(start, pipeline, known_users, redis_url):
    a, stub_a = start(redis_url)
    b, stub_b = start(redis_url)
    assert b.servicer.versions is None  # no pub/sub: the counter is read with the entry, in the same MGET
    for user in known_users[1:4]:
        before = recommend(stub_b, user)
        assert recommend(stub_b, user).source == pb.CACHE  # in b's near cache
        clicked = before.items[0].item_id
        log_events(stub_a, event(1, user, clicked))
        after = recommend(stub_b, user)  # no wait: the very next request to the other server
        assert after.source == pb.ONLINE and ids(after) == offline(pipeline, user, [clicked]), user
        again = recommend(stub_b, user)
        assert again.source == pb.CACHE and ids(again) == ids(after)
        assert ids(recommend(stub_a, user)) == ids(after)  # a reads the entry b stored (stamped with counter 1)


def test_an_unknown_user_is_personalised_after_three_events(start, pipeline, redis_url):
    server, stub = start(redis_url)
    user = "brand-new-user"
    assert recommend(stub, user).source == pb.FALLBACK
    items = [str(i) for i in pipeline.index.item_ids[:3]]
    log_events(stub, *(event(n, user, item) for n, item in enumerate(items)))
    response = recommend(stub, user)
    assert response.source == pb.EVENTS
    assert not set(items) & set(ids(response))
    assert ids(response) == offline(pipeline, user, items[::-1])
    assert recommend(stub, user).source == pb.EVENTS  # cached, still flagged


def test_an_unknown_user_whose_events_name_no_known_item_stays_on_the_fallback(start, redis_url):
    server, stub = start(redis_url)
    log_events(stub, event(1, "stranger", "no-such-item"))
    assert recommend(stub, "stranger").source == pb.FALLBACK


def test_a_bad_event_refuses_the_whole_batch_naming_its_index(start, known_users, redis_url, redis_server):
    server, stub = start(redis_url)
    user = known_users[2]
    good = [event(n, user, "1") for n in range(3)]
    bad = pb.Event(event_id="x", user_id=user, item_id="2", type=pb.RATING, timestamp=T0)  # a rating without value
    for batch, where in (([*good[:2], bad, good[2]], "events[2]"),
                         ([good[0], pb.Event(event_id="y", user_id=user, item_id="2", timestamp=T0)], "events[1]"),
                         ([good[0], pb.Event(event_id="z", user_id=user, item_id="2", type=7, timestamp=T0)],
                          "events[1]")):
        with pytest.raises(grpc.RpcError) as info:
            log_events(stub, *batch)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(where)
    client = redis_server.client()
    assert client.xlen("recsys:events") == 0 and client.llen(recent_key(user)) == 0 and not client.keys("*:rv:*")
    assert recommend(stub, user).source == pb.ONLINE


def test_batch_limits_are_invalid_argument(start, known_users, redis_url):
    server, stub = start(redis_url, events={"max_batch_events": 3, "max_batch_bytes": 400})
    user = known_users[2]
    with pytest.raises(grpc.RpcError) as info:
        log_events(stub, *(event(n, user, "1") for n in range(4)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "maximum per batch is 3" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        log_events(stub, event(1, user, "1" * 200), event(2, user, "2" * 200))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bytes" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        log_events(stub)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_replayed_batch_changes_nothing(start, known_users, redis_url, redis_server):
    server, stub = start(redis_url)
    user = known_users[3]
    batch = [event(1, user, "3"), event(2, user, "4", kind=pb.IMPRESSION, position=2)]
    assert log_events(stub, *batch).accepted == 2
    recommend(stub, user)
    assert server.servicer.served.flush()  # its served list is in the log before the snapshot
    client = redis_server.client()
    state = {k: client.dump(k) for k in client.keys("recsys:events*") + client.keys("recsys:recent:*")}
    reply = log_events(stub, *batch)
    assert (reply.accepted, reply.duplicates) == (0, 2)
    assert {k: client.dump(k) for k in client.keys("recsys:events*") + client.keys("recsys:recent:*")} == state
    assert recommend(stub, user).source == pb.CACHE  # the counter did not move: the cache stays valid


def test_redis_down_log_events_is_unavailable_and_recommend_serves_batch_features(start, pipeline, known_users,
                                                                                 own_redis):
    server, stub = start(own_redis.url, cache={"near_ttl_s": 0, "circuit_open_s": 0.2},
                         events={"timeout_s": 0.2, "versions_ttl_s": 0.05})
    user = known_users[4]
    log_events(stub, event(1, user, "5"))
    assert ids(recommend(stub, user)) == offline(pipeline, user, ["5"])
    own_redis.stop()
    with pytest.raises(grpc.RpcError) as info:
        log_events(stub, event(2, user, "6"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    time.sleep(0.1)  # past the process's trust in its copy of the counter
    during = [recommend(stub, user) for _ in range(3)]
    assert all(r.source == pb.ONLINE and ids(r) == offline(pipeline, user, []) for r in during)
    assert server.metrics.value("recsys_events_redis_faults_total", {"op": "append"}) == 1
    own_redis.start()  # empty (no persistence here): the client retries its batch
    time.sleep(0.3)
    assert log_events(stub, event(2, user, "6")).accepted == 1


def test_every_response_has_a_request_id_and_served_lists_are_logged(start, known_users, redis_url, redis_server):
    server, stub = start(redis_url)
    user = known_users[5]
    responses = [recommend(stub, user) for _ in range(3)] + [recommend(stub, "unknown-user", k=3)]
    request_ids = [r.request_id for r in responses]
    assert all(request_ids) and len(set(request_ids)) == 4  # memoized cache hits get their own ids too
    assert server.servicer.served.flush()
    entries = redis_server.client().xrange("recsys:events")
    assert [e[1][b"req"].decode() for e in entries] == request_ids
    first = entries[0][1]
    assert first[b"type"] == b"served" and first[b"user"].decode() == user
    assert first[b"item"].decode().split("\x1f") == ids(responses[0])
    assert first[b"ver"].decode() == responses[0].model_version and first[b"src"] == b"online"
    assert [e[1][b"src"] for e in entries[1:]] == [b"cache", b"cache", b"fallback"]


def test_served_list_logging_can_be_turned_off(start, known_users, redis_url, redis_server):
    server, stub = start(redis_url, events={"log_served": False})
    assert recommend(stub, known_users[6]).request_id
    time.sleep(0.05)
    assert redis_server.client().xlen("recsys:events") == 0


def test_without_an_event_log_log_events_is_failed_precondition(start, known_users):
    server, stub = start()
    with pytest.raises(grpc.RpcError) as info:
        log_events(stub, event(1, known_users[0], "1"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert recommend(stub, known_users[0]).request_id
