"""Serving observability: Prometheus metrics (own registry per server) and JSON log lines.

Metric names (all prefixed `recsys_`):
  request_latency_seconds{method,source}  histogram; source is cache/precomputed/online/
                                          fallback for answers, "error" for failed RPCs
  requests_total{method,code}             one per RPC by gRPC status code
  cache_lookups_total{result,layer}       result hit / precomputed / miss; layer near (the
                                          per-process near cache) or store (Redis / LRU)
  cache_hit_ratio                         (hit + precomputed) / lookups since start
  fallbacks_total                         unknown users answered with the popularity fallback
  redis_faults_total{op,kind}             op get/set; kind error/timeout/circuit_open/corrupt
  online_computations_total               runs of retrieval + ranker (cache misses computed)
  singleflight_shared_total               misses answered by another request's computation
  model_info{version}                     1 for the loaded version
  drift_psi / drift_ks{group,quantity}, drift_reference_loaded{version}, window_requests,
  window_*_ratio                          live drift monitoring, computed at scrape time (serving/monitor.py)
  model_loads_total{result}, model_refused_info{version}, model_load_seconds   serving/hotswap.SwapMetrics
"""
from __future__ import annotations

import bisect
import datetime as _dt
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

SOURCES = ("cache", "precomputed", "online", "fallback", "error")
# Latencies of interest run from ~100 µs (cache hit) to ~100 ms (a slow online path).
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """The serving metrics, registered in their own CollectorRegistry (one per server).

    The per-request series (request_latency_seconds, requests_total, cache_lookups_total) are not
    prometheus_client Histogram/Counter objects: each handler thread adds to its own plain lists
    (`_RequestStats`, no lock, no per-call label lookup) and a collector sums the threads' lists
    when /metrics is scraped. The exposition (names, labels, bucket bounds, _created samples) is
    what those objects produced (tests/serving/test_metrics.py compares them).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._stats = _RequestStats()
        r.register(self._stats)
        self.fallbacks = Counter("recsys_fallbacks", "Unknown users answered with the popularity fallback",
                                 registry=r)
        self.redis_faults = Counter("recsys_redis_faults", "Redis operations that failed or were skipped",
                                    ["op", "kind"], registry=r)
        self.online_computations = Counter("recsys_online_computations",
                                           "Candidate sets computed online (retrieval + ranker runs)", registry=r)
        self.singleflight_shared = Counter("recsys_singleflight_shared",
                                           "Cache misses answered by a concurrent request's computation", registry=r)
        self.model_info = Gauge("recsys_model_info", "1 for the loaded model version", ["version"], registry=r)
        Gauge("recsys_cache_hit_ratio", "Cache hits (incl. precomputed) / lookups since start",
              registry=r).set_function(self._hit_ratio)
        # The request path's entry points, bound once (a delegating method is measurable on a cache hit):
        # observe_request(method, source, code, seconds): one finished RPC, latency by (method, source) and
        #   a count by (method, code);
        # count_request(method, code): one RPC refused before any servicer ran (token auth), no latency;
        # cache_lookup(result, layer="store"): result hit / precomputed / miss, layer near or store.
        self.observe_request: Callable[[str, str, str, float], None] = self._stats.observe
        self.count_request: Callable[[str, str], None] = self._stats.count
        self.cache_lookup: Callable[..., None] = self._stats.lookup

    def _hit_ratio(self) -> float:
        counts = self._stats.lookups()
        lookups = sum(counts.values())
        hits = sum(n for (result, _), n in counts.items() if result != "miss")
        return hits / lookups if lookups else 0.0

    def redis_fault(self, op: str, kind: str) -> None:
        self.redis_faults.labels(op, kind).inc()

    def set_model_version(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples `name` whose labels include `labels` (0 when none), e.g.
        value("recsys_cache_lookups_total", {"result": "hit"}) over both layers."""
        labels = labels or {}
        return sum(sample.value for metric in self.registry.collect() for sample in metric.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def serve_http(self, port: int, addr: str = "0.0.0.0"):
        """Starts the /metrics HTTP endpoint in a daemon thread; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)


_LOOKUP_KEYS = tuple((result, layer) for result in ("hit", "precomputed", "miss") for layer in ("near", "store"))
_BOUNDS = (*_BUCKETS, math.inf)
_LE = tuple(floatToGoString(b) for b in _BOUNDS)
# prometheus_client leaves out the _created series when PROMETHEUS_DISABLE_CREATED_SERIES is set; so does this.
_USE_CREATED = getattr(_prometheus_metrics, "_use_created", True)


class _RequestStats:
    """request_latency_seconds, requests_total and cache_lookups_total, accumulated per thread.

    Each thread that records gets its own dict of cells (created under a lock, once per thread and
    label combination); after that a record is a dict lookup, a C bisect and two list increments by
    the owning thread only, so no lock is taken and no increment is lost. A latency cell,
    keyed (method, source, code), holds one count per bucket then the sum of seconds; a count-only
    cell (method, code) holds [count]; a lookup cell (result, layer) holds [count]. `collect`
    (scrape time) copies every thread's cells under the lock and sums them.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._shards: list[tuple[dict, dict, dict]] = []  # per thread: latency, count-only, lookup cells
        now = time.time()
        self._created: dict[tuple, float] = {("lookup", *key): now for key in _LOOKUP_KEYS}

    def _shard(self) -> tuple[dict, dict, dict]:
        shard: tuple[dict, dict, dict] = ({}, {}, {})
        with self._lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def _cell(self, cells: dict, key: tuple, size: int, created: tuple[tuple, ...]) -> list:
        with self._lock:
            for c in created:
                self._created.setdefault(c, time.time())
            return cells.setdefault(key, [0] * size)

    def observe(self, method: str, source: str, code: str, seconds: float) -> None:
        try:
            cells = self._local.shard[0]
        except AttributeError:
            cells = self._shard()[0]
        key = (method, source, code)
        cell = cells.get(key)
        if cell is None:
            cell = self._cell(cells, key, len(_BOUNDS) + 1, (("latency", method, source), ("requests", method, code)))
        cell[bisect.bisect_left(_BOUNDS, seconds)] += 1
        cell[-1] += seconds

    def count(self, method: str, code: str) -> None:
        try:
            cells = self._local.shard[1]
        except AttributeError:
            cells = self._shard()[1]
        key = (method, code)
        cell = cells.get(key)
        if cell is None:
            cell = self._cell(cells, key, 1, (("requests", method, code),))
        cell[0] += 1

    def lookup(self, result: str, layer: str = "store") -> None:
        try:
            cells = self._local.shard[2]
        except AttributeError:
            cells = self._shard()[2]
        cell = cells.get((result, layer))
        if cell is None:
            if (result, layer) not in _LOOKUP_KEYS:
                raise KeyError((result, layer))
            cell = self._cell(cells, (result, layer), 1, ())
        cell[0] += 1

    def _snapshot(self) -> tuple[dict, dict, dict, dict]:
        """(latency (method, source) → [bucket counts..., sum], requests (method, code) → n, lookups, created)."""
        latency: dict[tuple[str, str], list] = {}
        requests: dict[tuple[str, str], float] = {}
        lookups: dict[tuple[str, str], float] = dict.fromkeys(_LOOKUP_KEYS, 0.0)
        with self._lock:  # cells are only created under it, so no dict changes size while copied
            copies = [([(k, list(c)) for k, c in lat.items()], [(k, c[0]) for k, c in cnt.items()],
                       [(k, c[0]) for k, c in look.items()]) for lat, cnt, look in self._shards]
            created = dict(self._created)
        for lat, cnt, look in copies:
            for (method, source, code), cell in lat:
                total = latency.setdefault((method, source), [0] * len(cell))
                for i, v in enumerate(cell):
                    total[i] += v
                requests[method, code] = requests.get((method, code), 0.0) + sum(cell[:-1])
            for key, n in cnt:
                requests[key] = requests.get(key, 0.0) + n
            for key, n in look:
                lookups[key] += n
        return latency, requests, lookups, created

    def lookups(self) -> dict[tuple[str, str], float]:
        return self._snapshot()[2]

    def describe(self) -> list:
        return [HistogramMetricFamily(_LATENCY, _LATENCY_HELP, labels=["method", "source"]),
                CounterMetricFamily(_REQUESTS, _REQUESTS_HELP, labels=["method", "code"]),
                CounterMetricFamily(_LOOKUPS, _LOOKUPS_HELP, labels=["result", "layer"])]

    def collect(self) -> list:
        latency, requests, lookups, created = self._snapshot()
        hist = HistogramMetricFamily(_LATENCY, _LATENCY_HELP, labels=["method", "source"])
        for (method, source), cell in latency.items():
            cumulative = list(itertools.accumulate(float(v) for v in cell[:-1]))
            hist.add_metric([method, source], list(zip(_LE, cumulative)), float(cell[-1]))
            if _USE_CREATED:
                hist.samples.append(Sample(f"{_LATENCY}_created", {"method": method, "source": source},
                                           created[("latency", method, source)]))
        req = CounterMetricFamily(_REQUESTS, _REQUESTS_HELP, labels=["method", "code"])
        for (method, code), n in requests.items():
            req.add_metric([method, code], float(n),
                           created=created[("requests", method, code)] if _USE_CREATED else None)
        look = CounterMetricFamily(_LOOKUPS, _LOOKUPS_HELP, labels=["result", "layer"])
        for (result, layer), n in lookups.items():
            look.add_metric([result, layer], float(n),
                            created=created[("lookup", result, layer)] if _USE_CREATED else None)
        return [hist, req, look]


_LATENCY, _LATENCY_HELP = "recsys_request_latency_seconds", "RPC latency by method and answer source"
_REQUESTS, _REQUESTS_HELP = "recsys_requests", "RPCs by method and status code"
_LOOKUPS, _LOOKUPS_HELP = "recsys_cache_lookups", "Candidate-cache lookups by result and answering layer"


_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
