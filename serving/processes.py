"""`recsys serve --processes N` and `--swap-mode blue_green`: a fleet of server processes on one port.

One Python process serves a cache hit in ~20 µs of handler work, but the gRPC poller and
the handler threads share one GIL, so on an idle machine a single process answers cache
hits at ~0.77× the rate of an empty RPC (bench/RESULTS.md, serving). gRPC sets
SO_REUSEPORT on Linux, so several processes can listen on the same port and the kernel
spreads connections over them; each has its own copy of the model and shares Redis. The
port belongs to one fleet: `recsys serve` claims it (serving/ports.py) before any process binds.

The supervisor (this module) starts the processes with the "spawn" start method (a clean
interpreter each: forking a process that has loaded TensorFlow is unsafe) and stops them
gracefully on SIGTERM/SIGINT. Every server process loads, verifies and warms its version
*before* it listens, so a connection never reaches a process that cannot answer yet, and
reports SERVING on its health service only once every process of the fleet is ready (until
then: NOT_SERVING). A process that dies after the fleet started (a crash, the OOM killer,
kill -9) is restarted in its slot with exponential backoff (`restart_backoff_s`, doubling per
death in a row, capped at `restart_backoff_max_s`; a process that stayed up
`restart_stable_s` starts the count again), logged (`process_exited`, `process_restarted`)
and counted (`recsys_fleet_restarts_total`) while the others keep serving; its clients'
calls in flight fail UNAVAILABLE and the documented client retry policy
(serving.security.CLIENT_SERVICE_CONFIG) sends them again, to a live process. A process that
fails while the fleet *starts* (bad version, TLS files, port) stops the fleet: one line
`recsys serve: error: ...`, exit 2. How versions change:

  in_process   each process follows the registry itself (serving.hotswap.RegistryWatcher);
               SIGHUP is forwarded to all.
  blue_green   the supervisor follows the registry (every --watch-interval-s, and on
               SIGHUP). For a new version it starts a new generation of processes that
               load, verify and warm the version *before* they listen; once all are ready
               they bind the port beside the old ones and the old generation is SIGTERMed:
               it stops accepting, drains in-flight calls for --grace-s, and clients
               reconnect to the new one (gRPC retries calls a draining server refused).
               A version whose processes fail to load is refused and logged; the old
               generation keeps serving and the version is not retried until the pointer
               or its manifest changes. No serving process ever runs TensorFlow's loader
               while it serves, whose GIL stalls are what an in-process swap adds to tail latency.

Metrics ports are fixed for the life of the fleet, so a static Prometheus scrape config keeps
working across swaps and restarts: process i serves /metrics on metrics_port + i, and the
supervisor's own series on metrics_port + N (recsys_fleet_restarts_total,
recsys_fleet_processes_ready, recsys_fleet_generation; in blue_green mode also
recsys_model_loads_total{result}, recsys_model_refused_info{version}, recsys_model_load_seconds).
In blue_green mode two generations overlap, so each generation process serves its metrics on
a free loopback port and the supervisor answers on metrics_port + i by relaying the *current*
generation's process i (`_MetricsRelay`): a refused version is counted on the supervisor's
port, and the refused gauge clears when a version is swapped in.
"""
from __future__ import annotations

import dataclasses
import http.server
import logging
import multiprocessing
import os
import pathlib
import queue
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, NoReturn

from core import registry
from core.errors import RecsysError
from feedback import EventLogConfig
from serving.cache import CacheConfig
from serving.experiments import ExperimentsConfig
from serving.hotswap import HotSwapConfig
from serving.security import SecurityConfig
from serving.server import ServerConfig
from serving.validation import RequestLimits

log = logging.getLogger(__name__)              # the supervisor's events
child_log = logging.getLogger(__name__ + ".child")  # a server process's own events

EXIT_STARTUP_ERROR = 2  # a process could not start: the reason is on the fleet's error queue
EXIT_REFUSED = 3        # blue_green: the version was refused (verification, consistency or warm-up)


class FleetStartError(RecsysError):
    """A server process could not start (its reason), so the fleet did not start."""


