"""The per-request metrics (serving/metrics.py): per-thread accumulation exported by a collector must expose
what prometheus_client's Histogram and Counter exposed for the same observations."""
from __future__ import annotations

import math
import random
import threading
import urllib.request

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from protos.recsys.v1 import recommender_pb2 as pb
from serving.metrics import _BUCKETS, ServingMetrics
from tests.conftest import free_port

_NAMES = ("recsys_request_latency_seconds", "recsys_requests", "recsys_cache_lookups")


def _samples(text: str, created: bool = False) -> dict[tuple, float]:
    """(sample name, sorted labels) → value for the per-request series in an exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name not in _NAMES:
            continue
        for s in family.samples:
            if s.name.endswith("_created") != created:
                continue
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _observations(seed: int, n: int) -> list[tuple]:
    rng = random.Random(seed)
    bounds = list(_BUCKETS)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.7:
            # Exactly on a bound (le is inclusive), between bounds, far above the last one, or 0.
            seconds = rng.choice([rng.choice(bounds), rng.uniform(0, 3.0), rng.uniform(3.0, 100.0), 0.0])
            out.append(("observe", rng.choice(["Recommend", "SimilarItems", "LogEvents"]),
                        rng.choice(["cache", "online", "fallback", "error", "events"]),
                        rng.choice(["OK", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED"]), seconds))
        elif kind < 0.8:
            out.append(("count", rng.choice(["Recommend", "LogEvents"]), "UNAUTHENTICATED"))
        else:
            out.append(("lookup", rng.choice(["hit", "precomputed", "miss"]), rng.choice(["near", "store"])))
    return out


class _OldMetrics:
    """The per-request metrics as they were: prometheus_client objects updated on every call."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.latency = Histogram("recsys_request_latency_seconds", "RPC latency by method and answer source",
                                 ["method", "source"], buckets=_BUCKETS, registry=r)
        self.requests = Counter("recsys_requests", "RPCs by method and status code", ["method", "code"], registry=r)
        self.lookups = Counter("recsys_cache_lookups", "Candidate-cache lookups by result and answering layer",
                               ["result", "layer"], registry=r)
        for result in ("hit", "precomputed", "miss"):
            for layer in ("near", "store"):
                self.lookups.labels(result, layer)

    def apply(self, op: tuple) -> None:
        if op[0] == "observe":
            _, method, source, code, seconds = op
            self.latency.labels(method, source).observe(seconds)
            self.requests.labels(method, code).inc()
        elif op[0] == "count":
            self.requests.labels(op[1], op[2]).inc()
        else:
            self.lookups.labels(op[1], op[2]).inc()


def _apply(metrics: ServingMetrics, op: tuple) -> None:
    if op[0] == "observe":
        metrics.observe_request(*op[1:])
    elif op[0] == "count":
        metrics.count_request(*op[1:])
    else:
        metrics.cache_lookup(*op[1:])


