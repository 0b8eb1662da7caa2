"""Experiments on the live path: arms (A/B), shadow scoring and canary guardrails (issue 15).

The experiment file (core/experiment.py: format, bucketing) is polled every
`ExperimentsConfig.poll_s`: when its (mtime, size, inode) changes it is read, validated, the
versions it names are loaded beside the served one (memory checked first), and only then
does the new state replace the old one in one assignment — a bad file, a version that
fails to load or would not fit the memory budget is REFUSED: a log line (event
"experiment_refused") and `recsys_experiment_config_refused_total`, while the previous
experiment (or none) keeps running. A deleted file stops the experiment.

Per Recommend the servicer asks `route(user, force_arm, model, defaults)` → (model, blend
weights, arm name): the user's bucket picks the arm; the arm's version is the served model
("current", or the served version's own name) or one loaded here; the arm's weights (if any)
replace that version's default blend (a request's own weights still win). Responses carry
`arm`, served lists are logged with it, and LogEvents stamps each event with the arm its user
is assigned to now (`arm_of`); the report (evaluation/experiments.py) re-attributes an event
that names a request_id to the arm of that served list, which is exact also after a config
change or a forced arm.

Memory: a version's resident size is estimated as its files' bytes × `memory_factor`
(SavedModels, FAISS index and feature tables are loaded whole; TensorFlow adds graph and
kernel state on top). The served version plus every version an experiment needs must fit
`memory_budget_mb`, else the config is refused naming the numbers.

Canary (`canary` in the file): the canary arm's share follows its schedule (steps at
seconds since `start`); every `poll_s` the guardrails compare the canary's last `window_s`
of requests with control's: error rate > max_error_rate, p99 latency > max_p99_ratio × control's,
empty-result rate > max_empty_rate (each once `min_requests` were seen) → ROLLBACK: share 0 at
once, a warning log line (event "canary_rolled_back", with the reason), the metrics
`recsys_experiment_canary_rollbacks_total{arm,reason}` and `recsys_experiment_canary_rolled_back{arm}`,
and the file rewritten with `canary.rolled_back = {reason, at}` so every process and a restart
keep it rolled back.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.errors import InvalidRequestError, RecsysError
from core.experiment import (
    Experiment,
    ExperimentConfigError,
    bucket,
    experiment_file,
    read_experiment,
    write_experiment,
)
from ranking.blender import BlendWeights
from serving.shadow import ShadowScorer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExperimentsConfig:
    """`recsys serve --experiment-*`: where the experiment file is and how the server runs it."""

    file: str = ""                 # "" = <artifacts root>/experiment.json; "off" = never run experiments
    poll_s: float = 1.0            # check the file (and the canary guardrails) this often
    allow_force: bool = False      # honour RecommendRequest.force_arm (when the experiment allows it too)
    memory_budget_mb: float = 8192.0  # the served version + every experiment version must fit (estimate)
    memory_factor: float = 3.0     # estimated resident bytes per byte of a version's files
    shadow_queue: int = 1000       # shadow requests waiting; beyond it they are dropped and counted
    verify: bool = True            # check an experiment version's checksums before loading it

    def __post_init__(self) -> None:
        if not (math.isfinite(self.poll_s) and self.poll_s > 0):
            raise ValueError(f"--experiment-poll-s must be > 0, got {self.poll_s}")
        if not (self.memory_budget_mb > 0 and self.memory_factor > 0):
            raise ValueError(f"--experiment-memory-budget-mb and --experiment-memory-factor must be > 0, got "
                             f"{self.memory_budget_mb}, {self.memory_factor}")
        if self.shadow_queue < 1:
            raise ValueError(f"--experiment-shadow-queue must be >= 1, got {self.shadow_queue}")


def version_footprint_mb(version_dir: str | os.PathLike, factor: float) -> float:
    """Estimated resident MiB of a loaded version: its files' bytes × factor."""
    d = pathlib.Path(version_dir)
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    return factor * size / 2**20


@dataclasses.dataclass
class _Arm:
    name: str
    model: Any            # None = the served model
    weights: Any          # core.experiment.ArmWeights or None (the version's defaults)
    resolved: tuple[Any, BlendWeights] | None = None  # (defaults it was resolved against, weights)

    def blend(self, defaults: BlendWeights) -> BlendWeights:
        if self.weights is None:
            return defaults
        resolved = self.resolved
        if resolved is not None and resolved[0] is defaults:
            return resolved[1]
        w = self.weights
        weights = defaults.with_blend(w.engagement, w.quality, w.mode, w.transform)
        self.resolved = (defaults, weights)
        return weights


