"""CPU µs of the servicer's own work per cache hit: the registered Recommend handler called in-process.

The handler gRPC runs for Recommend (serving.security.strict_handler around the servicer: request
parsing, validation, cache read, memoized bytes, metrics, monitor, served-list logging, request id)
is called with a stand-in context on a loaded server (real model, real redis-server), and the
calling thread's CPU time (time.thread_time: what other processes on a shared machine do to the
wall clock does not count) is divided by the calls; the process's CPU (process_time, which adds the
served-list writer thread) is reported beside it. Cases: a near-cache hit, and a Redis hit with the
near cache off (that one includes the MGET's system calls). No gRPC, no client: this is the part of
a hit that the servicer adds to an empty RPC (bench/serving.py (b) vs (a)).

To compare two checkouts, run the same command from each (PYTHONPATH = that checkout), alternating:

    PYTHONPATH=$PWD .venv/bin/python bench/hit_cpu.py --version-dir artifacts/<version> [--calls 20000 --rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class _Context:
    """What the servicer asks of a grpc.ServicerContext on a hit (a deadline 10 s away, still active)."""

    def time_remaining(self) -> float:
        return 10.0

    def is_active(self) -> bool:
        return True

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def measure(version_dir: str, redis_url: str, near: bool, calls: int, rounds: int, users: int) -> dict:
    import grpc

    from feedback import EventLogConfig
    from protos.recsys.v1 import recommender_pb2 as pb
    from serving import CacheConfig, RecommendServer, ServerConfig
    from serving.security import strict_handler

    server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=0),
                             CacheConfig(redis_url=redis_url, near_ttl_s=30.0 if near else 0.0),
                             events=EventLogConfig())
    try:
        server.load(version_dir, verify=False)
        servicer = server.servicer
        ids = list(servicer.model.features.vocabularies["user_id"].tokens)
        random.Random(0).shuffle(ids)
        raws = [pb.RecommendRequest(user_id=u, num_results=10).SerializeToString() for u in ids[:users]]
        handler = strict_handler(grpc.unary_unary_rpc_method_handler(
            servicer.Recommend, request_deserializer=pb.RecommendRequest.FromString,
            response_serializer=pb.RecommendResponse.SerializeToString), "/recsys.v1.Recommender/Recommend")
        call, serialize, context = handler.unary_unary, handler.response_serializer, _Context()
        for raw in raws * 3:  # computed, stored, memoized
            serialize(call(raw, context))
        if servicer.served is not None:
            servicer.served.flush()
        thread_us, process_us = [], []
        for _ in range(rounds):
            t0, p0 = time.thread_time(), time.process_time()
            for i in range(calls):
                serialize(call(raws[i % len(raws)], context))
            t1 = time.thread_time()
            if servicer.served is not None:
                servicer.served.flush()  # the writer thread's work for these calls counts in process time
            thread_us.append((t1 - t0) / calls * 1e6)
            process_us.append((time.process_time() - p0) / calls * 1e6)
        return {"thread_cpu_us": round(statistics.median(thread_us), 2),
                "process_cpu_us": round(statistics.median(process_us), 2),
                "thread_cpu_us_per_round": [round(x, 2) for x in thread_us],
                "process_cpu_us_per_round": [round(x, 2) for x in process_us]}
    finally:
        server.stop(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", required=True)
    p.add_argument("--calls", type=int, default=20000, help="handler calls per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--users", type=int, default=256, help="users cycled through (default: %(default)s)")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    from serving.local_redis import LocalRedis

    tmp = tempfile.mkdtemp(prefix="bench-hit-cpu-")
    local_redis = LocalRedis(tmp).start()
    try:
        load = os.getloadavg()[0]
        results = {case: measure(a.version_dir, local_redis.url, case == "near", a.calls, a.rounds, a.users)
                   for case in ("near", "redis")}
    finally:
        local_redis.stop()
    for case, r in results.items():
        print(f"{case:5s} hit: thread CPU {r['thread_cpu_us']} µs per call (rounds {r['thread_cpu_us_per_round']}), "
              f"process CPU {r['process_cpu_us']} µs")
    print(f"load average at start {load:.2f}, now {os.getloadavg()[0]:.2f}; code at {ROOT}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"args": vars(a), "load1": load, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
