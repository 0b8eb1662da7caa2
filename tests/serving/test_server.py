"""The Recommender over real gRPC on loopback, a real redis-server and a real trained version."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipeline import precomputed_key
from protos.recsys.v1 import recommender_pb2 as pb
from ranking import BlendWeights, blend_scores
from serving.server import SERVICE_NAME

pytestmark = pytest.mark.integration

K = 10


class SlowPipeline:
    """The real pipeline, with `candidates` held at a gate: injects the slowness real models lack here."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.gate.set()  # open unless a test closes it

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def candidates(self, user_ids, exclude=None):
        self.entered.set()
        self.gate.wait(10)
        time.sleep(self.delay)
        return self.inner.candidates(user_ids, exclude)


def recommend(stub, user: str, k: int = K, timeout: float = 30, **kwargs) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=user, num_results=k, **kwargs), timeout=timeout)


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


def offline_top_k(pipeline, user: str, weights: BlendWeights | None = None, k: int = K, exclude=()):
    cands = pipeline.candidates([user])[0]
    item_ids, scores, _ = pipeline.blend_top_k(cands, weights or pipeline.default_weights, k, exclude)
    return list(item_ids), scores


@pytest.mark.parametrize("near_ttl_s", [0.0, 2.0], ids=["redis", "near+redis"])
def test_recommend_equals_the_offline_pipeline_then_hits_the_cache(start, pipeline, known_users, redis_url,
                                                                    near_ttl_s):
    server, stub = start(redis_url, cache={"near_ttl_s": near_ttl_s})
    user = known_users[0]
    first = recommend(stub, user)
    expected_ids, expected_scores = offline_top_k(pipeline, user)
    assert first.source == pb.ONLINE
    assert first.model_version == pipeline.model_version
    assert ids(first) == expected_ids and len(expected_ids) == K
    np.testing.assert_allclose([i.score for i in first.items], expected_scores, rtol=1e-6)
    second = recommend(stub, user)
    assert second.source == pb.CACHE
    assert ids(second) == expected_ids
    assert [i.score for i in second.items] == [i.score for i in first.items]
    assert server.metrics.value("recsys_online_computations_total") == 1
    assert server.metrics.value("recsys_cache_lookups_total", {"result": "hit"}) == 1


@pytest.mark.parametrize("near_ttl_s", [0.0, 2.0], ids=["redis", "near+redis"])
def test_weights_reorder_from_one_cache_entry_without_running_the_ranker(start, pipeline, known_users, redis_url,
                                                                         near_ttl_s):
    server, stub = start(redis_url, cache={"near_ttl_s": near_ttl_s})
    user = known_users[1]
    assert recommend(stub, user).source == pb.ONLINE
    by_engagement = recommend(stub, user, weights=pb.BlendWeights(engagement=1.0, quality=0.0))
    by_quality = recommend(stub, user, weights=pb.BlendWeights(engagement=0.0, quality=1.0))
    assert by_engagement.source == by_quality.source == pb.CACHE
    assert server.metrics.value("recsys_online_computations_total") == 1  # the ranker ran once
    assert ids(by_engagement) != ids(by_quality)
    e = [i.engagement for i in by_engagement.items]
    q = [i.quality for i in by_quality.items]
    assert e == sorted(e, reverse=True) and q == sorted(q, reverse=True)
    w = pipeline.default_weights
    assert ids(by_engagement) == offline_top_k(pipeline, user, w.with_weights(1.0, 0.0))[0]
    assert ids(by_quality) == offline_top_k(pipeline, user, w.with_weights(0.0, 1.0))[0]


def test_precomputed_entries_are_served_as_precomputed(start, pipeline, known_users, redis_server, redis_url):
    server, stub = start(redis_url)
    user = known_users[2]
    cands = pipeline.candidates([user])[0]
    redis_server.client().set(precomputed_key(pipeline.model_version, user), cands.to_bytes())
    response = recommend(stub, user)
    assert response.source == pb.PRECOMPUTED
    assert ids(response) == offline_top_k(pipeline, user)[0]
    assert server.metrics.value("recsys_online_computations_total") == 0


