"""Redis Cluster fault runs (issue 18 part 2): kill -9 a master, then a replica, under a bounded load.

  PYTHONPATH=$PWD .venv/bin/python bench/redis_cluster.py --version-dir artifacts/<version> --json bench/out/redis_cluster.json

Starts a local Redis Cluster (3 masters + 1 replica each, cluster-node-timeout `--node-timeout-ms`,
serving/local_redis.py LocalRedisCluster) and one `recsys serve` process on it (near cache off by
default, so every hit is a cluster read and the outage is visible; with it on, warm users of an
unengaged history keep being served from the near cache through the outage). Per scenario:
`--threads` client threads send Recommend for `--users` known users (all warmed into the cache
first) for `--seconds`; `--kill-at-s` into the run one node is killed with SIGKILL (the first
master, then the first replica). Recorded per scenario: requests, failed requests (any gRPC
error), the share answered from the cache (CACHE or PRECOMPUTED) before the kill, during the
outage and after it, the hit share per 0.5 s bin, and the time from the kill to the last answer
that was not from the cache ("caching resumed"). The killed node is then restarted (it rejoins,
a former master as a replica) and the cluster waited on before the next scenario.

During the master kill a second loop sends LogEvents for 50 other users (one new engagement per call, retried on
UNAVAILABLE as a client does); afterwards the log is exported (`recsys events export`'s code)
and every acknowledged event id is looked up in the output: acknowledged-but-missing events are
the loss (Redis Cluster replicates asynchronously: writes acknowledged by a master in the
moment before it dies may not have reached its replica).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_scenario(stub, users, threads: int, seconds: float, kill_at_s: float, kill, log_stub=None) -> dict:
    import grpc

    from protos.recsys.v1 import recommender_pb2 as pb

    records: list[tuple[float, int, bool]] = []  # (seconds since start, source, ok)
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.monotonic()
    events = {"acked": [], "unavailable": 0, "other_errors": 0}

    def worker(k: int) -> None:
        n = k
        while not stop.is_set():
            user = users[n % len(users)]
            n += threads
            try:
                source = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10), timeout=10).source
                ok = True
            except grpc.RpcError:
                source, ok = -1, False
            with lock:
                records.append((time.monotonic() - t0, source, ok))

    def logger() -> None:
        n = 0
        while not stop.is_set():
            user = f"log-user-{n % 50}"  # not the load's users: their engagements would make those entries stale
            event = pb.Event(event_id=f"fault-{n}", user_id=user, item_id="1", type=pb.ENGAGEMENT,
                             timestamp=1_767_225_600 + n)
            while not stop.is_set():
                try:
                    log_stub.LogEvents(pb.LogEventsRequest(events=[event]), timeout=10)
                    events["acked"].append(event.event_id)
                    break
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        events["unavailable"] += 1
                    else:
                        events["other_errors"] += 1
                    time.sleep(0.01)
            n += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    if log_stub is not None:
        pool.append(threading.Thread(target=logger))
    for t in pool:
        t.start()
    time.sleep(kill_at_s)
    killed_at = time.monotonic() - t0
    kill()
    time.sleep(max(0.0, seconds - kill_at_s))
    stop.set()
    for t in pool:
        t.join()
    cached = {pb.CACHE, pb.PRECOMPUTED}
    after_kill = [r for r in records if r[0] >= killed_at]
    not_cached = [r[0] for r in after_kill if r[1] not in cached]
    resumed_at = max(not_cached) if not_cached else killed_at
    bins = {}
    for t, source, _ok in records:
        b = round(np.floor(t / 0.5) * 0.5, 1)
        hit, total = bins.get(b, (0, 0))
        bins[b] = (hit + (source in cached), total + 1)

    def share(rows):
        return round(sum(r[1] in cached for r in rows) / len(rows), 4) if rows else None

    out = {"requests": len(records), "failed": sum(not r[2] for r in records),
           "killed_at_s": round(killed_at, 3),
           "cache_share_before": share([r for r in records if r[0] < killed_at]),
           "cache_share_during": share([r for r in after_kill if r[0] <= resumed_at]),
           "cache_share_after": share([r for r in after_kill if r[0] > resumed_at]),
           "requests_after_resume": sum(r[0] > resumed_at for r in after_kill),
           "caching_resumed_after_s": round(resumed_at - killed_at, 3),
           "cache_share_per_half_second": {str(k): round(h / n, 3) for k, (h, n) in sorted(bins.items())}}
    if log_stub is not None:
        out["log_events"] = {"acked": len(events["acked"]), "unavailable_answers": events["unavailable"],
                             "other_errors": events["other_errors"]}
        out["_acked_ids"] = events["acked"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", required=True)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--kill-at-s", type=float, default=3.0)
    p.add_argument("--node-timeout-ms", type=int, default=1000)
    p.add_argument("--near-ttl-s", type=float, default=0.0,
                   help="the server's near cache (default off: every hit reads the cluster, so the outage shows)")
    p.add_argument("--json", default="")
    a = p.parse_args()
    import grpc
    import pandas as pd
    from grpc_health.v1 import health_pb2_grpc

    from bench.freshness import wait_serving
    from core import layout
    from features import FeatureStore
    from feedback import ExportConfig, export_events
    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving.local_redis import LocalRedisCluster, free_port

    version_dir = pathlib.Path(a.version_dir).resolve()
    users = list(FeatureStore.load(layout.features_dir(version_dir)).vocabularies["user_id"].tokens)[:a.users]
    results: dict = {"config": vars(a), "loadavg_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        started = time.monotonic()
        cluster = LocalRedisCluster(pathlib.Path(tmp) / "c", masters=3, replicas=1,
                                    node_timeout_ms=a.node_timeout_ms).start()
        results["cluster_start_s"] = round(time.monotonic() - started, 2)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(version_dir.parent), "--version",
             version_dir.name, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--redis-url",
             cluster.url, "--workers", "4", "--no-verify", "--near-ttl-s", str(a.near_ttl_s)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)})
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            wait_serving(health_pb2_grpc.HealthStub(channel), proc)
            stub = pb_grpc.RecommenderStub(channel)
            for _ in range(2):
                for user in users:
                    stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10), timeout=30)
            for kind in ("master", "replica"):
                victim = cluster.masters_now()[0] if kind == "master" else cluster.replicas_now()[0]
                res = run_scenario(stub, users, a.threads, a.seconds, a.kill_at_s, lambda v=victim: cluster.kill(v),
                                   log_stub=stub if kind == "master" else None)
                res["victim_port"] = victim
                if kind == "master":
                    assert cluster.wait_ok(60, ports=[p for p in cluster.running()])
                    acked = res.pop("_acked_ids")
                    out = pathlib.Path(tmp) / "export"
                    summary = export_events(ExportConfig(redis_url=cluster.url, output=str(out)))
                    rows = pd.read_parquet(out)
                    found = set(rows.loc[rows["type"] == "engagement", "event_id"])
                    missing = [e for e in acked if e not in found]
                    res["log_events"].update({"exported_engagements": len(found), "acked_missing_from_export":
                                              len(missing), "missing_ids": missing[:20],
                                              "export_duplicates_dropped": summary.duplicates})
                results[kind] = res
                print(json.dumps({kind: {k: v for k, v in res.items() if k != "cache_share_per_half_second"}}),
                      flush=True)
                cluster.restart(victim)
                if not cluster.wait_ok(60):
                    raise RuntimeError("the cluster did not recover after restarting the killed node")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            cluster.stop()
    results["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if a.json:
        pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
