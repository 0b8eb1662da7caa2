"""The gRPC Recommender server: servicer, health, reflection, metrics and graceful shutdown.

Server model (`aio`, chosen by measurement: bench/serving.py, bench/RESULTS.md issue 14): a
`grpc.aio` server whose event loop answers near-cache hits itself and hands everything else
(TensorFlow and FAISS calls that release the GIL, blocking Redis I/O) to a pool of `workers`
threads (serving/aio.py); `--no-aio` is the synchronous gRPC server, every RPC in a pool thread.
Above `max_concurrent_rpcs` gRPC answers RESOURCE_EXHAUSTED instead of queueing.

Per Recommend: validate → unknown user? FALLBACK (the catalogue's popularity and quality
priors blended with the request's weights, RecommendPipeline.popular_items) → cache (Redis or in-process)
→ on a miss compute once per user (single-flight): user tower → FAISS top-N without the
user's train items → ranker (both heads) → store → blend with the request's weights →
drop excluded items → top-k. Concurrent misses share those model calls (serving/batcher.py,
`batch_*` fields; answers identical to computing each user alone).

With an event log (feedback/, `events`): LogEvents appends validated batches atomically; a
user's engagement counter versions their cache key and their recent engagements are merged
into the history of the computation; unknown users with engagements are personalised (EVENTS);
every response gets a request_id and is queued as impressions (ARCHITECTURE.md, "Streaming features").
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import Histogram

from core.errors import ArtifactError, InvalidRequestError, ModelNotReadyError, RecsysError, UnknownItemError
from feedback import (
    Event,
    EventLog,
    EventLogConfig,
    EventLogUnavailableError,
    InvalidEventError,
    ServedListLogger,
    UserVersions,
    state_key,
    validate_events,
)
from pipeline import CandidateSet
from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from ranking.blender import BlendWeights, rank_by_blend
from serving.aio import AioRecommenderServicer, EventLoopThread, LoopRedis, finite_time_left
from serving.batcher import CandidateBatcher
from serving.cache import CACHE, ONLINE, PRECOMPUTED, CacheConfig, CandidateCache
from serving.experiments import Experiments, ExperimentsConfig
from serving.hotswap import HotSwapConfig, RegistryWatcher, load_into
from serving.metrics import ServingMetrics
from serving.monitor import LiveMonitor
from serving.security import SecurityConfig, StrictDecoding, add_port, server_interceptors, server_options
from serving.validation import RecommendQuery, RequestLimits, validate_recommend, validate_similar
from serving.wire import string_field

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
_REFLECTED = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
FALLBACK = "fallback"
EVENTS = "events"  # an unknown user personalised from their logged engagements
_SOURCE_ENUM = {CACHE: pb.CACHE, PRECOMPUTED: pb.PRECOMPUTED, ONLINE: pb.ONLINE, FALLBACK: pb.FALLBACK,
                EVENTS: pb.EVENTS}
_EVENT_TYPE = {pb.IMPRESSION: "impression", pb.ENGAGEMENT: "engagement", pb.RATING: "rating"}
# The per-request field appended to a memoized response's bytes (serving/wire.py).
_REQUEST_ID_FIELD = pb.RecommendResponse.DESCRIPTOR.fields_by_name["request_id"].number
_ARM_FIELD = pb.RecommendResponse.DESCRIPTOR.fields_by_name["arm"].number


class DeadlineExceededError(RecsysError):
    """The request's deadline passed before its answer was ready."""


class EventLogDisabledError(RecsysError):
    """LogEvents on a server without an event log (no Redis configured)."""


class _NoStreamedState(Exception):
    """Inside a computation: the user's streamed history cannot be used (Redis down, or an unknown
    user's events name no item the model knows); the request is answered without it."""


