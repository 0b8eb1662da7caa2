"""Injected faults, each with its defined behaviour, against a real server and a real redis-server.

| fault                                   | behaviour                                              |
|-----------------------------------------|--------------------------------------------------------|
| Redis killed (SIGKILL) / restarted      | served ONLINE, fault counted; back to CACHE after      |
| Redis slow (CLIENT PAUSE on the server) | Redis times out after socket_timeout_s → ONLINE        |
| corrupt precomputed entry               | ignored (counted "corrupt"), recomputed ONLINE         |
| entry from another model version        | ignored (counted "corrupt"), recomputed ONLINE         |
| client cancels mid-call                 | computation finishes and is cached, answer dropped     |
| deadline shorter than the work          | DEADLINE_EXCEEDED; the server stays healthy            |
"""
from __future__ import annotations

import threading
import time

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipeline import CandidateSet, precomputed_key
from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from serving import CacheConfig, RecommendServer, ServerConfig
from tests.serving.versions_util import ClientLoop, wait_for

pytestmark = pytest.mark.integration


class GatedPipeline:
    """The real pipeline with `candidates` held at a gate: injects slowness the tiny real model lacks."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.finished = threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def candidates(self, user_ids, exclude=None):
        self.entered.set()
        self.gate.wait(30)
        time.sleep(self.delay)
        try:
            return self.inner.candidates(user_ids, exclude)
        finally:
            self.finished.set()


@pytest.fixture
def start(pipeline):
    """start(redis_url="", model=pipeline, cache={...}) -> (server, stub, health stub); stopped afterwards."""
    started = []

    def _start(redis_url: str = "", model=None, cache: dict | None = None):
        server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=4, metrics_port=0),
                                 CacheConfig(redis_url=redis_url, **(cache or {}))).start()
        server.set_model(model if model is not None else pipeline)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel))
        return server, pb_grpc.RecommenderStub(channel), health_pb2_grpc.HealthStub(channel)

    yield _start
    for server, channel in started:
        channel.close()
        server.stop(grace=0)


def ask(stub, user: str, timeout: float = 30) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=user, num_results=5), timeout=timeout)


def healthy(health) -> bool:
    return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def faults(server, kind: str) -> float:
    return server.metrics.value("recsys_redis_faults_total", {"kind": kind})


def test_redis_killed_under_load_fails_no_request_and_the_cache_comes_back(start, known_users, own_redis):
    server, stub, _ = start(own_redis.url, cache={"near_ttl_s": 0, "circuit_open_s": 0.2})
    users = known_users[:8]
    for u in users:
        ask(stub, u)
    with ClientLoop(f"127.0.0.1:{server.port}", users, clients=3) as loop:
        wait_for(lambda: len(loop.records) > 30, what="traffic with Redis up")
        own_redis.kill()  # SIGKILL: no goodbye on the sockets
        mark = len(loop.records)
        wait_for(lambda: len(loop.records) > mark + 30, what="traffic with Redis down")
        own_redis.start()  # same port, empty
        mark = len(loop.records)
        wait_for(lambda: any(r[4] == pb.CACHE for r in loop.records[mark:]), what="cache hits after the restart")
    assert loop.failures() == []
    sources = [r[4] for r in loop.records]
    assert pb.ONLINE in sources and pb.CACHE in sources
    assert faults(server, "error") + faults(server, "timeout") >= 1


def test_slow_redis_times_out_and_the_request_is_served_online(start, known_users, own_redis):
    server, stub, _ = start(own_redis.url, cache={"near_ttl_s": 0, "socket_timeout_s": 0.05, "retries": 0})
    user = known_users[0]
    ask(stub, user)
    assert ask(stub, user).source == pb.CACHE
    admin = redis.Redis(port=own_redis.port, socket_timeout=5)
    admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")  # Redis stops answering every client for 2 s
    try:
        # The deadline (1.5 s) is shorter than the pause: only giving up on Redis can answer in time.
        response = ask(stub, user, timeout=1.5)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    assert response.source == pb.ONLINE
    assert faults(server, "timeout") >= 1


def test_corrupt_precomputed_entry_is_ignored_and_recomputed(start, pipeline, known_users, redis_server, redis_url):
    server, stub, _ = start(redis_url, cache={"near_ttl_s": 0})
    user = known_users[1]
    client = redis_server.client()
    good = pipeline.candidates([user])[0].to_bytes()
    client.set(precomputed_key(pipeline.model_version, user), good[: len(good) // 2] + b"\xff garbage")
    first = ask(stub, user)
    assert first.source == pb.ONLINE and len(first.items) == 5
    assert faults(server, "corrupt") == 1
    assert server.metrics.value("recsys_online_computations_total") == 1
    assert ask(stub, user).source == pb.CACHE  # the recomputed entry, written under the cache key


def test_entry_of_another_version_under_this_versions_key_is_ignored(start, pipeline, known_users, redis_server,
                                                                     redis_url):
    server, stub, _ = start(redis_url, cache={"near_ttl_s": 0})
    user = known_users[2]
    real = pipeline.candidates([user])[0]
    foreign = CandidateSet(real.item_ids[::-1].copy(), real.retrieval_scores, real.engagement, real.quality,
                           model_version="some-other-version")
    redis_server.client().set(precomputed_key(pipeline.model_version, user), foreign.to_bytes())
    response = ask(stub, user)
    assert response.source == pb.ONLINE and response.model_version == pipeline.model_version
    assert faults(server, "corrupt") == 1


def test_client_cancelling_mid_call_leaves_the_server_working(start, pipeline, known_users):
    gated = GatedPipeline(pipeline)
    server, stub, health = start(model=gated)
    user = known_users[3]
    gated.gate.clear()
    call = stub.Recommend.future(pb.RecommendRequest(user_id=user, num_results=5), timeout=30)
    assert gated.entered.wait(10)
    call.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    gated.gate.set()  # the computation runs to the end ...
    assert gated.finished.wait(10)
    assert healthy(health)
    again = ask(stub, user)
    assert again.source == pb.CACHE  # ... and its result was kept, not wasted
    wait_for(lambda: server.metrics.value("recsys_requests_total", {"code": "DEADLINE_EXCEEDED"}) == 1,
             timeout=10, what="the cancelled RPC to be counted")
    assert server.metrics.value("recsys_requests_total", {"code": "INTERNAL"}) == 0


def test_deadline_shorter_than_the_work_is_deadline_exceeded_and_the_server_stays_healthy(start, pipeline,
                                                                                          known_users):
    server, stub, health = start(model=GatedPipeline(pipeline, delay=1.0))
    user = known_users[4]
    with pytest.raises(grpc.RpcError) as e:
        ask(stub, user, timeout=0.2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert healthy(health)
    assert ask(stub, "unknown-user-gets-fallback", timeout=5).source == pb.FALLBACK  # workers are not stuck
    assert ask(stub, user, timeout=30).items
    assert server.metrics.value("recsys_requests_total", {"code": "INTERNAL"}) == 0
