"""Live drift and answer-quality monitoring: rolling windows of real requests, compared at scrape time.

The request path only appends one tuple to a bounded deque (`LiveMonitor.record`, under a µs,
thread-safe in CPython); everything else happens when Prometheus scrapes /metrics (at most
once per `monitor_interval_s` however often it is scraped; scrapes in between get the last
values): the window's requests are turned into the same
quantities as the version's reference profile (pipeline.profile) and compared with it
(drift: PSI and the two-sample KS statistic).

Window: the last `monitor_window` Recommend answers of the serving version that are at
most `monitor_max_age_s` old. Exported (all gauges, NaN = not enough data):

  recsys_drift_psi{group,quantity}        PSI of the window against the reference; NaN until the
                                          group has monitor_min_samples requests (input: known-user
                                          requests; prediction: model answers), or with no reference
  recsys_drift_ks{group,quantity}         two-sample KS statistic (numeric quantities only)
  recsys_drift_reference_loaded{version}  1 when the serving version has a reference profile, else 0
                                          (versions trained before profiles existed: "no reference")
  recsys_window_requests                  answers in the window
  recsys_window_unknown_user_ratio        requests whose user is not in the version's vocabulary
  recsys_window_fallback_ratio            answers from the popularity fallback
  recsys_window_short_result_ratio        answers with fewer items than num_results asked for
  recsys_window_empty_result_ratio        answers with no item
  recsys_window_cache_hit_ratio           (cache + precomputed) / (cache + precomputed + online)
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from pipeline.profile import INPUT, PREDICTION, PREDICTIONS, input_quantities, load_reference, prediction_quantities

log = logging.getLogger(__name__)

_HIT_SOURCES = ("cache", "precomputed")
_LOOKUP_SOURCES = ("cache", "precomputed", "online")
_RATIOS = ("unknown_user", "fallback", "short_result", "empty_result", "cache_hit")


class LiveMonitor:
    """Rolling window of answers + the serving version's reference; a Prometheus collector.

    Args:
      registry: where the gauges are registered (the server's metrics registry).
      window: answers kept (the newest).
      max_age_s: answers older than this leave the window.
      min_samples: requests a group needs before its drift gauges are computed (PSI of a
        handful of requests is noise, not drift).
      min_interval_s: scrapes closer together than this reuse the last computation.
      clock: monotonic seconds (tests inject one).
    """

    def __init__(self, registry: CollectorRegistry, window: int = 2000, max_age_s: float = 600.0,
                 min_samples: int = 200, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._records: collections.deque = collections.deque(maxlen=window)
        self.max_age_s = max_age_s
        self.min_samples = min_samples
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._state: tuple[Any, Any] | None = None  # (model, reference profile or None), swapped as one
        self._lock = threading.Lock()
        self._last: tuple[float, list] = (-math.inf, [])
        # id(response) → (response, [len(PREDICTIONS), items] array): a memoized response recurs in the
        # window and is parsed once; entries live as long as their response is in the window.
        self._parsed: dict[int, tuple[Any, np.ndarray]] = {}
        registry.register(self)

    # -- the request path ----------------------------------------------------------------
    def record(self, user_id: str, num_results: int, response: Any, source: str) -> None:
        """Adds one answered Recommend (the response is kept by reference; it is never mutated)."""
        self._records.append((self._clock(), user_id, num_results, response, source))

    # -- model lifecycle ------------------------------------------------------------------
    def set_model(self, model: Any) -> None:
        """Follows a version swap: the window keeps only the new version's answers from now on."""
        version_dir = getattr(model, "version_dir", None)
        reference = None
        try:
            reference = load_reference(version_dir) if version_dir is not None else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("version %s: unreadable drift reference (%s); drift gauges are off", model.model_version, e,
                        extra={"event": "drift_reference_unreadable", "model_version": model.model_version})
        if reference is None:
            log.warning("version %s has no drift reference profile (trained before profiles existed?): drift "
                        "gauges report no reference", model.model_version,
                        extra={"event": "drift_reference_missing", "model_version": model.model_version})
        self._state = (model, reference)

    # -- scrape time ----------------------------------------------------------------------
    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = self._clock()
            if now - self._last[0] >= self.min_interval_s:
                self._last = (now, self.compute(now))
            return iter(self._last[1])

    def compute(self, now: float | None = None) -> list[GaugeMetricFamily]:
        """The gauges for the current window (see the module docstring)."""
        now = self._clock() if now is None else now
        state = self._state
        families = {name: GaugeMetricFamily(f"recsys_window_{name}_ratio", help_, labels=[])
                    for name, help_ in zip(_RATIOS, (
                        "Window requests whose user is unknown to the serving version",
                        "Window answers from the popularity fallback",
                        "Window answers with fewer items than asked for",
                        "Window answers with no item",
                        "Window cache hits (incl. precomputed) / cache lookups"))}
        size = GaugeMetricFamily("recsys_window_requests", "Recommend answers in the monitoring window")
        psi = GaugeMetricFamily("recsys_drift_psi", "Population stability index of the window vs the reference",
                                labels=["group", "quantity"])
        ks = GaugeMetricFamily("recsys_drift_ks", "Two-sample KS statistic of the window vs the reference",
                               labels=["group", "quantity"])
        loaded = GaugeMetricFamily("recsys_drift_reference_loaded",
                                   "1 when the serving version has a drift reference profile", labels=["version"])
        out = [size, *families.values(), psi, ks, loaded]
        if state is None:
            return out
        model, reference = state
        version = str(model.model_version)
        loaded.add_metric([version], 0.0 if reference is None else 1.0)
        records = [r for r in _snapshot(self._records)
                   if now - r[0] <= self.max_age_s and r[3].model_version == version]
        n = len(records)
        size.add_metric([], n)
        known = [model.is_known_user(r[1]) for r in records]
        parsed = self._parse([r[3] for r in records], model)
        served = [parsed[id(r[3])].shape[1] for r in records]
        counts = {
            "unknown_user": (n - sum(known), n),
            "fallback": (sum(r[4] == "fallback" for r in records), n),
            "short_result": (sum(k < r[2] for k, r in zip(served, records)), n),
            "empty_result": (served.count(0), n),
            "cache_hit": (sum(r[4] in _HIT_SOURCES for r in records), sum(r[4] in _LOOKUP_SOURCES for r in records)),
        }
        for name, (hits, total) in counts.items():
            families[name].add_metric([], hits / total if total else math.nan)
        if reference is None:
            return out
        users = [r[1] for r, k in zip(records, known) if k]
        answers = [parsed[id(r[3])] for r in records if r[4] != "fallback"]
        stacked = np.concatenate(answers, axis=1) if answers else np.zeros((len(PREDICTIONS), 0))
        predictions = {name: (stacked[i], "numeric") for i, name in enumerate(PREDICTIONS)}
        live = {INPUT: (input_quantities(model.features, users), len(users)), PREDICTION: (predictions, len(answers))}
        for group, quantities in reference.groups.items():
            values, count = live.get(group, ({}, 0))
            for name, profile in quantities.items():
                if name in values and count >= self.min_samples:
                    result = profile.compare(values[name][0])
                else:
                    result = {"psi": math.nan, "ks": math.nan}
                psi.add_metric([group, name], result["psi"])
                if profile.kind == "numeric":
                    ks.add_metric([group, name], result["ks"])
        return out


    def _parse(self, responses: list, model: Any) -> dict[int, np.ndarray]:
        """id(response) → its served items' prediction quantities (pipeline.profile), parsing only new ones."""
        old, parsed = self._parsed, {}
        for response in responses:
            key = id(response)
            if key in parsed:
                continue
            hit = old.get(key)
            if hit is None or hit[0] is not response:  # an id is reused only after its object is gone
                items = response.items
                values = prediction_quantities(
                    model.features, [i.item_id for i in items],
                    np.fromiter((i.engagement for i in items), np.float64, len(items)),
                    np.fromiter((i.quality for i in items), np.float64, len(items)),
                    np.fromiter((i.score for i in items), np.float64, len(items)))
                hit = (response, np.stack([values[name][0] for name in PREDICTIONS]))
            parsed[key] = hit
        self._parsed = parsed
        return {key: hit[1] for key, hit in parsed.items()}



def _snapshot(records: collections.deque) -> list:
    """A copy of the deque; request threads append meanwhile (a C-level copy, retried if it raced)."""
    for _ in range(10):
        try:
            return list(records)
        except RuntimeError:  # "deque mutated during iteration"
            continue
    return []