def test_killing_redis_keeps_answers_coming_then_the_cache_returns(start, known_users, own_redis):
    # Without the near cache, so every request goes to Redis (the near cache is tested on its own).
    server, stub = start(own_redis.url, cache={"circuit_open_s": 0.2, "near_ttl_s": 0})
    user = known_users[3]
    expected = ids(recommend(stub, user))
    assert recommend(stub, user).source == pb.CACHE
    own_redis.stop()
    during = [recommend(stub, user) for _ in range(3)]
    assert all(r.source == pb.ONLINE and ids(r) == expected for r in during)
    faults = sum(server.metrics.value("recsys_redis_faults_total", {"op": op, "kind": kind})
                 for op in ("get", "set") for kind in ("error", "timeout", "circuit_open"))
    assert faults >= 3
    own_redis.start()  # same port, empty
    time.sleep(0.3)  # past the circuit's open interval
    assert recommend(stub, user).source == pb.ONLINE  # recomputed and written back
    after = recommend(stub, user)
    assert after.source == pb.CACHE and ids(after) == expected


def test_without_redis_the_in_process_cache_serves_hits(start, known_users):
    server, stub = start("")
    user = known_users[4]
    assert recommend(stub, user).source == pb.ONLINE
    assert recommend(stub, user).source == pb.CACHE


def test_unknown_user_gets_the_popularity_fallback(start, pipeline, redis_url):
    server, stub = start(redis_url)
    response = recommend(stub, "never-seen-user", exclude_item_ids=[])
    assert response.source == pb.FALLBACK
    assert ids(response) == list(pipeline.popular_items(K)[0])
    # The priors blended with the version's default weights: on the heads' [0, 1] scale, not counts.
    w = pipeline.default_weights
    cands = pipeline.fallback_candidates
    row = {item: j for j, item in enumerate(cands.item_ids)}
    for item in response.items:
        j = row[item.item_id]
        assert (item.engagement, item.quality) == (cands.engagement[j], cands.quality[j])
        assert 0 <= item.engagement <= 1 and 0 < item.quality <= 1
        expected = blend_scores(np.array([cands.engagement[j]]), np.array([cands.quality[j]]), w)[0]
        assert item.score == np.float32(expected)  # the one blender, with the version's default weights
        if w.mode == "multiplicative":
            assert 0 <= item.score <= 1
    assert (response.blend.engagement, response.blend.quality) == (w.engagement, w.quality)  # the version's default
    assert response.blend.mode == (pb.MULTIPLICATIVE if w.mode == "multiplicative" else pb.ADDITIVE)
    top = ids(response)[0]
    excluded = recommend(stub, "never-seen-user", exclude_item_ids=[top])
    assert top not in ids(excluded) and ids(excluded) == list(pipeline.popular_items(K, {top})[0])
    assert server.metrics.value("recsys_fallbacks_total") == 2
    assert server.metrics.value("recsys_online_computations_total") == 0


def test_fallback_priors_are_train_popularity_and_a_shrunk_mean_rating(pipeline):
    features = pipeline.features
    cands = pipeline.fallback_candidates
    users = len(features.vocabularies["user_id"].tokens)
    engaged_by = {}
    for items in features.seen.values():
        for item in items:
            engaged_by[item] = engaged_by.get(item, 0) + 1
    expected_e = np.array([engaged_by.get(i, 0) / users for i in cands.item_ids], dtype=np.float32)
    np.testing.assert_array_equal(cands.engagement, expected_e)
    assert np.all(np.diff(cands.engagement) <= 0)  # most popular first
    prior = features.rating_prior
    assert prior is not None and prior.strength == 10.0
    lo, hi = pipeline.rating_scale
    np.testing.assert_allclose(cands.quality, (prior.of(cands.item_ids) - lo) / (hi - lo), rtol=1e-6)
    assert 0 < cands.quality.min() and cands.quality.max() < 1


