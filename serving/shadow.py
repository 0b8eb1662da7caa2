"""Shadow scoring: a second version answers a sample of live requests off the request path.

The request thread only samples (one random draw) and puts (user, exclude, weights, k, primary
ids) on a bounded queue with put_nowait — when the queue is full the request is dropped and
counted, never waited for. One background thread (at a lower OS scheduling priority, nice +10,
so on a busy host the primary's threads run first; it also yields the GIL between requests, so
a request thread never waits behind more than one short stretch of shadow Python) takes up to 64 queued requests at a time and
computes the shadow version's top k for the same user, streamed history, exclusions and blend
weights — the users' candidates in ONE model call, kept in the shadow's own LRU per (version,
user, streamed history) like the primary's cache, so the shadow does no more work than the
primary; unknown users without usable events get the version's fallback priors — and records
how it compares with the list the primary served. Nothing it does reaches a response: it
never writes the server's candidate cache, and its errors are counted and logged.

Metrics (prefix recsys_shadow_): requests_total{result=scored|error|dropped}, jaccard and rbo
(histograms of the overlap of the shadow's top k with the primary's, core.experiment.jaccard /
rbo), latency_seconds (the shadow computation), queue (gauge). Logs: every error, and a summary
line (mean Jaccard / RBO, p50/p99 latency) every `log_every` scored requests.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.experiment import jaccard, rbo

log = logging.getLogger(__name__)

_OVERLAP_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.999, 1.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ShadowScorer:
    """Samples requests onto a bounded queue; one worker thread scores them with the shadow model.

    Args:
      registry: where the recsys_shadow_* metrics go.
      queue_size: requests waiting; beyond it they are dropped (counted).
      nice: added to the worker thread's OS niceness (Linux; 0 = leave it).
      log_every: a summary log line every this many scored requests.
    """

    def __init__(self, registry: CollectorRegistry, queue_size: int = 1000, nice: int = 10,
                 log_every: int = 1000, batch: int = 64, lru_size: int = 10_000) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._batch = batch
        self._lru: collections.OrderedDict = collections.OrderedDict()  # (version, user, recent) → CandidateSet
        self._lru_size = lru_size
        self._model: Any = None
        # user → their streamed engagements (newest first), read in the worker: the shadow sees the same
        # history the primary merged (serving sets it when the event log is on; None = batch features only).
        self.recent: Callable[[str], list[str]] | None = None
        self._sample = 0.0
        self._k = 10
        self._nice = nice
        self._log_every = log_every
        self._random = random.Random()
        self.requests = Counter("recsys_shadow_requests", "Shadow-scored requests by result (scored, error, dropped "
                                "when the queue was full)", ["result"], registry=registry)
        self._scored = self.requests.labels("scored")
        self._errors = self.requests.labels("error")
        self._dropped = self.requests.labels("dropped")
        self.jaccard = Histogram("recsys_shadow_jaccard", "Jaccard overlap of the shadow's top k with the served list",
                                 buckets=_OVERLAP_BUCKETS, registry=registry)
        self.rbo = Histogram("recsys_shadow_rbo", "Rank-biased overlap (p = 0.9) at k of the shadow's list with "
                             "the served list", buckets=_OVERLAP_BUCKETS, registry=registry)
        self.latency = Histogram("recsys_shadow_latency_seconds", "Seconds per shadow computation",
                                 buckets=_LATENCY_BUCKETS, registry=registry)
        Gauge("recsys_shadow_queue", "Requests waiting for the shadow scorer",
              registry=registry).set_function(self._queue.qsize)
        self._window: list[tuple[float, float, float]] = []  # (jaccard, rbo, seconds) since the last summary
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def configure(self, model: Any, sample: float, k: int) -> None:
        """Scores a `sample` fraction of requests with `model` (None = off) at depth `k` from now on."""
        if model is not self._model:
            self._lru = collections.OrderedDict()
        self._model, self._sample, self._k = model, sample, k

    @property
    def model(self) -> Any:
        return self._model

    def offer(self, user_id: str, exclude: frozenset[str], weights: Any, primary_ids: list[str]) -> None:
        """On the request path: maybe enqueue this answer for shadow scoring (never blocks)."""
        model, sample = self._model, self._sample
        if model is None or sample <= 0 or (sample < 1 and self._random.random() >= sample):
            return
        try:
            self._queue.put_nowait((model, user_id, exclude, weights, primary_ids))
        except queue.Full:
            self._dropped.inc()

    def _run(self) -> None:
        if self._nice and hasattr(os, "setpriority"):
            with contextlib.suppress(OSError):  # Linux: a thread is a task with its own niceness
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        while not self._stopped.is_set():
            try:
                jobs = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            self._busy = True
            try:
                while len(jobs) < self._batch:  # what queued meanwhile shares one model call
                    try:
                        jobs.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._score_batch(jobs)
            finally:
                self._busy = False

    def _recent(self, user_id: str) -> list[str]:
        if self.recent is None:
            return []
        try:
            return list(self.recent(user_id))
        except Exception:  # the event log is down: compare on batch features
            return []

    def _score_batch(self, jobs: list[tuple]) -> None:
        """Candidates for every job's user not in the shadow's own LRU (one model call per model), then each
        job's blend and comparison. The LRU mirrors the primary's candidate cache: a user's candidates are
        computed once per streamed-history state, so the shadow does the work the primary does, no more."""
        start = time.perf_counter()
        lru = self._lru  # configure() may swap in a new one meanwhile: this batch keeps its own
        found: dict[tuple, Any] = {}  # this batch's candidate sets by key
        prepared = []  # (job, cache key)
        missing: dict[Any, dict[tuple, tuple[str, list[str]]]] = {}
        for job in jobs:
            time.sleep(0)  # hand the GIL to a waiting request thread between short stretches of shadow work
            model, user_id = job[0], job[1]
            recent = self._recent(user_id)
            try:
                known = model.is_known_user(user_id)
                use = bool(recent) and (known or model.personalisable(user_id, recent))
            except Exception as e:
                self._error(model, e)
                continue
            key = (model.model_version, user_id, tuple(recent) if use else ()) if (known or use) else None
            prepared.append((job, key))
            if key is not None:
                cached = lru.get(key)
                if cached is not None:
                    found[key] = cached
                    lru.move_to_end(key)
                else:
                    missing.setdefault(model, {})[key] = (user_id, recent if use else [])
        failed: set = set()
        for model, wanted in missing.items():
            keys = list(wanted)
            users = [wanted[k][0] for k in keys]
            recents = [wanted[k][1] for k in keys]
            try:
                cands = model.candidates(users, recent=recents) if any(recents) else model.candidates(users)
            except Exception as e:  # the shadow version's failure is a measurement, never the server's
                self._error(model, e, len(keys))
                failed.update(keys)
                continue
            for key, c in zip(keys, cands):
                found[key] = c
                lru[key] = c
                if len(lru) > self._lru_size:
                    lru.popitem(last=False)
        compute = time.perf_counter() - start
        for (model, _user, exclude, weights, primary), key in prepared:
            time.sleep(0)
            if key in failed:
                continue
            k = min(self._k, len(primary)) if primary else self._k
            t = time.perf_counter()
            try:
                if key is None:
                    ids, _, _ = model.blend_top_k(model.fallback_candidates, model.fallback_weights(weights), k,
                                                  exclude)
                else:
                    ids, _, _ = model.blend_top_k(found[key], weights, k, exclude)
            except Exception as e:
                self._error(model, e)
                continue
            # Per request: its share of the batch's model call plus its own blend.
            self._record(model, k, primary[:k], [str(i) for i in ids.tolist()],
                         compute / len(prepared) + time.perf_counter() - t)

    def _error(self, model: Any, e: Exception, n: int = 1) -> None:
        self._errors.inc(n)
        log.warning("shadow version %s failed for %d request(s): %s: %s", getattr(model, "model_version", "?"), n,
                    type(e).__name__, str(e)[:300], extra={"event": "shadow_error"})

    def _record(self, model: Any, k: int, top: list[str], ids: list[str], seconds: float) -> None:
        j, r = jaccard(top, ids), rbo(top, ids, max(k, 1))
        self.latency.observe(seconds)
        self.jaccard.observe(j)
        self.rbo.observe(r)
        self._scored.inc()
        self._window.append((j, r, seconds))
        if len(self._window) >= self._log_every:
            w, self._window = self._window, []
            lat = sorted(x[2] for x in w)
            log.info("shadow %s: %d requests, mean Jaccard@%d %.3f, mean RBO@%d %.3f, latency p50 %.1f ms p99 %.1f ms",
                     getattr(model, "model_version", "?"), len(w), k, sum(x[0] for x in w) / len(w), k,
                     sum(x[1] for x in w) / len(w), 1e3 * lat[len(lat) // 2], 1e3 * lat[int(0.99 * (len(lat) - 1))],
                     extra={"event": "shadow_summary"})

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Waits until the queue is empty (tests, benches)."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() or self._busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    _busy = False

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