@dataclasses.dataclass
class _State:
    experiment: Experiment
    arms: dict[str, _Arm]
    models: dict[str, Any]            # version name → loaded model (versions other than the served one)
    layout: list[tuple[int, int, str]]
    shadow_model: Any = None          # None with a shadow = the served model
    # user id → bucket(experiment.salt, user): a sha256 per request otherwise. Per state, so a new salt
    # starts empty; cleared when it reaches _BUCKETS_KEPT users (a layout change needs no clearing).
    buckets: dict[str, int] = dataclasses.field(default_factory=dict)

    def arm_name(self, user_id: str) -> str:
        """The user's arm under this state's layout (Experiment.assign, with the user's bucket remembered)."""
        b = self.buckets.get(user_id)
        if b is None:
            if len(self.buckets) >= _BUCKETS_KEPT:
                self.buckets.clear()
            b = self.buckets[user_id] = bucket(self.experiment.salt, user_id)
        return self.experiment.arm_at(b, self.layout)


_BUCKETS_KEPT = 100_000


class Experiments:
    """The running experiment of one server process (see the module docstring).

    Args:
      config: ExperimentsConfig.
      root: the artifacts root (experiment versions are <root>/<name>; the default file is beside CURRENT).
      served: () → the served model or None (the server's current primary).
      registry: Prometheus registry for the recsys_experiment_* and recsys_shadow_* metrics.
      loader: version directory → a checked model (default serving.hotswap.load_checked; tests and
        benches wrap it to inject a slow or failing version).
      clock: wall-clock seconds (the canary schedule).
    """

    def __init__(self, config: ExperimentsConfig, root: str | os.PathLike, served: Callable[[], Any],
                 registry: CollectorRegistry, loader: Callable[[pathlib.Path], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.root = pathlib.Path(root)
        self.path = pathlib.Path(config.file) if config.file else experiment_file(self.root)
        self._served = served
        self._clock = clock
        if loader is None:
            from serving.hotswap import load_checked

            def loader(d: pathlib.Path) -> Any:
                return load_checked(d, verify=config.verify)
        self._loader = loader
        self._state: _State | None = None
        self._stamp: tuple | None = None  # (mtime_ns, size, inode) of the file last read (valid or not)
        self._lock = threading.Lock()     # one reload / rollback at a time
        self._observations: dict[str, collections.deque] = {}
        r = registry
        self.refused = Counter("recsys_experiment_config_refused", "Experiment files refused (invalid, a version "
                               "failed to load or would not fit the memory budget); the previous one kept running",
                               registry=r)
        self.loaded = Counter("recsys_experiment_config_loaded", "Experiment files applied", registry=r)
        self.requests = Counter("recsys_experiment_requests", "Recommend answers by experiment arm", ["arm"],
                                registry=r)
        self.share = Gauge("recsys_experiment_share", "Effective traffic share per arm (canary schedule applied)",
                           ["arm"], registry=r)
        self.rollbacks = Counter("recsys_experiment_canary_rollbacks", "Canary rollbacks by arm and guardrail",
                                 ["arm", "reason"], registry=r)
        self.rolled_back = Gauge("recsys_experiment_canary_rolled_back", "1 when the arm's canary was rolled back",
                                 ["arm"], registry=r)
        self.memory = Gauge("recsys_experiment_memory_mb", "Estimated MiB of the versions loaded for the experiment "
                            "(served version included)", registry=r)
        self._request_child: dict[str, Any] = {}
        self.shadow = ShadowScorer(registry, config.shadow_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Experiments:
        self.poll()
        self._thread = threading.Thread(target=self._run, name="experiments", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.shadow.close()

    def _run(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.poll()
            except Exception:  # the poller must survive anything
                log.exception("experiment poll failed", extra={"event": "experiment_poll_failed"})

    @property
    def running(self) -> bool:
        """Whether an experiment is running (the request path skips everything else when not)."""
        return self._state is not None

    @property
    def experiment(self) -> Experiment | None:
        state = self._state
        return None if state is None else state.experiment

    def poll(self) -> None:
        """Reloads the file if it changed; refreshes the canary share; checks the guardrails."""
        try:
            st = self.path.stat()
            stamp: tuple | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            if stamp is None:
                self._stop_experiment()
            else:
                self.reload()
        state = self._state
        if state is not None and state.experiment.canary is not None:
            layout = state.experiment.layout(self._clock())
            if layout != state.layout:
                state.layout = layout  # one assignment; requests read the list they got
                self._publish_shares(state.experiment)
            self.check_guardrails()

    def _stop_experiment(self) -> None:
        if self._state is not None:
            log.info("experiment %s stopped (%s removed)", self._state.experiment.name, self.path,
                     extra={"event": "experiment_stopped"})
        self._state = None
        self.shadow.configure(None, 0.0, 10)
        self.share.clear()

    def reload(self) -> bool:
        """Reads, validates and loads the file; True when it replaced the running experiment."""
        with self._lock:
            try:
                experiment = read_experiment(self.path)
                if experiment is None:
                    self._stop_experiment()
                    return False
                state = self._build(experiment)
            except (ExperimentConfigError, RecsysError, OSError) as e:
                self.refused.inc()
                running = self._state.experiment.name if self._state is not None else "none"
                log.error("experiment file refused: %s; still running: %s", e, running,
                          extra={"event": "experiment_refused", "file": str(self.path)})
                return False
            self._state = state
            s = experiment.shadow
            self.shadow.configure((state.shadow_model or self._served()) if s is not None else None,
                                  s.sample if s is not None else 0.0, s.k if s is not None else 10)
            self._observations = {a.name: self._observations.get(a.name) or collections.deque(maxlen=100_000)
                                  for a in experiment.arms}
            self.rolled_back.clear()
            if experiment.canary is not None and experiment.canary.rolled_back:
                self.rolled_back.labels(experiment.canary.arm).set(1)
            self._publish_shares(experiment)
            self.loaded.inc()
            log.info("experiment %s running: %s", experiment.name,
                     ", ".join(f"{a.name}={a.version}@{a.share:g}" for a in experiment.arms),
                     extra={"event": "experiment_loaded", "experiment": experiment.name})
            return True

    def _publish_shares(self, experiment: Experiment) -> None:
        for arm, share in experiment.shares(self._clock()).items():
            self.share.labels(arm).set(share)

    def _build(self, experiment: Experiment) -> _State:
        served = self._served()
        served_name = str(served.model_version) if served is not None else ""
        previous = self._state.models if self._state is not None else {}
        needed = [v for v in experiment.versions if v not in ("current", served_name)]
        for v in needed:
            if not (self.root / v).is_dir():
                raise ExperimentConfigError(f"{self.path}: version {v!r} not found under {self.root}")
        served_dir = self.root / served_name
        used = version_footprint_mb(served_dir, self.config.memory_factor) if served_name and served_dir.is_dir() \
            else 0.0
        sizes = {v: version_footprint_mb(self.root / v, self.config.memory_factor) for v in needed}
        total = used + sum(sizes.values())
        if total > self.config.memory_budget_mb:
            detail = ", ".join(f"{v} ~{mb:.0f} MiB" for v, mb in sizes.items())
            raise ExperimentConfigError(
                f"{self.path}: the versions would not fit the memory budget: served {served_name or '(none)'} "
                f"~{used:.0f} MiB + {detail} = ~{total:.0f} MiB > --experiment-memory-budget-mb "
                f"{self.config.memory_budget_mb:g} (estimate: files × --experiment-memory-factor "
                f"{self.config.memory_factor:g})")
        models: dict[str, Any] = {}
        for v in needed:
            models[v] = previous.get(v) or self._loader(self.root / v)
        arms = {}
        for a in experiment.arms:
            model = models.get(a.version)
            arm = _Arm(a.name, model, a.weights)
            # A weight combination the blender refuses (e.g. multiplicative + log) refuses the whole file.
            try:
                if a.weights is not None:
                    base = model.default_weights if model is not None else (
                        served.default_weights if served is not None else BlendWeights())
                    arm.blend(base)
            except InvalidRequestError as e:
                raise ExperimentConfigError(f"{self.path}: arms {a.name!r} weights: {e}") from e
            arms[a.name] = arm
        self.memory.set(total)
        shadow_model = models.get(experiment.shadow.version) if experiment.shadow is not None else None
        return _State(experiment, arms, models, experiment.layout(self._clock()), shadow_model)

    # -- the request path ---------------------------------------------------------------------------
    def route(self, user_id: str, force_arm: str, model: Any, defaults: BlendWeights
              ) -> tuple[Any, BlendWeights, str]:
        """(model, default weights, arm) for this user; (model, defaults, "") without an experiment."""
        state = self._state
        if state is None:
            if force_arm:
                raise InvalidRequestError("force_arm: no experiment is running on this server")
            return model, defaults, ""
        if force_arm:
            if not (self.config.allow_force and state.experiment.allow_force):
                raise InvalidRequestError("force_arm: this server does not allow forcing an arm (it needs "
                                          "--experiment-allow-force and \"allow_force\": true in the experiment)")
            arm = state.arms.get(force_arm)
            if arm is None:
                raise InvalidRequestError(f"force_arm: {force_arm!r} is not an arm of experiment "
                                          f"{state.experiment.name} ({sorted(state.arms)})")
        else:
            arm = state.arms[state.arm_name(user_id)]
        if arm.model is not None:
            model = arm.model
            defaults = model.default_weights
        child = self._request_child.get(arm.name)
        if child is None:
            child = self._request_child.setdefault(arm.name, self.requests.labels(arm.name))
        child.inc()
        return model, arm.blend(defaults), arm.name

    def arm_of(self, user_id: str) -> str:
        """The arm `user_id` is assigned to now ("" without an experiment): stamped on LogEvents events."""
        state = self._state
        return "" if state is None else state.arm_name(user_id)

    def after(self, arm: str, user_id: str, exclude: frozenset[str], weights: BlendWeights, item_ids: list[str] | None,
              seconds: float) -> None:
        """After an answer (item_ids) or a failure (None): canary observations and the shadow sample."""
        state = self._state
        if state is None:
            return
        if state.experiment.canary is not None:
            obs = self._observations.get(arm)
            if obs is not None:
                obs.append((time.monotonic(), seconds, item_ids is not None, not item_ids))
        if item_ids is not None and state.experiment.shadow is not None:
            self.shadow.offer(user_id, exclude, weights, item_ids)

    # -- canary -------------------------------------------------------------------------------------
    def check_guardrails(self) -> str | None:
        """Rolls the canary back when a guardrail is breached; returns the reason (None = healthy)."""
        state = self._state
        if state is None or state.experiment.canary is None or state.experiment.canary.rolled_back:
            return None
        c = state.experiment.canary
        since = time.monotonic() - c.window_s
        canary = [o for o in list(self._observations.get(c.arm, ())) if o[0] >= since]
        control = [o for o in list(self._observations.get(state.experiment.control, ())) if o[0] >= since]
        if len(canary) < c.min_requests:
            return None
        n = len(canary)
        errors = sum(1 for o in canary if not o[2]) / n
        empty = sum(1 for o in canary if o[2] and o[3]) / n
        reason = None
        if errors > c.max_error_rate:
            reason = ("error_rate", f"error rate {errors:.3f} > {c.max_error_rate:g} over {n} requests")
        elif empty > c.max_empty_rate:
            reason = ("empty_rate", f"empty-result rate {empty:.3f} > {c.max_empty_rate:g} over {n} requests")
        elif len(control) >= c.min_requests:
            p99, p99_control = _p99([o[1] for o in canary]), _p99([o[1] for o in control])
            if p99 > c.max_p99_ratio * p99_control:
                reason = ("p99_latency", f"p99 {1e3 * p99:.1f} ms > {c.max_p99_ratio:g} × control's "
                                         f"{1e3 * p99_control:.1f} ms ({n} vs {len(control)} requests)")
        if reason is None:
            return None
        self.rollback(reason[0], reason[1])
        return reason[0]

    def rollback(self, kind: str, detail: str) -> None:
        """Share 0 for the canary now, in this process and (through the file) in every other one."""
        with self._lock:
            state = self._state
            if state is None or state.experiment.canary is None or state.experiment.canary.rolled_back:
                return
            c = state.experiment.canary
            rolled = {"reason": f"{kind}: {detail}", "at": self._clock()}
            experiment = dataclasses.replace(state.experiment, canary=dataclasses.replace(c, rolled_back=rolled))
            state.experiment = experiment
            state.layout = experiment.layout(self._clock())
            self.rollbacks.labels(c.arm, kind).inc()
            self.rolled_back.labels(c.arm).set(1)
            self._publish_shares(experiment)
            log.warning("canary %s of experiment %s rolled back: %s", c.arm, experiment.name, rolled["reason"],
                        extra={"event": "canary_rolled_back", "arm": c.arm, "reason": kind})
            try:
                write_experiment(self.path, experiment)
                st = self.path.stat()
                self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # our own write: no reload needed
            except OSError as e:
                log.error("could not record the rollback in %s: %s (this process keeps it rolled back)", self.path,
                          e, extra={"event": "canary_rollback_not_saved"})


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(0.99 * len(values))) - 1)]