def test_fallback_order_follows_the_request_weights_and_mode(start, pipeline, redis_url):
    server, stub = start(redis_url)
    answers = {}
    for name, w in {"engagement": (3.0, 0.1), "quality": (0.1, 3.0)}.items():
        for mode in (pb.ADDITIVE, pb.MULTIPLICATIVE):
            response = recommend(stub, "never-seen-user", weights=pb.BlendWeights(engagement=w[0], quality=w[1],
                                                                               mode=mode))
            assert response.source == pb.FALLBACK
            assert all(0 <= i.engagement <= 1 and 0 <= i.quality <= 1 for i in response.items)
            expected = pipeline.popular_items(K, weights=pipeline.default_weights.with_blend(
                *w, "additive" if mode == pb.ADDITIVE else "multiplicative"))
            assert ids(response) == list(expected[0])
            np.testing.assert_allclose([i.score for i in response.items], expected[1], rtol=1e-6)
            answers[name, mode] = ids(response)
    for mode in (pb.ADDITIVE, pb.MULTIPLICATIVE):
        assert answers["engagement", mode] != answers["quality", mode]
    response = recommend(stub, "never-seen-user", weights=pb.BlendWeights(engagement=0.1, quality=3.0,
                                                                       mode=pb.MULTIPLICATIVE))
    assert all(0 <= i.score <= 1 for i in response.items)
    by_quality = [i.quality for i in recommend(stub, "never-seen-user", weights=pb.BlendWeights(
        engagement=0.0, quality=1.0)).items]
    assert by_quality == sorted(by_quality, reverse=True) and by_quality[0] == pipeline.fallback_candidates.quality.max()


def test_requested_blend_mode_is_served_and_echoed(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url)
    user = known_users[14]
    defaults = pipeline.default_weights
    for mode, name in ((pb.ADDITIVE, "additive"), (pb.MULTIPLICATIVE, "multiplicative"),
                       (pb.BLEND_MODE_UNSPECIFIED, defaults.mode)):
        response = recommend(stub, user, weights=pb.BlendWeights(engagement=2.0, quality=0.5, mode=mode))
        expected_ids, expected_scores = offline_top_k(pipeline, user, defaults.with_blend(2.0, 0.5, name))
        assert ids(response) == expected_ids
        np.testing.assert_allclose([i.score for i in response.items], expected_scores, rtol=1e-6)
        served = defaults.with_blend(2.0, 0.5, name)  # UNSPECIFIED transform: the version's, when it fits the mode
        assert (response.blend.mode, response.blend.transform) == (
            {"additive": pb.ADDITIVE, "multiplicative": pb.MULTIPLICATIVE}[name],
            {"identity": pb.IDENTITY, "log": pb.LOG, "logit": pb.LOGIT}[served.transform])
        assert (response.blend.engagement, response.blend.quality) == (2.0, 0.5)
        assert response.engagement_calibrated is pipeline.engagement_calibrated
    logit = recommend(stub, user, weights=pb.BlendWeights(engagement=1.0, quality=1.0, mode=pb.ADDITIVE,
                                                          transform=pb.LOGIT))
    assert ids(logit) == offline_top_k(pipeline, user, BlendWeights(1.0, 1.0, "additive", "logit"))[0]
    # A transform applies to the additive form only: LOG with a multiplicative blend is refused.
    with pytest.raises(grpc.RpcError) as e:
        recommend(stub, user, weights=pb.BlendWeights(engagement=1.0, quality=1.0, mode=pb.MULTIPLICATIVE,
                                                      transform=pb.LOG))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("weights.transform")