def test_collector_exposes_what_the_prometheus_objects_exposed_under_concurrent_updates():
    old, new = _OldMetrics(), ServingMetrics()
    per_thread = [_observations(seed, 3000) for seed in range(6)]
    for ops in per_thread:
        for op in ops:
            old.apply(op)
    barrier = threading.Barrier(len(per_thread))

    def run(ops):
        barrier.wait()
        for op in ops:
            _apply(new, op)

    threads = [threading.Thread(target=run, args=(ops,)) for ops in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = _samples(generate_latest(old.registry).decode())
    got = _samples(generate_latest(new.registry).decode())
    assert set(got) == set(expected)
    for key, value in expected.items():
        if key[0].endswith("_sum"):  # summed in another order
            assert got[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert got[key] == value, key
    # The same _created series (one per label set), with plausible timestamps.
    assert set(_samples(generate_latest(new.registry).decode(), created=True)) == set(
        _samples(generate_latest(old.registry).decode(), created=True))
    hits = sum(1 for ops in per_thread for op in ops if op[0] == "lookup" and op[1] != "miss")
    lookups = sum(1 for ops in per_thread for op in ops if op[0] == "lookup")
    assert new.value("recsys_cache_hit_ratio") == pytest.approx(hits / lookups)
    assert new.value("recsys_requests_total", {"code": "UNAUTHENTICATED"}) == sum(
        1 for ops in per_thread for op in ops if op[0] == "count")


def _masked(text: str) -> list[str]:
    """The exposition's lines of the per-request series, _created values masked (they are timestamps)."""
    lines = [line for line in text.splitlines() if any(name in line for name in _NAMES)]
    return [line.rsplit(" ", 1)[0] + " <t>" if "_created" in line and not line.startswith("#") else line
            for line in lines]


def test_a_fresh_server_exposes_exactly_what_the_prometheus_objects_exposed():
    """Lookups at zero from the start; the request series declared but empty (same HELP/TYPE lines, same order)."""
    assert _masked(generate_latest(ServingMetrics().registry).decode()) == _masked(
        generate_latest(_OldMetrics().registry).decode())


def test_the_exposition_text_is_the_same_after_updates():
    old, new = _OldMetrics(), ServingMetrics()
    # Sums of values that are exact in binary, so the order of addition cannot change the printed sum.
    for op in _observations(3, 2000):
        if op[0] == "observe":
            op = (*op[:4], round(op[4] * 1024) / 1024)
        old.apply(op)
        _apply(new, op)
    got, expected = _masked(generate_latest(new.registry).decode()), _masked(generate_latest(old.registry).decode())
    assert sorted(got) == sorted(expected)
    # Same HELP/TYPE structure: each family's header lines in the same order.
    assert [line for line in got if line.startswith("#")] == [line for line in expected if line.startswith("#")]


def test_unknown_lookup_labels_are_refused_like_before():
    with pytest.raises(KeyError):
        ServingMetrics().cache_lookup("sometimes", "near")


@pytest.mark.integration
def test_a_real_servers_metrics_count_what_it_answered(start, redis_url, known_users):
    port = free_port()
    server, stub = start(redis_url, metrics_port=port)
    users = known_users[:12]
    sources: dict[int, int] = {}
    for _ in range(3):  # online, then cache hits
        for user in users:
            r = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=5), timeout=30)
            sources[r.source] = sources.get(r.source, 0) + 1
    stub.Recommend(pb.RecommendRequest(user_id="nobody-known", num_results=5), timeout=30)
    for _ in range(4):
        with pytest.raises(grpc.RpcError):
            stub.Recommend(pb.RecommendRequest(user_id="", num_results=5), timeout=30)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    got = _samples(body)

    def value(name: str, **labels) -> float:
        return sum(v for (n, ls), v in got.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))

    answered = len(users) * 3 + 1
    assert value("recsys_requests_total", method="Recommend", code="OK") == answered
    assert value("recsys_requests_total", method="Recommend", code="INVALID_ARGUMENT") == 4
    assert value("recsys_request_latency_seconds_count", method="Recommend", source="cache") == sources[pb.CACHE]
    assert value("recsys_request_latency_seconds_count", method="Recommend", source="online") == sources[pb.ONLINE]
    assert value("recsys_request_latency_seconds_count", method="Recommend", source="fallback") == 1
    assert value("recsys_request_latency_seconds_count", method="Recommend", source="error") == 4
    for source in ("cache", "online", "fallback", "error"):
        inf = value("recsys_request_latency_seconds_bucket", method="Recommend", source=source, le="+Inf")
        assert inf == value("recsys_request_latency_seconds_count", method="Recommend", source=source)
        buckets = [value("recsys_request_latency_seconds_bucket", method="Recommend", source=source,
                         le=str(b)) for b in _BUCKETS]
        assert buckets == sorted(buckets) and buckets[-1] <= inf
        assert 0 < value("recsys_request_latency_seconds_sum", method="Recommend", source=source) < math.inf
    assert value("recsys_cache_lookups_total", result="hit") == sources[pb.CACHE]
    # The unknown user's lookup misses too (with the event log in the cache's Redis it is looked up: a
    # user unknown to the model may have logged events), then answers FALLBACK.
    assert value("recsys_cache_lookups_total", result="miss") == sources[pb.ONLINE] + 1
    assert server.metrics.value("recsys_cache_hit_ratio") == pytest.approx(sources[pb.CACHE] / answered)
