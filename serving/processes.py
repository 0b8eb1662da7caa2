"""`recsys serve --processes N`: N server processes sharing one port.

One Python process serves a cache hit in ~20 µs of handler work, but the gRPC poller and
the handler threads share one GIL, so on an idle machine a single process answers cache
hits at ~0.77× the rate of an empty RPC (bench/RESULTS.md, serving). gRPC sets
SO_REUSEPORT on Linux, so several processes can listen on the same port and the kernel
spreads connections over them; each loads its own copy of the model, watches the registry
and swaps versions on its own, and shares the Redis cache with the others.

The supervisor (this module) starts the processes with the "spawn" start method (a clean
interpreter each: forking a process that has loaded TensorFlow is unsafe), forwards
SIGTERM/SIGINT (graceful stop) and SIGHUP (reload) to them, and stops them all if one
exits on its own — a half-sized fleet should be restarted by the orchestrator, not limp on.
Process i serves Prometheus metrics on metrics_port + i (when metrics are on).
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

from serving.server import ServerConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """Everything one server process needs (picklable: sent to a spawned interpreter)."""

    index: int
    artifacts: str
    version: str
    verify: bool
    configs: dict[str, Any]   # ServerConfig (processes=1), CacheConfig, RequestLimits, HotSwapConfig, SecurityConfig
    log_level: str
    log_format: str


def child_configs(config: ServerConfig, index: int) -> ServerConfig:
    """Process `index`'s server config: one process, its own metrics port."""
    metrics_port = config.metrics_port + index if config.metrics_port else 0
    return dataclasses.replace(config, processes=1, metrics_port=metrics_port)


def _run_child(spec: ChildSpec) -> None:
    """Entry point of one spawned server process."""
    import sys

    from recsys.registry import resolve_version
    from serving.metrics import JsonFormatter
    from serving.server import serve

    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[{spec.index}]: %(message)s")
    if spec.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    c = spec.configs
    code = serve(lambda: resolve_version(spec.artifacts, spec.version), c["server"], c["cache"], c["limits"],
                 verify=spec.verify, hotswap=c["hotswap"], security=c["security"])
    sys.exit(code)


def serve_processes(specs: list[ChildSpec], poll_s: float = 0.5) -> int:
    """Runs one server process per spec until SIGTERM/SIGINT; 0 when all stopped cleanly.

    Returns 1 if a process exited on its own (the others are then stopped gracefully).
    """
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_run_child, args=(spec,), name=f"recsys-serve-{spec.index}") for spec in specs]
    stopping = threading.Event()

    def forward(sig: int) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                try:
                    os.kill(child.pid, sig)
                except ProcessLookupError:
                    pass

    def on_stop(signum, _frame) -> None:
        stopping.set()
        forward(signal.SIGTERM)

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = lambda *_: forward(signal.SIGHUP)
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    failed = False
    try:
        for child in children:
            child.start()
        log.info("started %d server processes", len(children),
                 extra={"event": "processes_started", "pids": [c.pid for c in children]})
        while any(c.is_alive() for c in children):
            dead = [c for c in children if not c.is_alive()]
            if dead and not stopping.is_set():
                failed = True
                log.error("server process %s exited with code %s; stopping the others", dead[0].name,
                          dead[0].exitcode, extra={"event": "process_exited", "exitcode": dead[0].exitcode})
                stopping.set()
                forward(signal.SIGTERM)
            time.sleep(poll_s)  # signal handlers run during the sleep
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        for child in children:
            child.join()
    codes = [c.exitcode for c in children]
    log.info("all server processes stopped", extra={"event": "processes_stopped", "exitcodes": codes})
    return 1 if failed or any(code not in (0, None) for code in codes) else 0