def test_extreme_accepted_weights_keep_served_scores_distinct(start, pipeline, known_users, redis_url):
    from serving.validation import WEIGHT_MAX, WEIGHT_MIN

    server, stub = start(redis_url)
    corners = [(WEIGHT_MAX, WEIGHT_MAX), (WEIGHT_MIN, WEIGHT_MIN), (WEIGHT_MAX, WEIGHT_MIN), (WEIGHT_MIN, WEIGHT_MAX)]
    for user in known_users[:4]:
        for mode, transform in ((pb.ADDITIVE, pb.IDENTITY), (pb.ADDITIVE, pb.LOGIT),
                                (pb.MULTIPLICATIVE, pb.BLEND_TRANSFORM_UNSPECIFIED)):
            for we, wq in corners:
                response = recommend(stub, user, weights=pb.BlendWeights(engagement=we, quality=wq, mode=mode,
                                                                         transform=transform))
                scores = [i.score for i in response.items]
                assert len(set(scores)) == len(scores) == K, f"{user} {we},{wq} {mode}/{transform}: {scores}"
                assert scores == sorted(scores, reverse=True)
                if transform == pb.IDENTITY:  # non-negative heads, non-negative weights
                    assert all(s > 0 for s in scores)
                if mode == pb.MULTIPLICATIVE:
                    assert all(0 < s < 1 for s in scores)


def test_quality_rating_is_the_denormalised_quality(start, pipeline, known_users, redis_url):
    from ranking import denormalize_quality

    server, stub = start(redis_url)
    for user in (known_users[15], "never-seen-user"):
        items = recommend(stub, user).items
        q = np.array([i.quality for i in items], dtype=np.float32)
        np.testing.assert_allclose([i.quality_rating for i in items], denormalize_quality(q), rtol=1e-6)
        assert all(1.0 <= i.quality_rating <= 5.0 for i in items)


def test_excluded_items_are_never_returned(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url)
    user = known_users[5]
    full = ids(recommend(stub, user, k=K + 3))
    excluded = full[:3]
    response = recommend(stub, user, exclude_item_ids=excluded)
    assert response.source == pb.CACHE  # excludes are applied after the cache
    assert ids(response) == full[3:]
    assert ids(response) == offline_top_k(pipeline, user, exclude=excluded)[0]


def test_seen_items_are_never_recommended(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url)
    for user in known_users[:3]:
        seen = pipeline.features.seen_items([user])[0]
        assert seen and not set(ids(recommend(stub, user, k=50))) & set(seen)


def test_explain_reports_the_retrieval_score_and_stage_ranks(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url)
    user = known_users[6]
    response = recommend(stub, user, explain=True)
    cands = pipeline.candidates([user])[0]
    position = {item: j for j, item in enumerate(cands.item_ids)}
    for rank, item in enumerate(response.items, 1):
        x = item.explanation
        j = position[item.item_id]
        assert x.blend_rank == rank
        assert x.retrieval_score == pytest.approx(float(cands.retrieval_scores[j]), rel=1e-6)
        assert x.retrieval_rank == 1 + int((cands.retrieval_scores > cands.retrieval_scores[j]).sum())
        assert x.engagement_rank >= 1 and x.quality_rank >= 1
    assert not recommend(stub, user).items[0].HasField("explanation")


def test_similar_items_come_from_the_faiss_index(start, pipeline, redis_url):
    server, stub = start(redis_url)
    item = str(pipeline.index.item_ids[0])
    response = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, num_results=5), timeout=10)
    expected_ids, expected_scores = pipeline.index.similar_items(item, 5)
    assert [i.item_id for i in response.items] == list(expected_ids) and item not in expected_ids
    np.testing.assert_allclose([i.score for i in response.items], expected_scores, rtol=1e-6)
    with pytest.raises(grpc.RpcError) as e:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item", num_results=5), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_reports_serving_once_the_model_is_set(start, redis_url):
    server, _ = start(redis_url)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_misses_for_one_user_compute_once(start, pipeline, known_users, redis_url):
    slow = SlowPipeline(pipeline)
    slow.gate.clear()
    server, stub = start(redis_url, model=slow, workers=8)
    user = known_users[7]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(recommend, stub, user) for _ in range(6)]
        assert slow.entered.wait(10)
        time.sleep(0.3)  # every request is now waiting on the one computation
        slow.gate.set()
        responses = [f.result() for f in futures]
    assert server.metrics.value("recsys_online_computations_total") == 1
    assert server.metrics.value("recsys_singleflight_shared_total") == 5
    assert all(ids(r) == ids(responses[0]) for r in responses)