_STATUS = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownItemError: grpc.StatusCode.NOT_FOUND,
    ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    InvalidEventError: grpc.StatusCode.INVALID_ARGUMENT,
    EventLogUnavailableError: grpc.StatusCode.UNAVAILABLE,
    EventLogDisabledError: grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server listens and answers; cache and request limits have their own configs."""

    host: str = "0.0.0.0"
    port: int = 50051                  # 0 = any free port (printed at start)
    workers: int = 8                   # handler threads
    max_concurrent_rpcs: int = 64      # above this, RESOURCE_EXHAUSTED instead of queueing
    metrics_port: int = 9464           # Prometheus /metrics; 0 = off
    grace_s: float = 5.0               # in-flight RPCs get this long to finish on SIGTERM
    engagement_weight: float = -1.0    # default blend weight; < 0 = the version's configured default
    quality_weight: float = -1.0       # default blend weight; < 0 = the version's configured default
    min_deadline_s: float = 0.0        # refuse to start an online computation with less time left
    # Server processes on the one port (SO_REUSEPORT), each with its own model copy: the
    # measured way past one Python process's GIL (bench/RESULTS.md, serving). `recsys serve` only.
    processes: int = 1
    # Serve on a grpc.aio event loop (serving/aio.py): near-cache hits are answered on the loop, all other work in
    # the `workers` thread pool. False = the synchronous gRPC server (every RPC handed to a pool thread).
    aio: bool = True
    # With --aio and a Redis cache: a plain request's cache read is awaited on the loop (serving/aio.py LoopRedis)
    # and a hit answered there; false = Redis hits are read in the thread pool.
    aio_redis_reads: bool = True
    # Micro-batching of concurrent cache misses (serving/batcher.py): up to this many users share
    # one user-tower call, FAISS search and ranker call; 0 = off (each miss computes alone).
    batch_max_users: int = 64
    batch_max_wait_s: float = 0.002    # the first request of a batch waits at most this for batch-mates
    batch_workers: int = 2             # batches computed at once (threads): one computes while the next forms
    # TensorFlow's thread pools in this process (0 = TF's default: one thread per core each).
    # Measured on 2 cores (bench/RESULTS.md, issue 14): the defaults (= 2/2 there) served ~30% more
    # misses than 1/1 with two batch workers; with --processes N, give each process cores/N.
    tf_intra_op_threads: int = 0
    tf_inter_op_threads: int = 0
    # FAISS's OpenMP threads in this process (0 = FAISS's default, one per core). On a busy host
    # OpenMP's spinning threads made a 32-query search 4.5x slower than one thread (issue 14).
    faiss_threads: int = 1
    # Python's GIL switch interval in this process (0 = Python's default, 5 ms). A handler thread back
    # from Redis waits up to this long for the GIL while other handlers run Python (issue 14).
    gil_switch_interval_s: float = 0.0
    # Live drift monitoring (serving/monitor.py): the last monitor_window answers (at most
    # monitor_max_age_s old) compared with the version's reference profile when /metrics is scraped.
    monitor: bool = True
    monitor_window: int = 2000
    monitor_max_age_s: float = 600.0
    monitor_min_samples: int = 200     # requests before a drift gauge is computed (NaN before)
    monitor_interval_s: float = 5.0    # recompute at most this often; scrapes in between get the last values

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535 or not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--port/--metrics-port must be in [0, 65535], got {self.port}/{self.metrics_port}")
        if self.workers < 1 or self.max_concurrent_rpcs < 1:
            raise ValueError(f"--workers and --max-concurrent-rpcs must be >= 1, got {self.workers}, "
                             f"{self.max_concurrent_rpcs}")
        if self.grace_s < 0:
            raise ValueError(f"--grace-s must be >= 0, got {self.grace_s}")
        if self.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {self.processes}")
        if self.batch_max_users < 0 or self.batch_max_wait_s < 0 or self.batch_workers < 1:
            raise ValueError(f"--batch-max-users and --batch-max-wait-s must be >= 0 and --batch-workers >= 1, got "
                             f"{self.batch_max_users}, {self.batch_max_wait_s}, {self.batch_workers}")
        if self.gil_switch_interval_s < 0:
            raise ValueError(f"--gil-switch-interval-s must be >= 0 (0 = Python's default), got "
                             f"{self.gil_switch_interval_s}")
        if self.tf_intra_op_threads < 0 or self.tf_inter_op_threads < 0 or self.faiss_threads < 0:
            raise ValueError(f"--tf-intra-op-threads, --tf-inter-op-threads and --faiss-threads must be >= 0 (0 = the "
                             f"library's default), got {self.tf_intra_op_threads}, {self.tf_inter_op_threads}, "
                             f"{self.faiss_threads}")
        if (self.monitor_window < 1 or self.monitor_min_samples < 1 or self.monitor_max_age_s <= 0
                or self.monitor_interval_s < 0):
            raise ValueError(f"--monitor-window and --monitor-min-samples must be >= 1, --monitor-max-age-s > 0 and "
                             f"--monitor-interval-s >= 0, got {self.monitor_window}, {self.monitor_min_samples}, "
                             f"{self.monitor_max_age_s}, {self.monitor_interval_s}")
        if self.processes > 1 and self.port == 0:
            raise ValueError("--processes > 1 needs a fixed --port: with --port 0 every process would listen on "
                             "a different free port")


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Recommend and SimilarItems over a loaded RecommendPipeline and a CandidateCache.

    The model is swapped atomically (`set_model`): a request holds the reference it
    started with, so swapping versions drops no request, and cache keys carry the version.
    """

    def __init__(self, cache: CandidateCache, metrics: ServingMetrics, config: ServerConfig = ServerConfig(),
                 limits: RequestLimits = RequestLimits(), events: EventLog | None = None,
                 circuit_open_s: float = 1.0, strict_freshness: bool = False) -> None:
        self.cache = cache
        self.metrics = metrics
        self.config = config
        self.limits = limits
        # The event log (feedback/): LogEvents, streamed history, served-list impressions. None = off.
        self.events = events
        # Strict freshness (the event log's counters live in the cache's Redis): every cache read carries the
        # user's counter (serving/cache.py), so no process-local copy of counters (UserVersions) is needed.
        self.counter_key: Callable[[str], str] | None = None
        if events is not None and strict_freshness and cache.counts_engagements:
            self.counter_key = functools.partial(state_key, events.config.stream_key)
            cache.track_counters(state_key(events.config.stream_key, "")[:-2])  # near hits: no read per hit
        if events is not None and self.counter_key is None and getattr(events, "cluster", False):
            raise ValueError("an event log on a Redis Cluster must be in the cache's Redis: give --redis-url and leave "
                             "--events-redis-url empty (its counters are read with the cached entries)")
        self.versions = (UserVersions(events, events.config.versions_ttl_s, events.config.versions_max_entries).start()
                         if events is not None and self.counter_key is None else None)
        self.served = ServedListLogger(events) if events is not None and events.config.log_served else None
        self._events_down_until = 0.0  # streamed state is skipped (batch features only) until then
        self._circuit_open_s = circuit_open_s
        self._request_ids = itertools.count(1)
        self._request_prefix = os.urandom(6).hex()  # unique per process: request ids never collide
        if events is not None:
            self._register_event_metrics()
        self._serving: tuple[Any, BlendWeights] | None = None  # (model, its default weights), swapped as one
        self.experiments: Experiments | None = None  # arms, shadow, canary (serving/experiments.py); None = off
        self.monitor = LiveMonitor(metrics.registry, config.monitor_window, config.monitor_max_age_s,
                                   config.monitor_min_samples, config.monitor_interval_s) if config.monitor else None
        self.batcher: CandidateBatcher | None = None
        if config.batch_max_users > 0:
            batch_users = Histogram("recsys_batch_users", "Users per batched candidates() call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=metrics.registry)
            batch_seconds = Histogram("recsys_batch_seconds", "Seconds per batched candidates() call",
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                                      registry=metrics.registry)

            def on_batch(users: int, seconds: float) -> None:
                batch_users.observe(users)
                batch_seconds.observe(seconds)

            self.batcher = CandidateBatcher(config.batch_max_users, config.batch_max_wait_s, config.batch_workers,
                                            on_batch=on_batch)

    def close(self) -> None:
        """Stops the batch worker (after the batches already queued) and the event-log threads."""
        if self.batcher is not None:
            self.batcher.close()
        if self.experiments is not None:
            self.experiments.close()
        if self.served is not None:
            self.served.close()
        if self.versions is not None:
            self.versions.close()
        if self.events is not None:
            self.events.close()

    def _register_event_metrics(self) -> None:
        from prometheus_client import Counter, Gauge

        r = self.metrics.registry
        self.events_logged = Counter("recsys_events", "LogEvents events by result (accepted, duplicate)",
                                     ["result"], registry=r)
        self.events_faults = Counter("recsys_events_redis_faults",
                                     "Event-log Redis failures by operation (append: UNAVAILABLE; read: the "
                                     "request was served from batch features)", ["op"], registry=r)
        served = self.served
        if served is not None:
            g = Gauge("recsys_served_lists", "Served lists logged as impressions, by result (written, dropped "
                      "when the queue was full, failed when Redis refused them)", ["result"], registry=r)
            g.labels("written").set_function(lambda: served.written)
            g.labels("dropped").set_function(lambda: served.dropped)
            g.labels("failed").set_function(lambda: served.failed)

    # -- model lifecycle ----------------------------------------------------------------
    @property
    def model(self) -> Any:
        serving = self._serving
        if serving is None:
            raise ModelNotReadyError("the model is still loading; retry shortly (see the health status)")
        return serving[0]

    @property
    def loaded_model(self) -> Any | None:
        """The served model, or None before the first load (no error)."""
        serving = self._serving
        return None if serving is None else serving[0]

    def set_model(self, model: Any) -> None:
        """Serves `model` (a RecommendPipeline) from the next request on."""
        if self.batcher is not None and hasattr(type(model), "batching_plan"):
            model.batching_plan()  # the one-time check of how candidates_each may share calls, before serving
        weights = model.default_weights
        e, q = self.config.engagement_weight, self.config.quality_weight
        if e >= 0 or q >= 0:
            weights = weights.with_weights(e if e >= 0 else weights.engagement, q if q >= 0 else weights.quality)
        if self.monitor is not None:
            self.monitor.set_model(model)
        self._serving = (model, weights)  # one assignment: a request never mixes two versions' settings
        self.metrics.set_model_version(model.model_version)
        log.info("serving model version %s", model.model_version,
                 extra={"event": "model_loaded", "model_version": model.model_version})

    # -- RPCs ---------------------------------------------------------------------------
    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> bytes:
        """The serialized RecommendResponse (sent as it is: serving.security.strict_handler)."""
        return self._handle("Recommend", self._recommend, request, context)

    def SimilarItems(self, request: pb.SimilarItemsRequest,
                     context: grpc.ServicerContext) -> pb.SimilarItemsResponse:
        return self._handle("SimilarItems", self._similar_items, request, context)

    def LogEvents(self, request: pb.LogEventsRequest, context: grpc.ServicerContext) -> pb.LogEventsResponse:
        return self._handle("LogEvents", self._log_events, request, context)

    def _handle(self, method: str, fn: Callable, request, context: grpc.ServicerContext):
        start = perf_counter()
        response, source, status, message = self.call(method, fn, request, context)
        self.observe(method, source, status, start, context.peer)
        if status is not None:
            context.abort(status, message)
        return response

    def call(self, method: str, fn: Callable, request, context: Any) -> tuple[Any, str, grpc.StatusCode | None, str]:
        """(response, source, status, message): `fn(request, context)` with its errors mapped to a gRPC status
        (None = OK) and a message for the caller; never raises. `context` needs only `time_remaining()` and
        `is_active()` (serving/aio.py runs this in its thread pool with a stand-in)."""
        try:
            response, source = fn(request, context)
            return response, source, None, ""
        except RecsysError as e:
            status = _STATUS.get(type(e), grpc.StatusCode.INTERNAL)
            if status is grpc.StatusCode.INTERNAL:
                log.error("%s failed: %s", method, e, extra={"event": "rpc_error", "method": method})
            return None, "error", status, str(e)
        except Exception:
            log.exception("%s raised an unexpected error", method, extra={"event": "rpc_error", "method": method})
            return None, "error", grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"

    def observe(self, method: str, source: str, status: grpc.StatusCode | None, start: float,
                peer: Callable[[], str]) -> None:
        """Request metrics (and the DEBUG access log, naming `peer()`) of one RPC that started at perf_counter()
        `start`."""
        seconds = perf_counter() - start
        code = "OK" if status is None else status.name
        self.metrics.observe_request(method, source, code, seconds)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s %s", method, code, extra={
                "event": "rpc", "method": method, "code": code, "source": source,
                "latency_ms": round(seconds * 1e3, 3), "peer": peer()})

    def recommend_inline(self, request: pb.RecommendRequest, time_remaining: float | None) -> tuple[bytes, str] | None:
        """(wire, source) of a Recommend answerable without I/O, a model or a lock wait: a plain repeat whose
        near-cache entry the invalidation messages vouch for (`_repeat` with read=False); None = call `_recommend`
        off the event loop. The answer, its logging and its metrics are `_recommend`'s (serving/aio.py)."""
        repeat = self._repeat(request, finite_time_left(time_remaining), read=False)
        return None if repeat is None else (self._reply_plain(request, repeat), repeat[1])

    def recommend_read(self, request: pb.RecommendRequest, time_remaining: float | None
                       ) -> tuple[tuple[str, ...], tuple] | None:
        """(keys, plan): the one Redis MGET that answers a plain request of a known user when the cache holds a
        valid entry for them, for a caller that reads it itself (serving/aio.py: on its event loop), then calls
        `recommend_from_read(request, plan, reply)`; None = call `_recommend` instead."""
        time_left = finite_time_left(time_remaining)
        serving = self._plain(request, time_left)
        if serving is None:
            return None
        model, weights = serving
        user = request.user_id
        if not model.is_known_user(user):
            return None  # streamed events or the fallback: the full path
        try:
            query = validate_recommend(request, self.limits)
        except RecsysError:
            return None  # the full path refuses it with its status
        counter_key = self.counter_key(user) if self.counter_key is not None else None
        read = self.cache.remote_read(model.model_version, user, counter_key)
        if read is None:
            return None
        keys, since = read
        return keys, (model, weights, query, counter_key, since)

    def recommend_from_read(self, request: pb.RecommendRequest, plan: tuple, reply: list[bytes | None]
                            ) -> tuple[bytes, str] | None:
        """(wire, source) answered from `recommend_read`'s MGET reply as `_recommend` answers it from the cache
        (its logging, memo and metrics); None = not a hit: call `_recommend` (it reads again and computes once)."""
        model, weights, query, counter_key, since = plan
        entry = self.cache.remote_hit(model.model_version, query.user_id, counter_key, reply, since)
        if entry is None:
            return None
        answer = self._answer_entry(model, weights, query, entry, entry.source, True)
        return self._reply_plain(request, answer), answer[1]

    def _reply_plain(self, request: pb.RecommendRequest,
                     answer: tuple[pb.RecommendResponse, str, BlendWeights, bytes | None, list[str]]) -> bytes:
        """The bytes of a plain request's answer (`_answer`'s tuple) under a new request id, its served list queued
        and the monitor told: `_recommend`'s tail without its deadline check (the loop's callers take µs)."""
        response, source, weights, wire, item_ids = answer
        wire = _stamped(response, wire, self._log_served(request.user_id, response, wire, source, weights, item_ids,
                                                         ""), "")
        if self.monitor is not None:
            self.monitor.record(request.user_id, request.num_results, response, source)
        return wire

    def _recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> tuple[bytes, str]:
        time_left = _time_left(context)
        repeat = self._repeat(request, time_left)
        if repeat is None:
            query = validate_recommend(request, self.limits)
            response, wire, request_id, arm, source = self._answer_logged(query, time_left, request.force_arm)
        else:
            response, source, weights, wire, item_ids = repeat
            request_id, arm = self._log_served(request.user_id, response, wire, source, weights, item_ids, ""), ""
        wire = _stamped(response, wire, request_id, arm)
        if not context.is_active():
            raise DeadlineExceededError("the request was cancelled or its deadline passed")
        if self.monitor is not None:  # the monitor reads items and scores only, never the request id
            self.monitor.record(request.user_id, request.num_results, response, source)
        return wire, source

    def _repeat(self, request: pb.RecommendRequest, time_left: float | None, read: bool = True
                ) -> tuple[pb.RecommendResponse, str, BlendWeights, bytes, list[str]] | None:
        """A plain request (user and k only) whose answer is already memoized on the user's valid near-cache
        entry: that answer, as `_answer` returns it, without validating, routing or blending again; None = the
        full path.

        Exactly the full path's answer: the entry is validated as get_or_compute validates it
        (CandidateCache.near_hit); an entry exists only for a user id a request validated, and a memo only for
        a k it validated; the blend is the version's default (no weights in the request). Requests the full path
        treats differently never come here: any other field set, an experiment running, per-version cache keys
        (the event log in another Redis), too little time left (the full path raises).
        """
        serving = self._plain(request, time_left)
        if serving is None:
            return None
        model, weights = serving
        user = request.user_id
        entry = self.cache.near_hit(model.model_version, user,
                                    self.counter_key(user) if self.counter_key is not None else None, read)
        if entry is None:
            return None
        answer = _memoized(entry, weights, request.num_results, entry.source if model.is_known_user(user) else EVENTS)
        if answer is not None:
            self.cache.count_local_hit(entry)
        return answer

    def _plain(self, request: pb.RecommendRequest, time_left: float | None) -> tuple[Any, BlendWeights] | None:
        """(model, default weights) when `request` is plain — user and k only, answered by the served model's
        default blend through the cache without experiments or per-version keys, with time left — else None."""
        serving = self._serving
        if (serving is None or self.versions is not None or request.HasField("weights") or request.exclude_item_ids
                or request.explain or request.force_arm or request.context
                or (self.experiments is not None and self.experiments.running)
                or (time_left is not None and time_left <= self.config.min_deadline_s)):
            return None
        return serving

    def answer(self, query: RecommendQuery, time_left: float | None = None,
               force_arm: str = "") -> tuple[pb.RecommendResponse, str]:
        """The whole Recommend computation for a validated query, without gRPC.

        Args:
          query: a validated request (serving.validation.validate_recommend).
          time_left: seconds until the caller's deadline; None = no deadline.
          force_arm: the experiment arm the request asks for ("" = the user's own; serving/experiments.py).

        Returns:
          (response, source) with source one of cache, precomputed, online, fallback, events. The
          response carries a new request_id, and the served list is queued for the event log.
        """
        response, wire, request_id, arm, source = self._answer_logged(query, time_left, force_arm)
        if wire is not None:  # a memoized message is shared between requests: stamp a copy
            stamped = pb.RecommendResponse()
            stamped.CopyFrom(response)
            stamped.request_id = request_id
            response = stamped
            if arm:
                stamped.arm = arm
            response = stamped
        return response, source

    def _answer_logged(self, query: RecommendQuery, time_left: float | None, force_arm: str = ""
                       ) -> tuple[pb.RecommendResponse, bytes | None, str, str, str]:
        """(response, wire, request_id, arm, source): the answer under a new request id, its served list queued.

        `wire` None: `response` is this request's own message, request_id and arm set. Otherwise `response`
        is a memoized message shared between requests (never mutated; its request_id and arm unset) and
        `wire` its serialized bytes.
        """
        serving = self._serving
        if serving is None:
            raise ModelNotReadyError("the model is still loading; retry shortly (see the health status)")
        experiments, arm = self.experiments, ""
        if experiments is not None and (experiments.running or force_arm):  # the arm picks model and blend
            serving = experiments.route(query.user_id, force_arm, *serving)
            arm = serving[2]
            start = time.perf_counter()
            try:
                response, source, weights, wire, item_ids = self._answer(query, time_left, serving)
            except Exception:
                experiments.after(arm, query.user_id, query.exclude, serving[1], None, time.perf_counter() - start)
                raise
            experiments.after(arm, query.user_id, query.exclude, weights, item_ids, time.perf_counter() - start)
        else:
            response, source, weights, wire, item_ids = self._answer(query, time_left, serving)
        return response, wire, self._log_served(query.user_id, response, wire, source, weights, item_ids, arm), arm, source

    def _log_served(self, user_id: str, response: pb.RecommendResponse, wire: bytes | None, source: str,
                    weights: BlendWeights, item_ids: list[str], arm: str) -> str:
        """A new request id for this answer (set on `response` unless it is memoized: `wire` given), and its served
        list queued for the event log."""
        request_id = f"{self._request_prefix}-{next(self._request_ids):x}"
        if wire is None:
            response.request_id = request_id
            if arm:
                response.arm = arm  # per request like request_id: never part of a memoized (shared) message
        if self.served is not None:
            self.served.log(request_id, user_id, item_ids, response.model_version, source, weights, arm)
        return request_id

    def _user_version(self, user_id: str) -> int:
        """The user's engagement counter (0 = none, or the event log is off or unreachable)."""
        if self.versions is None or (self._events_down_until and time.monotonic() < self._events_down_until):
            return 0
        try:
            version = self.versions.get(user_id)
        except EventLogUnavailableError as e:
            self._events_fault("read", e)
            return 0
        self._events_down_until = 0.0
        return version

    def _events_fault(self, op: str, e: Exception) -> None:
        if not self._events_down_until or time.monotonic() >= self._events_down_until:
            log.warning("event log %s failed (%s); serving from batch features for %.1fs", op, e,
                        self._circuit_open_s, extra={"event": "events_fault", "op": op})
        self._events_down_until = time.monotonic() + self._circuit_open_s
        self.events_faults.labels(op).inc()

    def _answer(self, query: RecommendQuery, time_left: float | None, serving: tuple
                ) -> tuple[pb.RecommendResponse, str, BlendWeights, bytes | None, list[str]]:
        """(response, source, weights, wire, item ids): `wire` = the serialized bytes of a memoized message
        other requests also get (None: the message is this request's own); the item ids are the
        response's, kept beside it (reading them back from the message costs more than the rest of a
        cache hit). `serving` = (model, its default weights[, arm])."""
        model, defaults = serving[0], serving[1]
        weights = defaults if query.weights is None else query.weights.resolve(defaults)
        user = query.user_id
        known = model.is_known_user(user)
        # A user's engagement counter versions their cached candidates: a new engagement moves the
        # user to a new cache key (ARCHITECTURE.md, "Streaming features").
        if self.counter_key is not None:  # the counter is read with the cached entry, in one round trip
            if known and time_left is not None and time_left <= self.config.min_deadline_s:
                raise DeadlineExceededError("the deadline passed before the request could be served")
            try:
                return self._answer_candidates(model, weights, query, time_left, known, -1)
            except _NoStreamedState:
                if known:  # Redis failed while reading the history: batch features only
                    return self._answer_candidates(model, weights, query, time_left, known, 0)
                self.metrics.fallbacks.inc()
                return self._fallback(model, weights, query)
        version = self._user_version(user)
        if not known and version == 0:
            self.metrics.fallbacks.inc()
            return self._fallback(model, weights, query)
        if time_left is not None and time_left <= self.config.min_deadline_s:
            raise DeadlineExceededError("the deadline passed before the request could be served")
        try:
            return self._answer_candidates(model, weights, query, time_left, known, version)
        except _NoStreamedState:
            if known:  # Redis failed while reading the history: batch features only
                return self._answer_candidates(model, weights, query, time_left, known, 0)
            self.metrics.fallbacks.inc()
            return self._fallback(model, weights, query)

    def _answer_candidates(self, model: Any, weights: BlendWeights, query: RecommendQuery, time_left: float | None,
                           known: bool, version: int
                           ) -> tuple[pb.RecommendResponse, str, BlendWeights, bytes | None, list[str]]:
        """`version` = the user's engagement counter, or -1: read it with the cached entry (strict freshness)."""
        user = query.user_id
        # Models without candidates_each (test doubles wrapping a pipeline) compute alone, as unbatched.
        batcher = self.batcher if hasattr(type(model), "candidates_each") else None

        def compute(counter: int = version) -> CandidateSet:
            recent: list[str] = []
            if not known and counter == 0:
                raise _NoStreamedState()  # an unknown user without streamed engagements: the fallback
            if version < 0 and not known and time_left is not None and time_left <= self.config.min_deadline_s:
                raise DeadlineExceededError("the deadline passed before the request could be served")
            if counter:
                try:
                    recent = self.events.recent(user)
                except EventLogUnavailableError as e:
                    self._events_fault("read", e)
                    raise _NoStreamedState() from e
                if not known and not model.personalisable(user, recent):
                    raise _NoStreamedState()
            if batcher is not None:
                return batcher.compute(model, user, time_left, recent=recent)
            return (model.candidates([user], recent=[recent]) if recent else model.candidates([user]))[0]

        cache_user = user if version <= 0 else f"{user}{_VERSION_SEP}{version}"
        try:
            entry, source = self.cache.get_or_compute(model.model_version, cache_user, compute, timeout=time_left,
                                                      counter_key=self.counter_key(user) if version < 0 else None)
        except concurrent.futures.TimeoutError as e:
            raise DeadlineExceededError("the deadline passed while this user's candidates were computed") from e
        return self._answer_entry(model, weights, query, entry, source, known)

    def _answer_entry(self, model: Any, weights: BlendWeights, query: RecommendQuery, entry, source: str, known: bool
                      ) -> tuple[pb.RecommendResponse, str, BlendWeights, bytes | None, list[str]]:
        """`_answer`'s tuple from the user's cache entry and where it came from (`source`)."""
        shown = source if known else EVENTS
        # With nothing excluded the answer depends only on (entry, weights, k), so a cached entry
        # memoizes its response per request shape: a repeat is neither re-blended nor rebuilt.
        # Memoized messages are shared between requests and never mutated after this point; they are
        # serialized once, so a repeat is answered with their bytes (+ the request id).
        key = (weights, query.num_results) if not query.exclude and not query.explain else None
        if key is not None and source == entry.source:
            memoized = _memoized(entry, weights, query.num_results, shown)
            if memoized is not None:
                return memoized
        items = _blended_items(model, entry.candidates, weights, query)
        item_ids = [item.item_id for item in items]
        response = pb.RecommendResponse(items=items, model_version=entry.candidates.model_version,
                                        source=_SOURCE_ENUM[shown], blend=_blend_pb(weights),
                                        engagement_calibrated=bool(model.engagement_calibrated))
        wire = None
        if key is not None and source == entry.source and len(entry.memo) < entry.MEMO_SIZE:
            wire = response.SerializeToString()
            entry.memo[key] = (response, item_ids, wire)
        return response, shown, weights, wire, item_ids

    def _log_events(self, request: pb.LogEventsRequest, context: grpc.ServicerContext):
        events_log = self.events
        if events_log is None:
            raise EventLogDisabledError("this server has no event log: start it with --redis-url (or "
                                        "--events-redis-url)")
        cfg = events_log.config
        size = request.ByteSize()
        if size > cfg.max_batch_bytes:
            raise InvalidRequestError(f"the batch is {size} bytes; the maximum is {cfg.max_batch_bytes} "
                                      "(--events-max-batch-bytes): split it")
        if len(request.events) > cfg.max_batch_events:  # before converting a huge batch
            raise InvalidRequestError(f"events has {len(request.events)} entries; the maximum per batch is "
                                      f"{cfg.max_batch_events}")
        arm_of = self.experiments.arm_of if self.experiments is not None else (lambda user: "")
        events = [Event(e.event_id, e.user_id, e.item_id, _event_type(e.type), e.timestamp,
                        e.value if e.HasField("value") else None, e.request_id, e.position, arm_of(e.user_id))
                  for e in request.events]
        validate_events(events, cfg.max_batch_events, cfg.max_id_length)
        try:
            accepted, duplicates, bumped = events_log.append(events)
        except EventLogUnavailableError as e:
            self.events_faults.labels("append").inc()
            log.warning("LogEvents: %s", e, extra={"event": "events_fault", "op": "append"})
            raise
        for user, version in bumped.items() if self.versions is not None else ():  # this process sees it at once
            self.versions.bump(user, version)
        if self.counter_key is not None and bumped:  # strict mode: this process's unvalidated near hits too
            self.cache.note_engagements(bumped)
        self.events_logged.labels("accepted").inc(accepted)
        self.events_logged.labels("duplicate").inc(duplicates)
        return pb.LogEventsResponse(accepted=accepted, duplicates=duplicates), "events"

    def _fallback(self, model: Any, weights: BlendWeights, query: RecommendQuery
                  ) -> tuple[pb.RecommendResponse, str, BlendWeights, bytes | None, list[str]]:
        """The catalogue's train priors (model.fallback_candidates) blended like any candidates:
        (response, FALLBACK, the weights used, None (not shared), item ids), as _answer returns."""
        weights = model.fallback_weights(weights)  # popularity alone for a version without the quality prior
        items = _blended_items(model, model.fallback_candidates, weights, query, retrieved=False)
        return (pb.RecommendResponse(items=items, model_version=model.model_version, source=pb.FALLBACK,
                                     blend=_blend_pb(weights), engagement_calibrated=False),
                FALLBACK, weights, None, [item.item_id for item in items])

    def _similar_items(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext):
        item_id, k = validate_similar(request, self.limits)
        model = self.model
        ids, scores = model.index.similar_items(item_id, k)
        response = pb.SimilarItemsResponse(model_version=model.model_version)
        response.items.extend(pb.SimilarItem(item_id=str(i), score=float(s)) for i, s in zip(ids, scores) if i != "")
        return response, "index"