@dataclasses.dataclass(frozen=True)
class FleetSpec:
    """What every server process serves and how (picklable: sent to spawned interpreters)."""

    artifacts: str
    version: str                # a version name, "current" (the registry pointer) or a directory
    verify: bool
    server: ServerConfig
    cache: CacheConfig
    limits: RequestLimits
    hotswap: HotSwapConfig
    security: SecurityConfig
    events: EventLogConfig = EventLogConfig()
    log_level: str = "INFO"
    log_format: str = "json"
    ready_timeout_s: float = 900.0  # a new generation that is not serving by then is refused
    restart_backoff_s: float = 0.5       # a dead process is restarted after this long (doubling per death in a row)
    restart_backoff_max_s: float = 30.0  # ... at most this long
    restart_stable_s: float = 60.0       # a process that lived this long starts the doubling again
    experiments: ExperimentsConfig = ExperimentsConfig()  # every process runs the same experiment file

    def child_server_config(self, index: int) -> ServerConfig:
        """Process `index`: one process, metrics on metrics_port + index (0 = off)."""
        base = self.server.metrics_port
        return dataclasses.replace(self.server, processes=1, metrics_port=base + index if base else 0)

    def restart_delay(self, deaths_in_a_row: int) -> float:
        """Seconds before restarting a process that died `deaths_in_a_row` (>= 1) times in a row."""
        return min(self.restart_backoff_max_s, self.restart_backoff_s * 2 ** (deaths_in_a_row - 1))


def _setup_logging(spec: FleetSpec, tag: str) -> None:
    from serving.metrics import JsonFormatter

    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[{tag}]: %(message)s")
    if spec.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def _startup_failed(errors, index: int, message: str) -> NoReturn:
    """Logs `message` (one line), hands it to the supervisor and exits EXIT_STARTUP_ERROR."""
    child_log.error("server process %d cannot start: %s", index, message,
                    extra={"event": "process_start_failed", "reason": message})
    if errors is not None:
        errors.put((index, message))
        errors.close()
        errors.join_thread()
    sys.exit(EXIT_STARTUP_ERROR)


def _limit_threads(config: ServerConfig) -> None:
    """TensorFlow's and FAISS's thread pools, set before the model loads (RecommendServer sets them again)."""
    if config.tf_intra_op_threads or config.tf_inter_op_threads:
        from core.tf_env import limit_threads

        limit_threads(config.tf_intra_op_threads, config.tf_inter_op_threads)
    if config.faiss_threads:
        import faiss

        faiss.omp_set_num_threads(config.faiss_threads)


def _listen(spec: FleetSpec, config: ServerConfig, metrics: Any = None) -> Any:
    """A RecommendServer bound to the fleet's port (not started); RecsysError when it cannot bind."""
    from serving.server import RecommendServer

    try:
        return RecommendServer(config, spec.cache, spec.limits, metrics=metrics, security=spec.security,
                               events=spec.events)
    except (RuntimeError, OSError) as e:  # grpc: "Failed to bind to address ..."
        raise RecsysError(f"cannot listen on {config.host}:{config.port}: {str(e).split(';')[0]}") from e


def _start_gated(server: Any, ready, fleet_ready, stop: threading.Event) -> None:
    """Starts `server` (its model set) reporting NOT_SERVING, sets `ready`, and reports SERVING once the
    supervisor sets `fleet_ready` (every process of the fleet ready)."""
    from grpc_health.v1 import health_pb2

    server.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    ready.set()
    while not fleet_ready.wait(0.05):
        if stop.is_set():
            return
    server.set_health(health_pb2.HealthCheckResponse.SERVING)


def _child_signals() -> tuple[threading.Event, threading.Event]:
    """(stop, reload): SIGTERM/SIGINT set stop, SIGHUP sets reload."""
    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: reload.set())
    return stop, reload


