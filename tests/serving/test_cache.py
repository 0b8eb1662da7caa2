"""Candidate cache against a real redis-server: layout, TTL, faults, circuit, single-flight."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

from pipeline import CandidateSet
from serving.cache import (
    CACHE,
    ONLINE,
    PRECOMPUTED,
    CacheConfig,
    CandidateCache,
    LocalCandidateStore,
    RedisCandidateStore,
    SingleFlight,
    cache_key,
    precomputed_key,
    redis_client,
)
from serving.metrics import ServingMetrics

pytestmark = pytest.mark.integration


def make_candidates(n: int = 5, version: str = "v1", seed: int = 0) -> CandidateSet:
    rng = np.random.default_rng(seed)
    return CandidateSet(np.array([f"item{i}" for i in range(n)], dtype=object),
                        rng.normal(size=n).astype(np.float32), rng.random(n).astype(np.float32),
                        rng.random(n).astype(np.float32), version)


def assert_same(a: CandidateSet, b: CandidateSet) -> None:
    assert list(a.item_ids) == list(b.item_ids)
    np.testing.assert_array_equal(a.engagement, b.engagement)
    np.testing.assert_array_equal(a.quality, b.quality)
    np.testing.assert_array_equal(a.retrieval_scores, b.retrieval_scores)
    assert a.model_version == b.model_version


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def redis_store(url: str, metrics: ServingMetrics, clock=time.monotonic, **overrides) -> RedisCandidateStore:
    config = CacheConfig(redis_url=url, **overrides)
    return RedisCandidateStore(redis_client(config), config.ttl_s, metrics, config.circuit_open_s, clock)


def test_keys_are_namespaced_by_version_and_kind_and_share_the_users_hash_slot():
    from core.redis_url import key_slot
    from feedback.log import state_key
    from pipeline import recent_key

    assert cache_key("v7", "u:1") == "recsys:v7:cache:{u:1}"
    assert precomputed_key("v7", "u:1") == "recsys:v7:pre:{u:1}"
    keys = [cache_key("v7", "u:1"), precomputed_key("v8", "u:1"), state_key("recsys:events", "u:1"), recent_key("u:1")]
    assert len({key_slot(k) for k in keys}) == 1  # one MGET / one script per user on a Redis Cluster
    assert key_slot(cache_key("v7", "u:2")) != key_slot(cache_key("v7", "u:1"))


def test_local_store_evicts_least_recently_used_and_expires():
    clock = FakeClock()
    store = LocalCandidateStore(max_entries=2, ttl_s=10, clock=clock)
    store.put("v1", "a", make_candidates(seed=1))
    store.put("v1", "b", make_candidates(seed=2))
    assert store.get("v1", "a") is not None  # a is now more recent than b
    store.put("v1", "c", make_candidates(seed=3))
    assert store.get("v1", "b") is None
    assert store.get("v1", "a")[1] == CACHE
    assert store.get("v2", "a") is None  # another version never sees v1's entry
    clock.now += 11
    assert store.get("v1", "a") is None and store.get("v1", "c") is None


def test_redis_store_round_trips_with_ttl(redis_server, redis_url):
    metrics = ServingMetrics()
    store = redis_store(redis_url, metrics, ttl_s=120)
    cands = make_candidates()
    assert store.get("v1", "u1") is None
    store.put("v1", "u1", cands)
    got, source = store.get("v1", "u1")
    assert source == CACHE
    assert_same(got, cands)
    ttl = redis_server.client().ttl(cache_key("v1", "u1"))
    assert 0 < ttl <= 120
    assert store.get("v2", "u1") is None


def test_redis_store_prefers_precomputed_entries(redis_server, redis_url):
    store = redis_store(redis_url, ServingMetrics())
    online, pre = make_candidates(seed=1), make_candidates(seed=2)
    store.put("v1", "u1", online)
    redis_server.client().set(precomputed_key("v1", "u1"), pre.to_bytes())
    got, source = store.get("v1", "u1")
    assert source == PRECOMPUTED
    assert_same(got, pre)


def test_redis_store_treats_corrupt_and_foreign_version_entries_as_misses(redis_server, redis_url):
    metrics = ServingMetrics()
    store = redis_store(redis_url, metrics)
    client = redis_server.client()
    client.set(cache_key("v1", "u1"), b"not a candidate set")
    client.set(cache_key("v1", "u2"), make_candidates(version="v0").to_bytes())
    assert store.get("v1", "u1") is None
    assert store.get("v1", "u2") is None
    assert metrics.value("recsys_redis_faults_total", {"op": "get", "kind": "corrupt"}) == 2


def test_redis_down_is_a_counted_miss_and_opens_the_circuit(own_redis):
    metrics = ServingMetrics()
    clock = FakeClock()
    store = redis_store(own_redis.url, metrics, clock, circuit_open_s=5.0)
    store.put("v1", "u1", make_candidates())
    own_redis.stop()
    assert store.get("v1", "u1") is None
    assert metrics.value("recsys_redis_faults_total", {"op": "get", "kind": "error"}) == 1
    # While the circuit is open Redis is not even tried.
    assert store.get("v1", "u1") is None
    store.put("v1", "u1", make_candidates())
    assert metrics.value("recsys_redis_faults_total", {"op": "get", "kind": "circuit_open"}) == 1
    assert metrics.value("recsys_redis_faults_total", {"op": "set", "kind": "circuit_open"}) == 1
    own_redis.start()  # same port, empty (no persistence)
    assert store.get("v1", "u1") is None  # circuit still open
    clock.now += 5.1
    store.put("v1", "u1", make_candidates(seed=4))
    got, source = store.get("v1", "u1")
    assert source == CACHE
    assert_same(got, make_candidates(seed=4))


def test_slow_redis_times_out_instead_of_blocking(redis_server, redis_url):
    metrics = ServingMetrics()
    store = redis_store(redis_url, metrics, socket_timeout_s=0.05, retries=0)
    store.put("v1", "u1", make_candidates())
    redis_server.client().execute_command("CLIENT", "PAUSE", 400, "ALL")  # a real, stalled Redis
    start = time.monotonic()
    assert store.get("v1", "u1") is None
    assert time.monotonic() - start < 0.3
    assert metrics.value("recsys_redis_faults_total", {"op": "get", "kind": "timeout"}) == 1
    time.sleep(0.45)


def test_single_flight_runs_concurrent_callers_once():
    flight = SingleFlight()
    release = threading.Event()
    calls = []

    def compute():
        calls.append(1)
        release.wait(5)
        return "result"

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(flight.do, "k", compute, 5) for _ in range(6)]
        deadline = time.monotonic() + 5
        while flight.in_flight() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.1)  # let every caller reach the shared future
        release.set()
        results = [f.result() for f in futures]
    assert len(calls) == 1
    assert all(r == "result" for r, _ in results)
    assert sorted(shared for _, shared in results) == [False] + [True] * 5
    assert flight.in_flight() == 0


def test_single_flight_shares_the_leaders_exception_and_times_out_waiters():
    flight = SingleFlight()
    started, release = threading.Event(), threading.Event()

    def failing():
        started.set()
        release.wait(5)
        raise RuntimeError("boom")

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        leader = pool.submit(flight.do, "k", failing)
        started.wait(5)
        waiter = pool.submit(flight.do, "k", lambda: "never", 5)
        impatient = pool.submit(flight.do, "k", lambda: "never", 0.05)
        with pytest.raises(concurrent.futures.TimeoutError):
            impatient.result()
        release.set()
        with pytest.raises(RuntimeError, match="boom"):
            leader.result()
        with pytest.raises(RuntimeError, match="boom"):
            waiter.result()
    assert flight.do("k", lambda: "again") == ("again", False)


def test_candidate_cache_computes_on_miss_then_serves_hits(redis_server, redis_url):
    metrics = ServingMetrics()
    cache = CandidateCache.from_config(CacheConfig(redis_url=redis_url, near_ttl_s=0), metrics)
    computed = []

    def compute():
        computed.append(1)
        return make_candidates(seed=9)

    first, source1 = cache.get_or_compute("v1", "u1", compute)
    second, source2 = cache.get_or_compute("v1", "u1", compute)
    assert (source1, source2) == (ONLINE, CACHE)
    assert_same(first.candidates, second.candidates)
    assert len(computed) == 1
    assert redis_server.client().exists(cache_key("v1", "u1"))
    assert metrics.value("recsys_online_computations_total") == 1
    assert metrics.value("recsys_cache_lookups_total", {"result": "miss"}) == 1
    assert metrics.value("recsys_cache_lookups_total", {"result": "hit"}) == 1
    assert metrics.value("recsys_cache_hit_ratio") == 0.5
    cache.close()


def test_near_cache_answers_hot_users_without_redis_until_its_ttl(own_redis):
    metrics = ServingMetrics()
    clock = FakeClock()
    near = LocalCandidateStore(max_entries=10, ttl_s=2.0, clock=clock)
    cache = CandidateCache(redis_store(own_redis.url, metrics, circuit_open_s=0.0), metrics, near)
    entry, source = cache.get_or_compute("v1", "u1", make_candidates)
    assert source == ONLINE
    own_redis.client().set(precomputed_key("v1", "u2"), make_candidates(seed=5).to_bytes())
    assert cache.get_or_compute("v1", "u2", make_candidates)[1] == PRECOMPUTED
    own_redis.stop()
    again, source = cache.get_or_compute("v1", "u1", make_candidates)
    assert source == CACHE and again is entry  # the same decoded entry, no Redis involved
    assert cache.get_or_compute("v1", "u2", make_candidates)[1] == PRECOMPUTED  # keeps its origin
    assert metrics.value("recsys_cache_lookups_total", {"layer": "near"}) == 2
    assert metrics.value("recsys_redis_faults_total", {"op": "get", "kind": "error"}) == 0
    clock.now += 2.1
    assert cache.get_or_compute("v1", "u1", make_candidates)[1] == ONLINE  # expired; Redis is down
    assert metrics.value("recsys_redis_faults_total", {"op": "get", "kind": "error"}) == 1


def test_candidate_cache_without_redis_uses_the_local_lru():
    cache = CandidateCache.from_config(CacheConfig(), ServingMetrics())
    assert isinstance(cache.store, LocalCandidateStore) and cache.near is None
    assert cache.get_or_compute("v1", "u1", make_candidates)[1] == ONLINE
    assert cache.get_or_compute("v1", "u1", make_candidates)[1] == CACHE


def test_cache_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ttl"):
        CacheConfig(ttl_s=0)
    with pytest.raises(ValueError, match="socket-timeout"):
        CacheConfig(socket_timeout_s=0)
    with pytest.raises(ValueError, match="near-ttl-s"):
        CacheConfig(near_ttl_s=-1)
    with pytest.raises(ValueError, match="redis-url"):
        redis_client(CacheConfig(redis_url="http://nope"))


def test_redis_store_reuses_the_decoded_entry_only_while_its_bytes_are_unchanged(redis_server, redis_url):
    config = CacheConfig(redis_url=redis_url, decoded_max_entries=2)
    store = RedisCandidateStore.from_config(config, ServingMetrics())
    first, second = make_candidates(seed=1), make_candidates(seed=2)
    store.put("v1", "u1", first)
    a = store.get_entry("v1", "u1")
    assert store.get_entry("v1", "u1") is a  # same bytes: same decoded entry, memoized responses kept
    assert_same(a.candidates, first)
    redis_server.client().set(cache_key("v1", "u1"), second.to_bytes())  # e.g. the batch job rewrote it
    b = store.get_entry("v1", "u1")
    assert b is not a
    assert_same(b.candidates, second)
    redis_server.client().set(precomputed_key("v1", "u1"), first.to_bytes())
    c = store.get_entry("v1", "u1")
    assert c.source == PRECOMPUTED and c is not a
    assert_same(c.candidates, first)
    redis_server.client().delete(precomputed_key("v1", "u1"), cache_key("v1", "u1"))
    assert store.get_entry("v1", "u1") is None  # gone from Redis: a miss, whatever was decoded before
    for user in ("u2", "u3", "u4"):  # bounded
        store.put("v1", user, first)
        store.get_entry("v1", user)
    assert len(store._decoded) == 2
    off = RedisCandidateStore.from_config(CacheConfig(redis_url=redis_url, decoded_max_entries=0), ServingMetrics())
    store.put("v1", "u5", first)
    assert off.get_entry("v1", "u5") is not off.get_entry("v1", "u5")