# Separates a user id from their engagement counter in cache keys; ids are printable (serving/validation.py).
_VERSION_SEP = "\x1f"


def _event_type(value: int) -> str:
    """recsys.v1.EventType → feedback's type name; an unknown or unset value keeps its proto name (then refused)."""
    known = _EVENT_TYPE.get(value)
    if known is not None:
        return known
    return pb.EventType.Name(value) if value in pb.EventType.values() else f"EventType {value}"


def _memoized(entry, weights: BlendWeights, num_results: int, shown: str
              ) -> tuple[pb.RecommendResponse, str, BlendWeights, bytes, list[str]] | None:
    """The answer memoized on a cache entry for (weights, k), as `_answer` returns it; None if there is none yet."""
    memo = entry.memo.get((weights, num_results))  # (response, its item ids, its bytes)
    return None if memo is None else (memo[0], shown, weights, memo[2], memo[1])


def _stamped(response: pb.RecommendResponse, wire: bytes | None, request_id: str, arm: str) -> bytes:
    """The bytes of this request's answer: `response` serialized (its own message, already stamped), or a memoized
    message's bytes `wire` with this request's id (and arm) appended — the bytes of the stamped message without
    copying or re-serializing it (serving/wire.py)."""
    if wire is None:
        return response.SerializeToString()
    wire += string_field(_REQUEST_ID_FIELD, request_id)
    if arm:
        wire += string_field(_ARM_FIELD, arm)
    return wire