def _run_following_child(spec: FleetSpec, index: int, ready, fleet_ready, errors=None) -> None:
    """in_process mode: load the registry's version, then listen; follow the registry (watcher, SIGHUP)."""
    from core.registry import resolve_version
    from serving.hotswap import RegistryWatcher, load_into
    from serving.metrics import ServingMetrics

    _setup_logging(spec, str(index))
    stop, reload = _child_signals()
    config = spec.child_server_config(index)

    def resolve() -> pathlib.Path:
        return pathlib.Path(resolve_version(spec.artifacts, spec.version))

    metrics = ServingMetrics()
    loaded: list = []
    try:
        _limit_threads(config)
        load_into(loaded.append, metrics, resolve(), verify=spec.verify, warmup_users=spec.hotswap.warmup_users)
        server = _listen(spec, config, metrics)
    except RecsysError as e:
        _startup_failed(errors, index, str(e))
    if stop.is_set():
        sys.exit(0)
    server.set_model(loaded[0])
    if spec.experiments.file != "off":  # the experiment file lives beside the registry pointer
        server.start_experiments(pathlib.Path(spec.artifacts), spec.experiments)
    _start_gated(server, ready, fleet_ready, stop)
    watcher = RegistryWatcher(resolve, set_model=server.set_model, served_version=server.served_version,
                              metrics=server.metrics, config=spec.hotswap, verify=spec.verify).start()
    while not stop.wait(0.25):
        if reload.is_set():
            reload.clear()
            threading.Thread(target=watcher.check, kwargs={"force": True}, name="model-reloader", daemon=True).start()
    watcher.stop()
    _stop_and_exit(server)


def _run_generation_child(spec: FleetSpec, index: int, generation: int, version_dir: str, ready,
                          metrics_port=None, fleet_ready=None, errors=None) -> None:
    """blue_green mode: load `version_dir` without listening, then listen, report ready, serve until SIGTERM.

    With metrics on, /metrics is served on a free loopback port written to `metrics_port` (a shared
    int) before `ready` is set; the supervisor relays it on the fleet's fixed port.
    Exits EXIT_REFUSED when the version is refused (verification, consistency or warm-up failed).
    """
    from core.errors import ArtifactError
    from serving.hotswap import load_checked

    _setup_logging(spec, f"g{generation}.{index}")
    stop, _ = _child_signals()  # SIGHUP: the supervisor owns reloads
    name = pathlib.Path(version_dir).name
    config = dataclasses.replace(spec.child_server_config(index), metrics_port=0)
    try:
        _limit_threads(config)
        model = load_checked(version_dir, verify=spec.verify, warmup_users=spec.hotswap.warmup_users)
    except ArtifactError as e:
        child_log.error("refused version %s: %s", name, e,
                        extra={"event": "model_refused", "model_version": name, "reason": str(e)})
        if errors is not None and generation == 0:
            errors.put((index, f"refused version {name}: {e}"))
            errors.close()
            errors.join_thread()
        sys.exit(EXIT_REFUSED)
    if stop.is_set():
        sys.exit(0)
    try:
        server = _listen(spec, config)
    except RecsysError as e:
        _startup_failed(errors, index, str(e))
    server.set_model(model)
    if spec.experiments.file != "off":
        server.start_experiments(pathlib.Path(version_dir).parent, spec.experiments)
    if spec.server.metrics_port and metrics_port is not None:
        http, _ = server.metrics.serve_http(0, "127.0.0.1")
        metrics_port.value = http.server_port
    if fleet_ready is None:
        server.start()
        ready.set()
    else:
        _start_gated(server, ready, fleet_ready, stop)
    while not stop.wait(0.5):
        pass
    _stop_and_exit(server)



def _stop_and_exit(server: Any) -> NoReturn:
    """Graceful stop, then a prompt exit: `server.stop()` drains RPCs, the batcher and the event-log
    threads explicitly, so the process leaves with `os._exit` instead of the interpreter's shutdown,
    which joins every thread pool worker still inside a handler (under heavy load that made a stopping
    process outlive the supervisor's grace and get SIGKILLed). Threads still running are logged."""
    started = time.monotonic()
    server.stop()
    alive = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()
                   and not t.daemon)
    log.info("server process stopped in %.1fs", time.monotonic() - started,
             extra={"event": "process_stopped", "seconds": round(time.monotonic() - started, 3),
                    "threads_still_running": alive})
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

@dataclasses.dataclass
class _Slot:
    """One server process of a generation; replaced in place when it dies and is restarted."""

    process: Any
    ready: Any                       # multiprocessing Event: loaded and listening
    metrics_port: Any = None         # shared int (blue_green): the process's loopback metrics port
    started: float = dataclasses.field(default_factory=time.monotonic)
    deaths: int = 0                  # deaths in a row (reset after restart_stable_s of life)
    restart_at: float | None = None  # dead, to be restarted then


