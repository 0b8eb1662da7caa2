"""`recsys serve --processes N` and `--swap-mode blue_green`: a fleet of server processes on one port.

One Python process serves a cache hit in ~20 µs of handler work, but the gRPC poller and
the handler threads share one GIL, so on an idle machine a single process answers cache
hits at ~0.77× the rate of an empty RPC (bench/RESULTS.md, serving). gRPC sets
SO_REUSEPORT on Linux, so several processes can listen on the same port and the kernel
spreads connections over them; each has its own copy of the model and shares Redis.

The supervisor (this module) starts the processes with the "spawn" start method (a clean
interpreter each: forking a process that has loaded TensorFlow is unsafe), stops them
gracefully on SIGTERM/SIGINT, and stops them all if one exits on its own — a half-sized
fleet should be restarted by the orchestrator, not limp on. How versions change:

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
               or its manifest changes. No serving process ever runs TensorFlow's loader,
               whose GIL stalls are what an in-process swap adds to tail latency.

Metrics ports are fixed for the life of the fleet, so a static Prometheus scrape config keeps
working across swaps: process i serves /metrics on metrics_port + i. In blue_green mode two
generations overlap, so each generation process serves its metrics on a free loopback port
and the supervisor answers on metrics_port + i by relaying the *current* generation's process
i (`_MetricsRelay`); the supervisor's own series (recsys_model_loads_total{result},
recsys_model_refused_info{version}, recsys_model_load_seconds, recsys_fleet_generation) are
on metrics_port + N: a refused version is counted there, and the refused gauge clears when a
version is swapped in.
"""
from __future__ import annotations

import dataclasses
import http.server
import logging
import multiprocessing
import os
import pathlib
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

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
child_log = logging.getLogger(__name__ + ".child")  # a generation process's own events


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
    experiments: ExperimentsConfig = ExperimentsConfig()  # every process runs the same experiment file

    def child_server_config(self, index: int) -> ServerConfig:
        """Process `index`: one process, metrics on metrics_port + index (0 = off)."""
        base = self.server.metrics_port
        return dataclasses.replace(self.server, processes=1, metrics_port=base + index if base else 0)


def _setup_logging(spec: FleetSpec, tag: str) -> None:
    from serving.metrics import JsonFormatter

    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[{tag}]: %(message)s")
    if spec.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def _run_following_child(spec: FleetSpec, index: int) -> None:
    """in_process mode: one full `serve()` that follows the registry by itself."""
    from core.registry import resolve_version
    from serving.server import serve

    _setup_logging(spec, str(index))
    sys.exit(serve(lambda: resolve_version(spec.artifacts, spec.version), spec.child_server_config(index),
                   spec.cache, spec.limits, verify=spec.verify, hotswap=spec.hotswap, security=spec.security,
                   events=spec.events, experiments=spec.experiments))