def _time_left(context: grpc.ServicerContext) -> float | None:
    return finite_time_left(context.time_remaining())


def _ranks(order: np.ndarray) -> np.ndarray:
    """[n] 1-based rank of each position given `order` (positions best first)."""
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


_BLEND_MODE = {"additive": pb.ADDITIVE, "multiplicative": pb.MULTIPLICATIVE}
_BLEND_TRANSFORM = {"identity": pb.IDENTITY, "log": pb.LOG, "logit": pb.LOGIT}


def _blend_pb(weights: BlendWeights) -> pb.BlendWeights:
    return pb.BlendWeights(engagement=weights.engagement, quality=weights.quality, mode=_BLEND_MODE[weights.mode],
                           transform=_BLEND_TRANSFORM[weights.transform])


def _blended_items(model: Any, candidates: CandidateSet, weights: BlendWeights,
                   query: RecommendQuery, retrieved: bool = True) -> list[pb.RecommendedItem]:
    """Blends the stored heads with `weights`, drops excluded items, keeps the top k (model.blend_top_k).

    `retrieved` False (the fallback's priors): the explanation has no retrieval score or rank.
    """
    ids, scores, order = model.blend_top_k(candidates, weights, query.num_results, query.exclude)
    e, q = candidates.engagement, candidates.quality
    top = order.tolist()
    ratings = model.quality_ratings(q[order]).tolist()
    items = [pb.RecommendedItem(item_id=item, score=float(score), engagement=float(e[j]), quality=float(q[j]),
                                quality_rating=rating)
             for item, score, j, rating in zip(ids.tolist(), scores.tolist(), top, ratings)]
    if not retrieved and len(top) and not model.has_quality_prior:
        for item in items:
            item.quality_rating = 0.0  # no prior: quality 0 means "not predicted", not the scale's minimum
    if query.explain and top:
        blend_order, _ = rank_by_blend(e, q, weights)
        blend_rank = _ranks(blend_order)
        e_rank = _ranks(np.argsort(-e, kind="stable"))
        q_rank = _ranks(np.argsort(-q, kind="stable"))
        # Candidates are stored in retrieval order; ties keep that order.
        r_rank = _ranks(np.argsort(-candidates.retrieval_scores, kind="stable"))
        for item, j in zip(items, top):
            item.explanation.CopyFrom(pb.Explanation(
                retrieval_score=float(candidates.retrieval_scores[j]) if retrieved else 0.0,
                retrieval_rank=int(r_rank[j]) if retrieved else 0,
                engagement_rank=int(e_rank[j]), quality_rank=int(q_rank[j]), blend_rank=int(blend_rank[j])))
    return items