def test_over_the_concurrency_limit_is_resource_exhausted(start, pipeline, known_users, redis_url):
    slow = SlowPipeline(pipeline)
    slow.gate.clear()
    server, stub = start(redis_url, model=slow, max_concurrent_rpcs=2, workers=4)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(recommend, stub, user) for user in known_users[8:10]]
        assert slow.entered.wait(10)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as e:
            recommend(stub, known_users[10], timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        slow.gate.set()
        assert all(f.result().source == pb.ONLINE for f in busy)
    assert recommend(stub, known_users[10]).source == pb.ONLINE  # capacity is back


def wait_for_count(server, labels: dict, expected: float, name: str = "recsys_requests_total") -> float:
    deadline = time.monotonic() + 10
    while server.metrics.value(name, labels) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.metrics.value(name, labels)


def test_a_deadline_too_short_to_compute_is_refused_without_computing(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url, min_deadline_s=5.0)
    recommend(stub, "warm-up-the-channel")  # fallback: no computation, no deadline check
    with pytest.raises(grpc.RpcError) as e:
        recommend(stub, known_users[11], timeout=1.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_count(server, {"method": "Recommend", "code": "DEADLINE_EXCEEDED"}, 1) == 1
    assert server.metrics.value("recsys_online_computations_total") == 0


def test_a_deadline_passing_during_the_computation_ends_the_rpc(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url, model=SlowPipeline(pipeline, delay=0.6))
    with pytest.raises(grpc.RpcError) as e:
        recommend(stub, known_users[12], timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server notices too: the handler ends with DEADLINE_EXCEEDED rather than answering.
    assert wait_for_count(server, {"method": "Recommend", "code": "DEADLINE_EXCEEDED"}, 1) == 1
    assert server.metrics.value("recsys_requests_total", {"method": "Recommend", "code": "OK"}) == 0


def test_swapping_the_model_serves_the_new_version(start, pipeline, known_users, redis_url):
    server, stub = start(redis_url)
    user = known_users[13]
    assert recommend(stub, user).model_version == pipeline.model_version

    class Renamed(SlowPipeline):
        model_version = pipeline.model_version + "-b"

        def candidates(self, user_ids, exclude=None):
            import dataclasses
            return [dataclasses.replace(c, model_version=self.model_version)
                    for c in self.inner.candidates(user_ids, exclude)]

    server.set_model(Renamed(pipeline))
    response = recommend(stub, user)
    assert (response.model_version, response.source) == (pipeline.model_version + "-b", pb.ONLINE)
    assert server.metrics.value("recsys_model_info", {"version": pipeline.model_version + "-b"}) == 1


def test_a_version_saved_without_the_quality_prior_still_serves_popularity(start, trained_version, tmp_path,
                                                                            redis_url, caplog):
    """Versions trained before the per-item rating prior existed: the fallback is popularity alone, flagged in
    `blend`, whatever the weights; known users are unaffected."""
    import json

    from tests.serving.versions_util import copy_version, reseal

    old = copy_version(trained_version, tmp_path, "before-prior")
    meta_path = old / "features" / "features.json"
    meta = json.loads(meta_path.read_text())
    del meta["rating_prior"]
    meta_path.write_text(json.dumps(meta))
    reseal(old)
    server, stub = start(redis_url)
    with caplog.at_level("WARNING", logger="pipeline.scoring"):
        model = server.load(old)
    assert not model.has_quality_prior and "no item rating prior" in caplog.text
    answers = []
    for w in (pb.BlendWeights(engagement=3.0, quality=0.1), pb.BlendWeights(engagement=0.1, quality=3.0)):
        response = recommend(stub, "never-seen-user", weights=w)
        assert response.source == pb.FALLBACK and response.model_version == "before-prior"
        assert (response.blend.engagement, response.blend.quality) == (1.0, 0.0)
        e = [i.engagement for i in response.items]
        assert [i.score for i in response.items] == e and e == sorted(e, reverse=True) and 0 < e[0] <= 1
        assert all(i.quality == 0 and i.quality_rating == 0 for i in response.items)
        answers.append(ids(response))
    assert answers[0] == answers[1]
    user = next(iter(model.features.seen))
    assert recommend(stub, user).source == pb.ONLINE
