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

import datetime as _dt
import json
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

SOURCES = ("cache", "precomputed", "online", "fallback", "error")
# Latencies of interest run from ~100 µs (cache hit) to ~100 ms (a slow online path).
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """The serving metrics, registered in their own CollectorRegistry (one per server)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.latency = Histogram("recsys_request_latency_seconds", "RPC latency by method and answer source",
                                 ["method", "source"], buckets=_BUCKETS, registry=r)
        self.requests = Counter("recsys_requests", "RPCs by method and status code", ["method", "code"], registry=r)
        self.cache_lookups = Counter("recsys_cache_lookups", "Candidate-cache lookups by result and answering layer",
                                     ["result", "layer"], registry=r)
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
        # Bound children: label lookups cost more than the increment itself on the hot path.
        self._lookup_child = {(res, layer): self.cache_lookups.labels(res, layer)
                              for res in ("hit", "precomputed", "miss") for layer in ("near", "store")}
        self._latency_child: dict[tuple[str, str], object] = {}
        self._requests_child: dict[tuple[str, str], object] = {}

    def observe_request(self, method: str, source: str, code: str, seconds: float) -> None:
        key = (method, source)
        child = self._latency_child.get(key)
        if child is None:
            child = self._latency_child.setdefault(key, self.latency.labels(method, source))
        child.observe(seconds)
        key = (method, code)
        child = self._requests_child.get(key)
        if child is None:
            child = self._requests_child.setdefault(key, self.requests.labels(method, code))
        child.inc()

    def cache_lookup(self, result: str, layer: str = "store") -> None:
        """Counts one lookup: result hit, precomputed or miss; layer near (per-process) or store."""
        self._lookup_child[result, layer].inc()

    def _hit_ratio(self) -> float:
        hits = lookups = 0.0
        for metric in self.cache_lookups.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    lookups += sample.value
                    hits += sample.value if sample.labels["result"] != "miss" else 0.0
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