class RecommendServer:
    """A started gRPC server with its servicer, health, reflection and metrics endpoint."""

    def __init__(self, config: ServerConfig = ServerConfig(), cache_config: CacheConfig = CacheConfig(),
                 limits: RequestLimits = RequestLimits(), metrics: ServingMetrics | None = None,
                 extra_handlers: tuple[grpc.GenericRpcHandler, ...] = (),
                 security: SecurityConfig = SecurityConfig(), events: EventLogConfig = EventLogConfig()) -> None:
        self.config = config
        if config.tf_intra_op_threads or config.tf_inter_op_threads:
            from core.tf_env import limit_threads  # imports TensorFlow, which loading a model does anyway

            if not limit_threads(config.tf_intra_op_threads, config.tf_inter_op_threads):
                log.warning("TensorFlow was initialised before the server, so --tf-intra-op-threads %d / "
                            "--tf-inter-op-threads %d do not apply to this process", config.tf_intra_op_threads,
                            config.tf_inter_op_threads, extra={"event": "tf_threads_not_applied"})
        if config.gil_switch_interval_s:
            sys.setswitchinterval(config.gil_switch_interval_s)  # process-wide
        if config.faiss_threads:
            import faiss  # process-wide, like TensorFlow's pools; loading a model imports it anyway

            faiss.omp_set_num_threads(config.faiss_threads)
        self.metrics = metrics or ServingMetrics()
        self._cache_config = cache_config
        self._loop_redis: LoopRedis | None = None
        self.cache = CandidateCache.from_config(cache_config, self.metrics)
        events_url = events.redis_url or cache_config.redis_url  # no Redis at all = no event log
        self.servicer = RecommenderServicer(self.cache, self.metrics, config, limits,
                                            EventLog(events_url, events) if events_url else None,
                                            cache_config.circuit_open_s,
                                            strict_freshness=events_url == cache_config.redis_url)
        self._executor = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="grpc-worker")
        self.security = security  # TLS, token auth, strict decoding, message size: serving/security.py
        # grpc.aio (serving/aio.py): the server lives on an event loop in its own thread; this class stays synchronous
        self._loop = EventLoopThread() if config.aio else None
        try:
            if self._loop is not None:
                self.health = health.aio.HealthServicer()
                self.server, self.port = self._loop.run(self._build(extra_handlers))
            else:
                self.health = health.HealthServicer()
                self.server, self.port = self._build_sync(extra_handlers)
        except BaseException:
            if self._loop is not None:
                self._loop.close()
            self._executor.shutdown(wait=False)
            self.servicer.close()
            self.cache.close()
            raise
        self._metrics_http = None
        self._stopped = threading.Event()     # stop() has begun
        self._terminated = threading.Event()  # the gRPC server has stopped

    def _interceptors(self) -> list:
        rejected = self.metrics.count_request  # refused by token auth, before any servicer runs
        return server_interceptors(self.security, lambda method: rejected(method.rsplit("/", 1)[-1], "UNAUTHENTICATED"),
                                   aio=self._loop is not None)

    def _register(self, server: Any, servicer: Any, reflection_servicer: Any,
                  extra_handlers: tuple[grpc.GenericRpcHandler, ...]) -> int:
        """Adds the services to `server` (every handler parses its own request: bad bytes = INVALID_ARGUMENT) and
        listens; returns the port."""
        registrar = StrictDecoding(server)
        if extra_handlers:
            registrar.add_generic_rpc_handlers(extra_handlers)
        pb_grpc.add_RecommenderServicer_to_server(servicer, registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection_servicer, registrar)
        port = add_port(server, f"{self.config.host}:{self.config.port}", self.security)
        if port == 0:
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port} (in use?)")
        return port

    def _build_sync(self, extra_handlers: tuple[grpc.GenericRpcHandler, ...]) -> tuple[grpc.Server, int]:
        server = grpc.server(self._executor, interceptors=self._interceptors(), options=server_options(self.security),
                             maximum_concurrent_rpcs=self.config.max_concurrent_rpcs)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        return server, self._register(server, self.servicer, reflection.ReflectionServicer(_REFLECTED),
                                      extra_handlers)

    async def _build(self, extra_handlers: tuple[grpc.GenericRpcHandler, ...]) -> tuple[grpc.aio.Server, int]:
        """The grpc.aio server, created on the loop it will run on (extra sync handlers run in the pool)."""
        server = grpc.aio.server(self._executor, interceptors=self._interceptors(),
                                 options=server_options(self.security),
                                 maximum_concurrent_rpcs=self.config.max_concurrent_rpcs)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        connect = self.cache.connection_factory() if self.config.aio_redis_reads else None
        self._loop_redis = (LoopRedis(connect, self._cache_config.socket_timeout_s, self._executor,
                                      self._cache_config.circuit_open_s) if connect is not None else None)
        return server, self._register(server, AioRecommenderServicer(self.servicer, self._executor, self._loop_redis),
                                      reflection.aio.ReflectionServicer(_REFLECTED), extra_handlers)

    def set_health(self, status: int) -> None:
        """Reports `status` (a grpc.health.v1 ServingStatus) for the server and the Recommender service."""
        if self._loop is not None:
            self._loop.run(self._set_health_async(status))
        else:
            self._set_health(status)

    def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    async def _set_health_async(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    def start(self) -> RecommendServer:
        if self._loop is not None:
            self._loop.run(self.server.start())
        else:
            self.server.start()
        if self.config.metrics_port:
            self._metrics_http = self.metrics.serve_http(self.config.metrics_port, self.config.host)
        log.info("listening on %s:%d", self.config.host, self.port,
                 extra={"event": "listening", "port": self.port, "metrics_port": self.config.metrics_port})
        return self

    def set_model(self, model: Any) -> None:
        """Serves `model` and reports SERVING."""
        self.servicer.set_model(model)
        self.set_health(health_pb2.HealthCheckResponse.SERVING)

    def start_experiments(self, root: str | os.PathLike, config: ExperimentsConfig = ExperimentsConfig(),
                          loader: Callable[[pathlib.Path], Any] | None = None) -> Experiments:
        """Runs the experiment file of artifacts root `root` (serving/experiments.py) from now on."""
        experiments = Experiments(config, root, lambda: self.servicer.loaded_model, self.metrics.registry, loader)
        events = self.servicer.events
        if events is not None:  # the shadow merges the same streamed history the primary did
            experiments.shadow.recent = (events.recent if self.servicer.counter_key is not None else
                                         lambda user: events.recent(user) if self.servicer._user_version(user) else [])
        self.servicer.experiments = experiments.start()
        return experiments

    def served_version(self) -> str:
        """The name of the version serving now ("" before the first load)."""
        model = self.servicer.loaded_model
        return "" if model is None else str(model.model_version)

    def load(self, version_dir: str | os.PathLike, verify: bool = True, warmup_users: int = 4) -> Any:
        """Loads a version directory and serves it once it passed checksums, consistency checks and
        a warm-up (serving.hotswap.load_into); on failure the current model keeps serving."""
        return load_into(self.set_model, self.metrics, version_dir, verify=verify, warmup_users=warmup_users)

    def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for `grace` seconds, then closes."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace is None else grace
        log.info("shutting down (grace %.1fs)", grace, extra={"event": "shutdown"})
        if self._loop is not None:
            self._loop.run(self.health.enter_graceful_shutdown())
            self._loop.run(self.server.stop(grace))
            if self._loop_redis is not None:
                self._loop.run(self._loop_redis.close())
            self._loop.close()
        else:
            self.health.enter_graceful_shutdown()
            self.server.stop(grace).wait()
        self._executor.shutdown(wait=False)
        self._terminated.set()
        if self._metrics_http is not None:
            self._metrics_http[0].shutdown()
        self.servicer.close()
        self.cache.close()

    def wait(self) -> None:
        """Blocks until the server has stopped."""
        if self._loop is not None:
            self._terminated.wait()
        else:
            self.server.wait_for_termination()


def serve(version_dir: str | os.PathLike | Callable[[], pathlib.Path], config: ServerConfig = ServerConfig(),
          cache_config: CacheConfig = CacheConfig(), limits: RequestLimits = RequestLimits(),
          verify: bool = True, on_ready: Callable[[RecommendServer], None] | None = None,
          hotswap: HotSwapConfig = HotSwapConfig(), security: SecurityConfig = SecurityConfig(),
          events: EventLogConfig = EventLogConfig(), experiments: ExperimentsConfig = ExperimentsConfig()) -> int:
    """Runs the server until SIGTERM/SIGINT; returns 0 after a graceful stop.

    The port opens at once with health NOT_SERVING; the model loads in the background
    and health turns SERVING when it is ready. `version_dir` may be a callable that
    resolves the directory (re-resolved on SIGHUP, which swaps to the new version
    without dropping requests). After the first load a RegistryWatcher re-resolves it every
    `hotswap.watch_interval_s` and swaps the same way (serving/hotswap.py).
    """
    resolve = version_dir if callable(version_dir) else (lambda: pathlib.Path(version_dir))
    server = RecommendServer(config, cache_config, limits, security=security, events=events).start()
    watcher = RegistryWatcher(resolve, set_model=server.set_model, served_version=server.served_version,
                              metrics=server.metrics, config=hotswap, verify=verify)
    failed: list[BaseException] = []
    stop = threading.Event()

    def load(initial: bool) -> None:
        try:
            if not initial:  # SIGHUP: same checks and swap as the watcher, serialised with it
                watcher.check(force=True)
                return
            version = resolve()
            server.load(version, verify=verify, warmup_users=hotswap.warmup_users)
            watcher.start()
            if experiments.file != "off":  # the experiment file lives beside the registry pointer
                server.start_experiments(version.parent, experiments)
        except (RecsysError, OSError) as e:
            log.error("could not load the model: %s%s", e, "" if initial else "; still serving the previous one",
                      extra={"event": "model_load_failed"})
            if initial:  # nothing to serve: stop; a failed reload keeps the loaded version
                failed.append(e)
                stop.set()

    threading.Thread(target=load, args=(True,), name="model-loader", daemon=True).start()
    handlers = {signal.SIGTERM: lambda *_: stop.set(), signal.SIGINT: lambda *_: stop.set()}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = lambda *_: threading.Thread(target=load, args=(False,), name="model-reloader",
                                                              daemon=True).start()
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            pass
    finally:
        watcher.stop()
        server.stop()
        for sig, h in previous.items():
            signal.signal(sig, h)
    if failed:
        raise failed[0] if isinstance(failed[0], RecsysError) else ArtifactError(str(failed[0]))
    return 0
