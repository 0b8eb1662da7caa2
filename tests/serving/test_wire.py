"""The cache-hit fast paths (memoized response bytes + the request id appended; plain repeats answered from the
near entry's memo without re-validating) against the slow path."""
from __future__ import annotations

import grpc
import pytest

from protos.recsys.v1 import recommender_pb2 as pb
from serving.validation import validate_recommend
from serving.wire import string_field

RECOMMEND = "/recsys.v1.Recommender/Recommend"
WEIGHTS = [None, pb.BlendWeights(engagement=1.0, quality=0.5, mode=pb.ADDITIVE),
           pb.BlendWeights(engagement=0.3, quality=2.0, mode=pb.MULTIPLICATIVE),
           pb.BlendWeights(engagement=1.0, quality=1.0, mode=pb.ADDITIVE, transform=pb.LOGIT),
           pb.BlendWeights(engagement=0.0, quality=1.0)]


@pytest.mark.parametrize("value", ["a", "x" * 127, "y" * 128, "z" * 300, "é" * 70, "0123abcd-1f", "w" * 20000])
def test_string_field_is_the_protobuf_encoding(value):
    base = pb.RecommendResponse(model_version="v1", source=pb.CACHE, items=[pb.RecommendedItem(item_id="i", score=1)])
    stamped = pb.RecommendResponse()
    stamped.CopyFrom(base)
    stamped.request_id = value
    appended = base.SerializeToString() + string_field(6, value)
    assert appended == stamped.SerializeToString()
    assert pb.RecommendResponse.FromString(appended) == stamped
    assert string_field(6, "") == b""


def test_appending_to_bytes_that_hold_the_field_replaces_it():
    first = pb.RecommendResponse(model_version="v1", request_id="old").SerializeToString()
    assert pb.RecommendResponse.FromString(first + string_field(6, "new")).request_id == "new"


def _requests(users: list[str]) -> list[pb.RecommendRequest]:
    out = []
    for i, user in enumerate(users):
        weights = WEIGHTS[i % len(WEIGHTS)]
        k = (3, 10, 20)[i % 3]
        kwargs = {"weights": weights} if weights is not None else {}
        out.append(pb.RecommendRequest(user_id=user, num_results=k, **kwargs))
        if i % 7 == 0:  # not memoized: explained, or with excluded items
            out.append(pb.RecommendRequest(user_id=user, num_results=k, explain=True, **kwargs))
            out.append(pb.RecommendRequest(user_id=user, num_results=k, exclude_item_ids=["0", "1"], **kwargs))
    return out + [pb.RecommendRequest(user_id="nobody-known", num_results=5)]  # the fallback


@pytest.mark.integration
@pytest.mark.parametrize("aio", [True, False], ids=["aio", "threads"])
@pytest.mark.parametrize("near_ttl_s", [30.0, 0.0], ids=["near-cache", "redis-hit"])
def test_memoized_bytes_answer_what_the_message_path_answers(start, redis_url, known_users, near_ttl_s, aio):
    server, _ = start(redis_url, cache={"near_ttl_s": near_ttl_s}, aio=aio)
    requests = _requests(known_users[:40])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.unary_unary(RECOMMEND, request_serializer=pb.RecommendRequest.SerializeToString,
                                  response_deserializer=None)
        rounds = [[raw(r, timeout=30) for r in requests] for _ in range(3)]  # computed, then memoized twice
    # Every request looked the cache up exactly once (the unknown user too: it may have streamed events), whichever
    # path answered it (plain repeats come from the servicer's memoized-repeat path, servicer._repeat).
    assert server.metrics.value("recsys_cache_lookups_total") == 3 * len(requests)
    if near_ttl_s:
        assert server.metrics.value("recsys_cache_lookups_total", {"layer": "near"}) >= 2 * (len(requests) - 1)
    ids = set()
    for i, request in enumerate(requests):
        # The slow path: the servicer's message API stamps a copy of the memoized message.
        slow, _ = server.servicer.answer(validate_recommend(request, server.servicer.limits))
        slow_id, slow.request_id = slow.request_id, ""
        for n, wire in enumerate(r[i] for r in rounds):
            message = pb.RecommendResponse.FromString(wire)
            assert wire == message.SerializeToString()  # canonical bytes: as if the stamped message was serialized
            request_id, message.request_id = message.request_id, ""
            assert request_id.startswith(slow_id.split("-")[0] + "-") and request_id not in ids
            ids.add(request_id)
            assert len(message.items) > 0
            if n == 0 and message.source == pb.ONLINE:  # computed by this request; later ones are cache hits
                message.source = slow.source
            assert message == slow, request
    assert server.metrics.value("recsys_cache_lookups_total", {"result": "hit"}) > 0