def _run_generation_child(spec: FleetSpec, index: int, generation: int, version_dir: str, ready,
                          metrics_port=None) -> None:
    """blue_green mode: load `version_dir` without listening, then listen, report ready, serve until SIGTERM.

    With metrics on, /metrics is served on a free loopback port written to `metrics_port` (a shared
    int) before `ready` is set; the supervisor relays it on the fleet's fixed port.
    Exits 3 when the version is refused (verification, consistency or warm-up failed).
    """
    from core.errors import ArtifactError
    from serving.hotswap import load_checked
    from serving.server import RecommendServer

    _setup_logging(spec, f"g{generation}.{index}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor owns reloads
    name = pathlib.Path(version_dir).name
    try:
        model = load_checked(version_dir, verify=spec.verify, warmup_users=spec.hotswap.warmup_users)
    except ArtifactError as e:
        child_log.error("refused version %s: %s", name, e,
                        extra={"event": "model_refused", "model_version": name, "reason": str(e)})
        sys.exit(3)
    if stop.is_set():
        sys.exit(0)
    server = RecommendServer(dataclasses.replace(spec.child_server_config(index), metrics_port=0), spec.cache,
                             spec.limits, security=spec.security, events=spec.events)
    server.set_model(model)
    server.start()
    if spec.experiments.file != "off":
        server.start_experiments(pathlib.Path(version_dir).parent, spec.experiments)
    if spec.server.metrics_port and metrics_port is not None:
        http, _ = server.metrics.serve_http(0, "127.0.0.1")
        metrics_port.value = http.server_port
    ready.set()
    while not stop.wait(0.5):
        pass
    server.stop()
    sys.exit(0)


@dataclasses.dataclass
class _Generation:
    number: int
    version_dir: pathlib.Path
    processes: list
    ready: list
    metrics_ports: list = dataclasses.field(default_factory=list)  # shared ints: each process's loopback port

    def alive(self) -> list:
        return [p for p in self.processes if p.is_alive()]

    def report_dead(self) -> bool:
        """True (and logged) if a process of this generation has exited on its own."""
        dead = [p for p in self.processes if not p.is_alive()]
        if dead:
            log.error("server process %s exited with code %s; stopping the fleet", dead[0].name, dead[0].exitcode,
                      extra={"event": "process_exited", "exitcode": dead[0].exitcode})
        return bool(dead)

    def signal(self, sig: int) -> None:
        for p in self.processes:
            if p.pid is not None and p.is_alive():
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def stop(self, timeout: float, kill: bool = False) -> list[int | None]:
        """SIGTERMs (or SIGKILLs) every process and waits; the exit codes."""
        self.signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        return [p.exitcode for p in self.processes]


class Fleet:
    """The supervisor: see the module docstring."""

    def __init__(self, spec: FleetSpec, poll_s: float = 0.25) -> None:
        self.spec = spec
        self.poll_s = poll_s
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._check_now = threading.Event()
        self._serving: _Generation | None = None  # the generation the metrics relays point at

    def run(self) -> int:
        handlers = {signal.SIGTERM: lambda *_: self._stopping.set(), signal.SIGINT: lambda *_: self._stopping.set()}
        if hasattr(signal, "SIGHUP"):
            handlers[signal.SIGHUP] = lambda *_: self._check_now.set()
        previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
        try:
            if self.spec.hotswap.swap_mode == "blue_green":
                return self._run_blue_green()
            return self._run_following()
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    # -- in_process: N processes that follow the registry themselves ------------------------
    def _run_following(self) -> int:
        n = self.spec.server.processes
        gen = _Generation(0, pathlib.Path(self.spec.version), [
            self._ctx.Process(target=_run_following_child, args=(self.spec, i), name=f"recsys-serve-{i}")
            for i in range(n)], [])
        for p in gen.processes:
            p.start()
        log.info("started %d server processes", n, extra={"event": "processes_started",
                                                            "pids": [p.pid for p in gen.processes]})
        failed = False
        while gen.alive():
            if self._stopping.is_set():
                break
            if self._check_now.is_set():
                self._check_now.clear()
                gen.signal(signal.SIGHUP)
            if gen.report_dead():
                failed = True
                break
            time.sleep(self.poll_s)
        codes = gen.stop(self.spec.server.grace_s + 30)
        log.info("all server processes stopped", extra={"event": "processes_stopped", "exitcodes": codes})
        return 1 if failed or any(c not in (0, None) for c in codes) else 0

    # -- blue_green ---------------------------------------------------------------------------
    def _resolve(self) -> pathlib.Path:
        from core.registry import resolve_version

        return pathlib.Path(resolve_version(self.spec.artifacts, self.spec.version)).resolve()

    def _start(self, number: int, version_dir: pathlib.Path) -> _Generation:
        ready = [self._ctx.Event() for _ in range(self.spec.server.processes)]
        ports = [self._ctx.Value("i", 0) for _ in range(self.spec.server.processes)]
        procs = [self._ctx.Process(target=_run_generation_child,
                                   args=(self.spec, i, number, str(version_dir), ready[i], ports[i]),
                                   name=f"recsys-serve-g{number}.{i}") for i in range(self.spec.server.processes)]
        for p in procs:
            p.start()
        log.info("generation %d: starting %d processes for version %s", number, len(procs), version_dir.name,
                 extra={"event": "generation_starting", "generation": number, "model_version": version_dir.name,
                        "pids": [p.pid for p in procs]})
        return _Generation(number, version_dir, procs, ready, ports)

    def _wait_ready(self, gen: _Generation) -> bool:
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            if all(e.is_set() for e in gen.ready):
                return True
            if any(not p.is_alive() for p in gen.processes):
                return False
            time.sleep(self.poll_s)
        return False

    def _run_blue_green(self) -> int:
        relays = self._start_metrics()
        try:
            return self._blue_green()
        finally:
            for relay in relays:
                relay.shutdown()
                relay.server_close()

    def _start_metrics(self) -> list:
        """The fixed metrics ports: a relay per process index, the supervisor's registry at base + N."""
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        from serving.hotswap import SwapMetrics

        base, n, host = self.spec.server.metrics_port, self.spec.server.processes, self.spec.server.host
        registry = CollectorRegistry()
        self.swaps = SwapMetrics(registry)
        Gauge("recsys_fleet_generation", "The blue/green generation serving now", registry=registry).set_function(
            lambda: -1 if self._serving is None else self._serving.number)
        if not base:
            return []
        relays = [_MetricsRelay.start(host, base + i, lambda i=i: self._metrics_port(i)) for i in range(n)]
        supervisor, _ = start_http_server(base + n, addr=host, registry=registry)
        return [*relays, supervisor]

    def _metrics_port(self, index: int) -> int:
        gen = self._serving
        return 0 if gen is None or index >= len(gen.metrics_ports) else int(gen.metrics_ports[index].value)

    def _blue_green(self) -> int:
        grace = self.spec.server.grace_s + 30
        started = time.monotonic()
        try:
            current = self._start(0, self._resolve())
        except RecsysError as e:
            log.error("cannot resolve the version to serve: %s", e, extra={"event": "model_load_failed"})
            return 1
        if not self._wait_ready(current):
            codes = current.stop(grace)
            if not self._stopping.is_set():
                log.error("generation 0 never became ready (exit codes %s)", codes,
                          extra={"event": "model_load_failed", "exitcodes": codes})
            return 0 if self._stopping.is_set() else 1
        self._serving = current
        self.swaps.loaded(time.monotonic() - started)
        log.info("serving version %s", current.version_dir.name,
                 extra={"event": "model_swapped", "model_version": current.version_dir.name, "generation": 0})
        refused: tuple | None = None
        interval = self.spec.hotswap.watch_interval_s
        next_check = time.monotonic() + interval
        failed = False
        while not self._stopping.is_set():
            if current.report_dead():
                failed = True
                break
            due = interval > 0 and time.monotonic() >= next_check
            if self._check_now.is_set() or due:
                self._check_now.clear()
                next_check = time.monotonic() + interval
                current, refused = self._maybe_swap(current, refused, grace)
            time.sleep(self.poll_s)
        codes = current.stop(grace)
        log.info("all server processes stopped", extra={"event": "processes_stopped", "exitcodes": codes})
        return 1 if failed or any(c not in (0, None) for c in codes) else 0

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
            codes = new.stop(grace, kill=self._stopping.is_set())
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
    """Runs the fleet until SIGTERM/SIGINT; 0 after a clean stop, 1 if a process died on its own."""
    return Fleet(spec).run()