@dataclasses.dataclass
class _Generation:
    number: int
    version_dir: pathlib.Path
    slots: list[_Slot]

    @property
    def processes(self) -> list:
        return [s.process for s in self.slots]

    @property
    def metrics_ports(self) -> list:
        return [s.metrics_port for s in self.slots]

    def all_ready(self) -> bool:
        return all(s.process.is_alive() and s.ready.is_set() for s in self.slots)

    def ready_count(self) -> int:
        return sum(1 for s in self.slots if s.process.is_alive() and s.ready.is_set())

    def first_dead(self) -> Any | None:
        return next((p for p in self.processes if not p.is_alive()), None)

    def signal(self, sig: int) -> None:
        for p in self.processes:
            if p.pid is not None and p.is_alive():
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def stop(self, timeout: float, kill: bool = False) -> list[int | None]:
        """SIGTERMs (or SIGKILLs) every live process and waits; the exit codes of those it stopped (a process
        already dead and waiting for its restart is not counted)."""
        running = [p for p in self.processes if p.is_alive()]
        self.signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in running:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        return [p.exitcode for p in running]


class Fleet:
    """The supervisor: see the module docstring."""

    def __init__(self, spec: FleetSpec, poll_s: float = 0.1) -> None:
        self.spec = spec
        self.poll_s = poll_s
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._check_now = threading.Event()
        self._fleet_ready = self._ctx.Event()  # set once the first generation is ready: processes report SERVING
        self._errors = self._ctx.Queue()      # (index, reason) from processes that could not start
        self._serving: _Generation | None = None  # the generation taking the traffic (metrics relays point at it)

    def run(self) -> int:
        handlers = {signal.SIGTERM: lambda *_: self._stopping.set(), signal.SIGINT: lambda *_: self._stopping.set()}
        if hasattr(signal, "SIGHUP"):
            handlers[signal.SIGHUP] = lambda *_: self._check_now.set()
        previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
        servers = self._start_metrics()
        try:
            if self.spec.hotswap.swap_mode == "blue_green":
                return self._blue_green()
            return self._run_following()
        finally:
            for server in servers:
                server.shutdown()
                server.server_close()
            for sig, h in previous.items():
                signal.signal(sig, h)

    # -- processes: start, wait, restart -----------------------------------------------------
    def _spawn(self, gen_number: int, version_dir: pathlib.Path | None, index: int) -> _Slot:
        """A started process for slot `index` (in_process mode when `version_dir` is None). Only the first
        generation's first processes report startup errors (nobody reads the queue later)."""
        ready = self._ctx.Event()
        errors = self._errors if not self._fleet_ready.is_set() else None
        if version_dir is None:
            process = self._ctx.Process(target=_run_following_child,
                                        args=(self.spec, index, ready, self._fleet_ready, errors),
                                        name=f"recsys-serve-{index}")
            port = None
        else:
            port = self._ctx.Value("i", 0)
            process = self._ctx.Process(target=_run_generation_child,
                                        args=(self.spec, index, gen_number, str(version_dir), ready, port,
                                              self._fleet_ready, errors),
                                        name=f"recsys-serve-g{gen_number}.{index}")
        process.start()
        return _Slot(process, ready, port)

    def _start(self, number: int, version_dir: pathlib.Path | None) -> _Generation:
        slots = [self._spawn(number, version_dir, i) for i in range(self.spec.server.processes)]
        name = version_dir.name if version_dir is not None else self.spec.version
        log.info("generation %d: starting %d processes for version %s", number, len(slots), name,
                 extra={"event": "processes_started" if number == 0 else "generation_starting",
                        "generation": number, "model_version": name, "pids": [s.process.pid for s in slots]})
        return _Generation(number, version_dir or pathlib.Path(self.spec.version), slots)

    def _wait_ready(self, gen: _Generation) -> bool:
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            if gen.all_ready():
                return True
            if gen.first_dead() is not None:
                return False
            time.sleep(self.poll_s)
        return False

    def _startup_error(self, gen: _Generation, codes: list) -> FleetStartError:
        """The first reason a process of `gen` gave for not starting, as one line."""
        try:
            index, reason = self._errors.get(timeout=2.0)
            return FleetStartError(reason if len(gen.slots) == 1 else f"server process {index}: {reason}")
        except queue.Empty:
            return FleetStartError(f"the server processes did not become ready (exit codes {codes}); see the log")

    def _start_fleet(self, version_dir: pathlib.Path | None) -> _Generation:
        """Generation 0, every process ready, then SERVING everywhere; FleetStartError if one fails."""
        gen = self._start(0, version_dir)
        if not self._wait_ready(gen):
            dead = gen.first_dead()
            stopping = self._stopping.is_set()
            codes = gen.stop(self.spec.server.grace_s + 30)
            if stopping:
                return gen
            codes = [p.exitcode for p in gen.processes] if dead is not None else codes
            raise self._startup_error(gen, codes)
        self._serving = gen
        self._fleet_ready.set()
        log.info("fleet ready: %d processes serving", len(gen.slots),
                 extra={"event": "fleet_ready", "pids": [p.pid for p in gen.processes]})
        return gen

    def _tend(self, gen: _Generation) -> None:
        """Schedules a restart (with backoff) for each dead process of `gen`; starts those that are due."""
        now = time.monotonic()
        for i, slot in enumerate(gen.slots):
            if slot.restart_at is None:
                if slot.process.is_alive():
                    continue
                if now - slot.started >= self.spec.restart_stable_s:
                    slot.deaths = 0
                slot.deaths += 1
                delay = self.spec.restart_delay(slot.deaths)
                slot.restart_at = now + delay
                self._exits.inc()
                log.error("server process %s (pid %s) exited with code %s; restarting it in %.2fs (death %d in a "
                          "row); the other processes keep serving", slot.process.name, slot.process.pid,
                          slot.process.exitcode, delay, slot.deaths,
                          extra={"event": "process_exited", "exitcode": slot.process.exitcode, "slot": i,
                                 "restart_in_s": round(delay, 3), "deaths_in_a_row": slot.deaths})
            elif now >= slot.restart_at:
                new = self._spawn(gen.number, None if self.spec.hotswap.swap_mode != "blue_green"
                                  else gen.version_dir, i)
                new.deaths = slot.deaths
                gen.slots[i] = new
                self._restarts.inc()
                log.warning("restarted server process %d (pid %s)", i, new.process.pid,
                            extra={"event": "process_restarted", "slot": i, "pid": new.process.pid,
                                   "deaths_in_a_row": new.deaths})

    # -- in_process: N processes that follow the registry themselves ------------------------
    def _run_following(self) -> int:
        gen = self._start_fleet(None)
        while not self._stopping.is_set():
            if self._check_now.is_set():
                self._check_now.clear()
                gen.signal(signal.SIGHUP)
            self._tend(gen)
            time.sleep(self.poll_s)
        codes = gen.stop(self.spec.server.grace_s + 30)
        log.info("all server processes stopped", extra={"event": "processes_stopped", "exitcodes": codes})
        return 1 if any(c not in (0, None) for c in codes) else 0

    # -- blue_green ---------------------------------------------------------------------------
    def _resolve(self) -> pathlib.Path:
        from core.registry import resolve_version

        return pathlib.Path(resolve_version(self.spec.artifacts, self.spec.version)).resolve()

    def _start_metrics(self) -> list:
        """The supervisor's registry at base + N; in blue_green mode also a relay per process index."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        from serving.hotswap import SwapMetrics

        base, n, host = self.spec.server.metrics_port, self.spec.server.processes, self.spec.server.host
        reg = CollectorRegistry()
        self._restarts = Counter("recsys_fleet_restarts", "Server processes restarted after they died", registry=reg)
        self._exits = Counter("recsys_fleet_process_exits", "Server processes that exited on their own (died)",
                              registry=reg)
        Gauge("recsys_fleet_processes_ready", "Server processes of the serving generation that are ready",
              registry=reg).set_function(lambda: 0 if self._serving is None else self._serving.ready_count())
        Gauge("recsys_fleet_generation", "The blue/green generation serving now", registry=reg).set_function(
            lambda: -1 if self._serving is None else self._serving.number)
        blue_green = self.spec.hotswap.swap_mode == "blue_green"
        if blue_green:
            self.swaps = SwapMetrics(reg)
        if not base:
            return []
        relays = ([_MetricsRelay.start(host, base + i, lambda i=i: self._metrics_port(i)) for i in range(n)]
                  if blue_green else [])
        supervisor, _ = start_http_server(base + n, addr=host, registry=reg)
        return [*relays, supervisor]

    def _metrics_port(self, index: int) -> int:
        gen = self._serving
        if gen is None or index >= len(gen.slots) or gen.slots[index].metrics_port is None:
            return 0
        return int(gen.slots[index].metrics_port.value)

    def _blue_green(self) -> int:
        grace = self.spec.server.grace_s + 30
        started = time.monotonic()
        current = self._start_fleet(self._resolve())
        if self._stopping.is_set():
            return 0
        self.swaps.loaded(time.monotonic() - started)
        log.info("serving version %s", current.version_dir.name,
                 extra={"event": "model_swapped", "model_version": current.version_dir.name, "generation": 0})
        refused: tuple | None = None
        interval = self.spec.hotswap.watch_interval_s
        next_check = time.monotonic() + interval
        while not self._stopping.is_set():
            self._tend(current)
            due = interval > 0 and time.monotonic() >= next_check
            if self._check_now.is_set() or due:
                self._check_now.clear()
                next_check = time.monotonic() + interval
                current, refused = self._maybe_swap(current, refused, grace)
            time.sleep(self.poll_s)
        codes = current.stop(grace)
        log.info("all server processes stopped", extra={"event": "processes_stopped", "exitcodes": codes})
        return 1 if any(c not in (0, None) for c in codes) else 0

    def _maybe_swap(self, current: _Generation, refused: tuple | None, grace: float) -> tuple[_Generation, Any]:
        """Starts, checks and switches to the version the registry names, if it is new."""
        try:
            target = self._resolve()
        except RecsysError as e:
            log.warning("registry check failed: %s", e, extra={"event": "registry_check_failed"})
            return current, refused
        if target == current.version_dir:
            return current, refused
        manifest = target / registry.MANIFEST
        key = (str(target), manifest.stat().st_mtime_ns if manifest.exists() else None)
        if key == refused:
            return current, refused
        started = time.monotonic()
        new = self._start(current.number + 1, target)
        if not self._wait_ready(new):
            new.stop(grace, kill=self._stopping.is_set())
            codes = [p.exitcode for p in new.processes]
            if not self._stopping.is_set():
                log.error("refused version %s: its processes did not become ready (exit codes %s); still serving %s",
                          target.name, codes, current.version_dir.name,
                          extra={"event": "model_refused", "model_version": target.name, "exitcodes": codes})
                self.swaps.refused(target.name)
            return current, key
        seconds = time.monotonic() - started
        self._serving = new  # the metrics relays follow the generation that now takes the traffic
        self.swaps.loaded(seconds)
        log.info("swapped to version %s (new generation ready in %.1fs); draining generation %d",
                 target.name, seconds, current.number,
                 extra={"event": "model_swapped", "model_version": target.name, "generation": new.number,
                        "load_seconds": round(seconds, 3)})
        codes = current.stop(grace)
        log.info("generation %d stopped", current.number,
                 extra={"event": "generation_stopped", "generation": current.number, "exitcodes": codes})
        return new, refused


class _MetricsRelay(http.server.BaseHTTPRequestHandler):
    """GET on a fixed port → the same path on the current generation's loopback metrics port."""

    target: Callable[[], int]  # set per relay by `start`

    @classmethod
    def start(cls, host: str, port: int, target: Callable[[], int]) -> http.server.ThreadingHTTPServer:
        handler = type("Relay", (cls,), {"target": staticmethod(target)})
        server = http.server.ThreadingHTTPServer((host, port), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"metrics-relay-{port}", daemon=True).start()
        return server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        port = self.target()
        if not port:
            self._reply(503, b"no generation is serving yet\n", "text/plain")
            return
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{self.path}", timeout=10) as r:
                self._reply(r.status, r.read(), r.headers.get("Content-Type", "text/plain"))
        except urllib.error.HTTPError as e:
            self._reply(e.code, e.read(), "text/plain")
        except OSError as e:  # the generation is stopping or just stopped: the next scrape reaches the new one
            self._reply(503, f"generation metrics unreachable: {e}\n".encode(), "text/plain")

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # scrapes are not news


def serve_processes(spec: FleetSpec) -> int:
    """Runs the fleet until SIGTERM/SIGINT; 0 after a clean stop. FleetStartError (a RecsysError: one line,
    exit 2) when a process could not start."""
    return Fleet(spec).run()
