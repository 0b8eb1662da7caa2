"""Cross-process freshness: how often the very next Recommend to ANOTHER server process still shows an
engaged item, and for how long (issue 13; ARCHITECTURE.md "Streaming features").

  PYTHONPATH=$PWD .venv/bin/python bench/freshness.py --version-dir bench/out/feedback/full --json bench/out/freshness.json
  ... --cluster   (the same on a local 3-master Redis Cluster, serving/local_redis.py LocalRedisCluster)

Starts a redis-server and two `recsys serve` processes (A, B) on it. Per trial, a different known
user: B's list is asked for twice (so B's near cache holds it), the top item is logged as an
engagement through A (LogEvents; A bumps its own counter before it answers), then at once
Recommend to B, then to A (the logging process: never stale). B learns of the engagement from Redis's
invalidation message for the counter, which LogEvents makes sure is in B's socket before it answers
(serving/invalidation.py), or, where those cannot vouch (a Redis Cluster), by the counter read in the same
MGET as its cached entry (serving/cache.py): strict by construction either way, so 0 stale is expected;
before that it heard it by Redis pub/sub, asynchronously. If its answer still holds the item, B is asked again every 1 ms
until it does not, and the time since A's acknowledgement is the observed window. No timing is
asserted anywhere; this is the measurement the architecture notes quote.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def serve(version_dir: pathlib.Path, redis_url: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(version_dir.parent), "--version",
         version_dir.name, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--redis-url",
         redis_url, "--workers", "4", "--no-verify"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                                                   "PYTHONPATH": str(ROOT)})


def wait_serving(stub_health, process: subprocess.Popen, timeout: float = 300) -> None:
    from grpc_health.v1 import health_pb2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("recsys serve exited early")
        try:
            if stub_health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError("recsys serve did not become SERVING")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", required=True)
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--json", default="")
    p.add_argument("--cluster", action="store_true", help="a local 3-master Redis Cluster instead of one redis-server")
    a = p.parse_args()
    import grpc
    from grpc_health.v1 import health_pb2_grpc

    from core import layout
    from features import FeatureStore
    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving.local_redis import LocalRedis, LocalRedisCluster, free_port

    version_dir = pathlib.Path(a.version_dir).resolve()
    users = list(FeatureStore.load(layout.features_dir(version_dir)).vocabularies["user_id"].tokens)[:a.trials]
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp:
        redis = (LocalRedisCluster(pathlib.Path(tmp), masters=3) if a.cluster else LocalRedis(pathlib.Path(tmp))
                 ).start(timeout_s=30)
        ports = [free_port(), free_port()]
        procs = [serve(version_dir, redis.url, port) for port in ports]
        try:
            chans = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
            for ch, proc in zip(chans, procs):
                wait_serving(health_pb2_grpc.HealthStub(ch), proc)
            stub_a, stub_b = (pb_grpc.RecommenderStub(ch) for ch in chans)

            def ask(stub, user):
                return [i.item_id for i in stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10),
                                                          timeout=30).items]

            stale_a = stale_b = 0
            windows: list[float] = []
            polls: list[int] = []
            load = os.getloadavg()
            for n, user in enumerate(users):
                first = ask(stub_b, user)
                ask(stub_b, user)
                clicked = first[0]
                stub_a.LogEvents(pb.LogEventsRequest(events=[pb.Event(
                    event_id=f"fresh-{n}", user_id=user, item_id=clicked, type=pb.ENGAGEMENT,
                    timestamp=1_767_225_600 + n)]), timeout=30)
                acked = time.perf_counter()
                if clicked in ask(stub_b, user):  # B first: the request right after the acknowledgement
                    stale_b += 1
                    k = 0
                    while clicked in ask(stub_b, user):
                        k += 1
                        time.sleep(0.001)
                    windows.append(time.perf_counter() - acked)
                    polls.append(k)
                stale_a += clicked in ask(stub_a, user)  # A's next request (after B's): fresh by construction
            out = {"redis": "cluster (3 masters)" if a.cluster else "one redis-server", "trials": len(users), "stale_on_logging_process": stale_a,
                   "stale_on_other_process_next_request": stale_b,
                   "window_ms_median": float(np.median(windows) * 1e3) if windows else 0.0,
                   "window_ms_max": float(np.max(windows) * 1e3) if windows else 0.0,
                   "extra_polls_median": float(np.median(polls)) if polls else 0.0,
                   "loadavg_at_start": load, "loadavg_at_end": os.getloadavg()}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
            redis.stop()
    print(json.dumps(out, indent=2))
    if a.json:
        pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
