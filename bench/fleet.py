"""Fault runs for issue 18, parts 3 and 4: kill -9 a serving process under load, count failed requests.

  .venv/bin/python bench/fleet.py --version-dir /work/artifacts-ref/ml-user-temporal/<version> --rounds 3

Two set-ups, each with a redis-server started here and paced clients (--clients per group, --rate
Recommend/s each, user ids from the version's vocabulary, deadline --deadline-s):

  fleet     one `recsys serve --processes 2` (SO_REUSEPORT); each client has a connection of its
            own. Round r kills (SIGKILL) process slot r % 2 — after round 1 every connection sits on
            the survivor, so round 2 takes them all down at once — and waits until the supervisor
            has restarted it and it is ready again (recsys_fleet_processes_ready == 2).
  replicas  two independent `recsys serve` (one process each) behind the client-side round robin
            (target ipv4:127.0.0.1:p1,127.0.0.1:p2). Round r kills replica r % 2, starts it again
            on the same port and waits until it reports SERVING (as an orchestrator would).

Two client groups run side by side through the same kills: `retry` uses the documented client config
(serving.security.CLIENT_SERVICE_CONFIG: round robin + retries of UNAVAILABLE/CANCELLED), `no-retry`
the same config with retries disabled (grpc.enable_retries 0). Target: 0 failed requests with retry.
Prints per set-up and group: requests, failed (by code); and the load average.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from serving.local_redis import LocalRedis, free_port  # noqa: E402


def metric(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


class Group:
    """`clients` paced clients on their own channels (own connections) to `target`; counts outcomes."""

    def __init__(self, target: str, users: list[str], clients: int, rate: float, deadline_s: float,
                 retry: bool) -> None:
        self.target, self.users, self.rate, self.deadline, self.retry = target, users, rate, deadline_s, retry
        self.codes: collections.Counter = collections.Counter()
        self.samples: list[str] = []  # the first failures' details
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def _run(self, client: int) -> None:
        import grpc

        from protos.recsys.v1 import recommender_pb2 as pb
        from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
        from serving.security import CLIENT_OPTIONS, client_channel

        options = [*CLIENT_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        if not self.retry:
            options.append(("grpc.enable_retries", 0))
        with client_channel(self.target, options=options) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            i, period, next_at = client, 1.0 / self.rate, time.monotonic()
            while not self._stop.is_set():
                user = self.users[i % len(self.users)]
                i += 7
                try:
                    stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10), timeout=self.deadline)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                    with self._lock:
                        if len(self.samples) < 5:
                            self.samples.append(f"{code}: {e.details()}")
                with self._lock:
                    self.codes[code] += 1
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))

    def start(self) -> Group:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return dict(self.codes)

    def total(self) -> int:
        with self._lock:
            return sum(self.codes.values())


def serve_cmd(version_dir: pathlib.Path, port: int, metrics_port: int, redis_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", "serve", "--artifacts",
            str(version_dir.parent), "--version", version_dir.name, "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port), "--redis-url", redis_url, "--workers", "4", "--grace-s", "1",
            "--watch-interval-s", "0", "--log-format", "json", *extra]


def spawn(cmd: list[str], log_path: pathlib.Path) -> subprocess.Popen:
    with open(log_path, "a") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def consecutive_free(n: int) -> int:
    import socket

    for _ in range(100):
        first = free_port()
        try:
            for p in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
    raise SystemExit("no consecutive free ports")


def run_groups(target: str, users: list[str], args, kill_round) -> dict:
    groups = {"retry": Group(target, users, args.clients, args.rate, args.deadline_s, True).start(),
              "no-retry": Group(target, users, args.clients, args.rate, args.deadline_s, False).start()}
    time.sleep(args.settle_s)
    for r in range(args.rounds):
        kill_round(r)
        time.sleep(args.settle_s)
    out = {name: g.stop() for name, g in groups.items()}
    for name, g in groups.items():
        for sample in g.samples:
            print(f"  {name} failure: {sample[:300]}", flush=True)
    return out


def bench_fleet(version_dir: pathlib.Path, users: list[str], redis_url: str, args, workdir: pathlib.Path) -> dict:
    port, metrics = free_port(), consecutive_free(3)
    log_path = workdir / "fleet.log"
    proc = spawn(serve_cmd(version_dir, port, metrics, redis_url, "--processes", "2"), log_path)
    try:
        wait(lambda: metric(metrics + 2, "recsys_fleet_processes_ready") == 2, 600, "the fleet")

        def pids() -> list[int]:
            entries = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
            current = next(e["pids"] for e in entries if e.get("event") == "processes_started")
            for e in entries:
                if e.get("event") == "process_restarted":
                    current[e["slot"]] = e["pid"]
            return current

        def kill_round(r: int) -> None:
            restarts = metric(metrics + 2, "recsys_fleet_restarts_total") or 0
            os.kill(pids()[r % 2], signal.SIGKILL)
            t0 = time.monotonic()
            wait(lambda: (metric(metrics + 2, "recsys_fleet_restarts_total") or 0) > restarts, 60, "the restart")
            wait(lambda: metric(metrics + 2, "recsys_fleet_processes_ready") == 2, 600, "the restarted process")
            print(f"  fleet round {r + 1}: killed slot {r % 2}, restarted and ready after "
                  f"{time.monotonic() - t0:.1f}s", flush=True)

        return run_groups(f"127.0.0.1:{port}", users, args, kill_round)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def bench_replicas(version_dir: pathlib.Path, users: list[str], redis_url: str, args, workdir: pathlib.Path) -> dict:
    ports, metrics = [free_port(), free_port()], consecutive_free(2)
    logs = [workdir / f"replica{i}.log" for i in (0, 1)]
    procs = [spawn(serve_cmd(version_dir, ports[i], metrics + i, redis_url), logs[i]) for i in (0, 1)]
    try:
        for i in (0, 1):
            wait(lambda i=i: serving(ports[i]), 600, f"replica {i}")

        def kill_round(r: int) -> None:
            i = r % 2
            procs[i].kill()
            procs[i].wait()
            t0 = time.monotonic()
            procs[i] = spawn(serve_cmd(version_dir, ports[i], metrics + i, redis_url), logs[i])
            wait(lambda: serving(ports[i]), 600, f"replica {i} again")
            print(f"  replicas round {r + 1}: killed replica {i}, started again and SERVING after "
                  f"{time.monotonic() - t0:.1f}s", flush=True)

        return run_groups(f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", users, args, kill_round)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version-dir", required=True, type=pathlib.Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3, help="clients per group (two groups)")
    parser.add_argument("--rate", type=float, default=50.0, help="Recommend/s per client")
    parser.add_argument("--deadline-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=5.0, help="load before the first and after each kill")
    parser.add_argument("--setups", default="fleet,replicas")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    version_dir = args.version_dir.resolve()
    from pipeline import RecommendPipeline

    users = [str(u) for u in RecommendPipeline.from_version_dir(version_dir).features.vocabularies["user_id"]
             .tokens[:200]]
    results = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = pathlib.Path(tmp)
        redis = LocalRedis(workdir / "redis", appendonly=False)
        (workdir / "redis").mkdir()
        redis.start()
        try:
            for setup in args.setups.split(","):
                print(f"{setup}: {args.rounds} kills, {args.clients} clients × {args.rate:g}/s per group", flush=True)
                run = bench_fleet if setup == "fleet" else bench_replicas
                results[setup] = run(version_dir, users, redis.url, args, workdir)
                for group, codes in results[setup].items():
                    failed = sum(n for c, n in codes.items() if c != "OK")
                    print(f"  {group:<8} requests {sum(codes.values()):>6}  failed {failed:>4}  {codes}", flush=True)
        finally:
            redis.stop()
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
