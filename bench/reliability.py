"""Reliability run: bounded load on a real server + real Redis while versions change and Redis dies.

  .venv/bin/python bench/reliability.py --train-synthetic --duration 60 --json bench/out/reliability.json
  .venv/bin/python bench/reliability.py --version-dir artifacts/<version>

Starts a redis-server and `recsys serve` (a child process, watching the registry every
--watch-interval-s), then runs --clients paced clients (--rate requests/s each, deadline
--deadline-s) for --duration seconds through four phases:

  steady          warm cache, nothing happens
  swap            `recsys promote v2` (registry.promote); the server loads, verifies, checks
                  and warms v2 in the background, then switches
  redis-restart   redis-server is SIGKILLed, restarted empty on the same port 3 s later
  corrupt-version CURRENT is pointed (bypassing promote) at a copy of v2 with one flipped
                  byte; the server must refuse it and keep serving v2

v2 is a sealed copy of v1 (same weights, another version name: its own cache namespace,
the same load/verify/warm-up path as a retrained version). With --precompute (default)
v2's candidate sets are written to Redis under its `pre:` keys before the promote — what
the Beam job does before a version is promoted — so the new version starts warm.

Prints per phase: requests sent, failed (any non-OK status), answers by source, p50/p99
latency, and the swap/steady p99 ratio; then the server's own counters. Targets: 0 failed
requests across the swap and the Redis restart; the corrupt version refused and v2 still
serving; p99 during the swap <= 2x steady.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from serving.local_redis import LocalRedis, free_port  # noqa: E402

PHASES = ("steady", "swap", "redis-restart", "corrupt-version")
TINY_TRAIN = ["--source", "synthetic", "--synthetic-num-users", "300", "--synthetic-num-items", "150",
              "--synthetic-num-interactions", "6000", "--epochs", "1", "--retrieval-embedding-dim", "16",
              "--retrieval-id-dim", "16", "--retrieval-feature-dim", "8", "--no-retrieval-progress",
              "--index-recall-queries", "100", "--no-promote"]


def train_tiny(workdir: pathlib.Path) -> pathlib.Path:
    from recsys.cli import main as recsys_main

    root = workdir / "trained"
    argv = ["--log-level", "WARNING", "train", "--artifacts", str(root), "--new-version", "base", *TINY_TRAIN]
    print("training: recsys", " ".join(argv), flush=True)
    if recsys_main(argv):
        raise SystemExit("training the bench version failed")
    return root / "base"


def make_registry(base: pathlib.Path, root: pathlib.Path) -> None:
    """v1, v2 (sealed copies of `base`) and v-corrupt (v2's files, one byte flipped after sealing); CURRENT = v1."""
    from core import layout, registry

    for name in ("v1", "v2", "v-corrupt"):
        shutil.copytree(base, root / name)
        manifest = {k: v for k, v in registry.read_manifest(root / name).items()
                    if k not in ("checksums", "version", "created", "git_sha")}
        registry.finalize_version(root / name, manifest)
    target = layout.items_file(root / "v-corrupt")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    registry.promote(root, "v1")


def precompute(version_dir: pathlib.Path, users: list[str], redis_url: str) -> float:
    """Writes `users`' candidate sets under the version's precomputed keys (the Beam job's output format)."""
    import redis

    from pipeline import RecommendPipeline, precomputed_key

    start = time.perf_counter()
    model = RecommendPipeline.from_version_dir(version_dir)
    client = redis.Redis.from_url(redis_url)
    with client.pipeline(transaction=False) as pipe:
        for user, cands in zip(users, model.candidates(users)):
            pipe.set(precomputed_key(model.model_version, user), cands.to_bytes())
        pipe.execute()
    client.close()
    return time.perf_counter() - start


def scrape(port: int) -> dict[str, float]:
    """The server's /metrics as {name{labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


class Load:
    """Paced clients: each sends `rate` Recommend/s on its own channel and records every outcome.

    A record is (t_sent, latency_s, code, source, model_version). Requests: a known user
    (90%) or an unknown one, k=10, default weights or random ones (half each).
    """

    def __init__(self, target: str, users: list[str], clients: int, rate: float, deadline_s: float,
                 seed: int) -> None:
        self.target, self.users, self.rate, self.deadline = target, users, rate, deadline_s
        self.records: list[tuple[float, float, str, int, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed + c,), daemon=True) for c in range(clients)]

    def _run(self, seed: int) -> None:
        import grpc

        from protos.recsys.v1 import recommender_pb2 as pb
        from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
        from serving.security import CLIENT_OPTIONS

        rng = random.Random(seed)
        period = 1.0 / self.rate
        # Clients retry as serving.security.client_channel does (idempotent reads; a stopping
        # server cancels calls that race with its shutdown).
        with grpc.insecure_channel(self.target, options=CLIENT_OPTIONS) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            next_at = time.monotonic() + rng.random() * period
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at = max(next_at + period, time.monotonic() - period)
                user = rng.choice(self.users) if rng.random() < 0.9 else f"unknown-{rng.randrange(10**6)}"
                request = pb.RecommendRequest(user_id=user, num_results=10)
                if rng.random() < 0.5:
                    request.weights.engagement = rng.uniform(0.1, 2.0)
                    request.weights.quality = rng.uniform(0.1, 2.0)
                sent = time.monotonic()
                try:
                    r = stub.Recommend(request, timeout=self.deadline)
                    record = (sent, time.monotonic() - sent, "OK", pb.Source.Name(r.source), r.model_version)
                except grpc.RpcError as e:
                    record = (sent, time.monotonic() - sent, e.code().name, "", "")
                with self._lock:
                    self.records.append(record)

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def versions_since(self, t: float) -> set[str]:
        with self._lock:
            return {r[4] for r in self.records if r[0] >= t and r[2] == "OK"}


def wait_until(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def summarize(records: list, windows: dict[str, tuple[float, float]]) -> dict[str, dict]:
    out = {}
    for phase, (lo, hi) in windows.items():
        rows = [r for r in records if lo <= r[0] < hi]
        lat = np.array([r[1] for r in rows if r[2] == "OK"]) * 1e3
        by_source: dict[str, int] = {}
        failed: dict[str, int] = {}
        for r in rows:
            if r[2] == "OK":
                by_source[r[3]] = by_source.get(r[3], 0) + 1
            else:
                failed[r[2]] = failed.get(r[2], 0) + 1
        out[phase] = {"seconds": round(hi - lo, 1), "sent": len(rows), "failed": sum(failed.values()),
                      "failed_by_code": failed, "by_source": by_source,
                      "versions": sorted({r[4] for r in rows if r[2] == "OK"}),
                      "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
                      "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--version-dir", default="", help="a trained version to serve (copied into a scratch registry)")
    p.add_argument("--train-synthetic", action="store_true", help="train a tiny synthetic version first")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rate", type=float, default=25.0, help="requests/s per client (default: %(default)s)")
    p.add_argument("--deadline-s", type=float, default=2.0)
    p.add_argument("--users", type=int, default=300, help="distinct known users in the load")
    p.add_argument("--workers", type=int, default=8, help="server handler threads")
    p.add_argument("--watch-interval-s", type=float, default=0.5)
    p.add_argument("--near-ttl-s", type=float, default=None,
                   help="forwarded to recsys serve; 0 sends every lookup to Redis (default: the server's default)")
    p.add_argument("--load-switch-interval-s", type=float, default=None,
                   help="forwarded to recsys serve (default: the server's own default)")
    p.add_argument("--swap-mode", choices=["in_process", "blue_green"], default="in_process",
                   help="forwarded to recsys serve (blue_green: the new version's processes load, then take over "
                        "the port; refusals and the final version are then read from the server log)")
    p.add_argument("--processes", type=int, default=1, help="forwarded to recsys serve")
    p.add_argument("--precompute", action=argparse.BooleanOptionalAction, default=True,
                   help="write v2's candidate sets to Redis before promoting it (as the Beam job would)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write config, hardware and results here")
    a = p.parse_args(argv)
    if not a.version_dir and not a.train_synthetic:
        p.error("give --version-dir or --train-synthetic")

    from core import layout, registry
    from features import FeatureStore

    work = pathlib.Path(tempfile.mkdtemp(prefix="recsys-reliability-"))
    try:
        redis_server = LocalRedis(work)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    server = None
    try:
        base = train_tiny(work) if a.train_synthetic else pathlib.Path(a.version_dir)
        root = work / "registry"
        root.mkdir()
        make_registry(base, root)
        users = list(FeatureStore.load(layout.features_dir(base)).vocabularies["user_id"].tokens)
        users = random.Random(a.seed).sample(users, min(a.users, len(users)))
        redis_server.start()
        port, metrics_port = free_port(), free_port()
        log_path = work / "serve.log"
        cmd = [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(root), "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", str(metrics_port), "--workers", str(a.workers),
               "--redis-url", redis_server.url, "--watch-interval-s", str(a.watch_interval_s),
               "--log-format", "json", "--swap-mode", a.swap_mode, "--processes", str(a.processes)]
        if a.swap_mode == "blue_green" or a.processes > 1:  # per-process metrics ports: read the log instead
            cmd[cmd.index("--metrics-port") + 1] = "0"
        if a.near_ttl_s is not None:
            cmd += ["--near-ttl-s", str(a.near_ttl_s)]
        if a.load_switch_interval_s is not None:
            cmd += ["--load-switch-interval-s", str(a.load_switch_interval_s)]
        print("server:", " ".join(cmd[1:]), flush=True)
        server = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        target = f"127.0.0.1:{port}"
        wait_until(lambda: _serving(target, server), 300, "the server to report SERVING")
        precompute_s = precompute(root / "v2", users, redis_server.url) if a.precompute else 0.0

        # Warm the v1 cache for every user once (steady state = a warm cache), then the timed run.
        _warm(target, users)
        load = Load(target, users, a.clients, a.rate, a.deadline_s, a.seed).start()
        t0 = time.monotonic()
        q = a.duration / 4
        events: dict[str, float] = {}
        time.sleep(q)
        events["promote"] = time.monotonic()
        registry.promote(root, "v2")
        events["swapped"] = wait_until(lambda: "v2" in load.versions_since(events["promote"]), 120, "the swap")
        time.sleep(max(0.0, t0 + 2 * q - time.monotonic()))
        events["redis_kill"] = time.monotonic()
        redis_server.kill()
        time.sleep(3.0)
        redis_server.start()
        events["redis_restarted"] = time.monotonic()
        time.sleep(max(0.0, t0 + 3 * q - time.monotonic()))
        events["corrupt"] = time.monotonic()
        tmp = root / ".CURRENT.bench"
        tmp.write_text("v-corrupt\n")
        tmp.replace(root / registry.POINTER)  # bypasses promote's verification on purpose
        time.sleep(max(0.0, t0 + a.duration - time.monotonic()))
        t_end = time.monotonic()
        load.stop()
        metrics = scrape(metrics_port) if cmd[cmd.index("--metrics-port") + 1] != "0" else {}
        corrupt_window_versions = load.versions_since(events["corrupt"])
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        redis_server.kill()

    windows = {"steady": (t0, events["promote"]), "swap": (events["promote"], events["redis_kill"]),
               "redis-restart": (events["redis_kill"], events["corrupt"]), "corrupt-version": (events["corrupt"], t_end)}
    phases = summarize(load.records, windows)
    # The strictest view of the swap: only the seconds the new version was loading in the background.
    loading = summarize(load.records, {"swap (loading)": (events["promote"], events["swapped"])})
    total = summarize(load.records, {"all": (t0, t_end)})["all"]
    ratio = (phases["swap"]["p99_ms"] / phases["steady"]["p99_ms"]) if phases["steady"]["p99_ms"] else float("nan")
    log_text = log_path.read_text()
    if metrics:
        refused = sum(v for k, v in metrics.items() if k.startswith("recsys_model_loads_total{result=refused"))
        serving_v2 = metrics.get("recsys_model_info{version=v2}", 0.0) == 1.0
    else:  # a fleet: the supervisor's log says what was refused and what serves
        entries = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        fleet = [e for e in entries if e.get("logger") == "serving.processes"]
        refused = sum(e.get("event") == "model_refused" for e in fleet)
        swaps = [e.get("model_version") for e in fleet if e.get("event") == "model_swapped"]
        serving_v2 = bool(swaps) and swaps[-1] == "v2" and corrupt_window_versions == {"v2"}
    print_table(a, {**phases, **loading}, total, ratio, events, t0, refused, serving_v2, metrics, precompute_s)
    loading_ratio = (loading["swap (loading)"]["p99_ms"] / phases["steady"]["p99_ms"]
                     if phases["steady"]["p99_ms"] and loading["swap (loading)"]["p99_ms"] else float("nan"))
    print(f"loading-only p99 / steady p99 = {loading_ratio:.2f}x")
    ok = (phases["swap"]["failed"] == 0 and phases["redis-restart"]["failed"] == 0 and refused >= 1 and serving_v2
          and ratio <= 2.0 and total["failed"] == 0)
    print(f"targets: {'MET' if ok else 'NOT MET'} (0 failed across swap and Redis restart, corrupt version refused "
          f"and v2 serving, swap p99 <= 2x steady)")
    if a.json:
        out = pathlib.Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "config": vars(a), "hardware": {"cpus": os.cpu_count(), "machine": platform.machine(),
                                            "python": platform.python_version()},
            "phases": {**phases, **loading}, "total": total, "swap_over_steady_p99": ratio,
            "loading_over_steady_p99": loading_ratio,
            "events_s": {k: round(v - t0, 2) for k, v in events.items()}, "refused_loads": refused,
            "serving_v2_at_end": serving_v2, "precompute_s": precompute_s,
            "server_metrics": {k: v for k, v in metrics.items() if k.startswith(
                ("recsys_model_", "recsys_redis_faults", "recsys_requests_total", "recsys_fallbacks"))},
            "refusal_log": [line for line in log_text.splitlines() if "model_refused" in line][:3],
        }, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _serving(target: str, proc: subprocess.Popen) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if proc.poll() is not None:
        raise SystemExit(f"the server exited with {proc.returncode}")
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def _warm(target: str, users: list[str]) -> None:
    import grpc

    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for user in users:
            stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10), timeout=30)


def print_table(a, phases, total, ratio, events, t0, refused, serving_v2, metrics, precompute_s) -> None:
    print(f"\nreliability run: {a.duration:.0f} s, {a.clients} clients x {a.rate:g} req/s, deadline {a.deadline_s} s, "
          f"{a.users} users (+10% unknown), server workers {a.workers}, precompute v2 "
          f"{f'on ({precompute_s:.1f} s)' if a.precompute else 'off'}")
    print("events (s from start): " + ", ".join(f"{k} {v - t0:.1f}" for k, v in events.items()))
    print(f"{'phase':<16} {'secs':>5} {'sent':>6} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7}  by source / versions")
    for name, s in [*phases.items(), ("all", total)]:
        src = " ".join(f"{k}={v}" for k, v in sorted(s["by_source"].items()))
        fail = f" failed={s['failed_by_code']}" if s["failed"] else ""
        print(f"{name:<16} {s['seconds']:>5} {s['sent']:>6} {s['failed']:>6} {s['p50_ms'] or 0:>7.2f} "
              f"{s['p99_ms'] or 0:>7.2f}  {src} | {','.join(s['versions'])}{fail}")
    print(f"swap p99 / steady p99 = {ratio:.2f}x (target <= 2)")
    print(f"server: refused loads {refused:.0f}, serving v2 at the end: {serving_v2}, "
          f"loads ok {metrics.get('recsys_model_loads_total{result=ok}', 0):.0f}, "
          f"redis faults {sum(v for k, v in metrics.items() if k.startswith('recsys_redis_faults_total')):.0f}")


if __name__ == "__main__":
    sys.exit(main())
