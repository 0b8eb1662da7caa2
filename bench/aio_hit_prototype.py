"""Prototype measurement for issue 14's next step: cache hits answered inline on a grpc.aio event loop.

Two servers on the same Redis and version, rounds alternating, `--concurrency` calls in flight from one grpc.aio
client (bench/serving.py's):

  aio    a grpc.aio server in a child process whose handler calls the servicer's Recommend path
         (`RecommenderServicer._recommend`) directly on the event loop: no handler-thread hand-off. Cache
         hits only — a miss would block the loop; a real aio mode would send misses to an executor.
  sync   the production server (bench/serving.py's child: sync gRPC, thread pool).

Each reports near-cache hit ÷ empty RPC on the same server per round, and the server's CPU µs per call.
This is not a serving mode: the aio handler uses a stand-in context (deadline 10 s, always active) and
skips the servicer's `_handle` (request metrics). What it shows is how much of the hit ÷ empty gap the
thread pool's hand-offs cause (bench/RESULTS.md, issue 14 fifth pass).

    PYTHONPATH=$PWD .venv/bin/python bench/aio_hit_prototype.py --version-dir artifacts/<version> [--rounds 6]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protos.recsys.v1 import recommender_pb2 as pb  # noqa: E402
from serving.local_redis import LocalRedis, free_port  # noqa: E402


def _bench_module(name: str):
    """bench/<name>.py as a module (bench/ is not on sys.path: its serving.py would shadow the package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_main(version_dir: str, port: int, redis_url: str) -> None:
    import grpc

    from feedback import EventLogConfig
    from serving import CacheConfig, RecommendServer, ServerConfig

    loaded = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=0),
                             CacheConfig(redis_url=redis_url, near_ttl_s=30.0), events=EventLogConfig())
    loaded.load(version_dir, verify=False)
    # the stand-in context bench/hit_cpu.py calls the handler with (a deadline 10 s away, still active)
    recommend, context = loaded.servicer._recommend, _bench_module("hit_cpu")._Context()

    async def empty(request, _context) -> bytes:
        return b""

    async def hit(request, _context) -> bytes:
        return recommend(request, context)[0]

    handlers = grpc.method_handlers_generic_handler("recsys.bench.Bench", {
        "Empty": grpc.unary_unary_rpc_method_handler(empty),
        "Recommend": grpc.unary_unary_rpc_method_handler(hit, request_deserializer=pb.RecommendRequest.FromString)})
    _bench_module("serving").serve_aio(port, [handlers])
    loaded.stop(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", required=True)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    bs = _bench_module("serving")
    redis = LocalRedis(pathlib.Path(tempfile.mkdtemp(prefix="aio-hit-"))).start()
    requests = [pb.RecommendRequest(user_id=u, num_results=10) for u in bs.known_users(a.version_dir, 10**9, 0)[:a.users]]
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "child", a.version_dir, str(port), redis.url],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)})
    sync = None
    try:
        if child.stdout.readline().strip() != "READY":
            raise RuntimeError("the aio child did not start; run it alone to see its error")
        sync = bs.ServerProcesses("sync", 1, a.version_dir, redis.url, 8, 30.0)

        async def run() -> dict:
            aio_client, sync_client = bs.Client(port, 4), bs.Client(sync.port, 4)
            aio_empty = [c.unary_unary("/recsys.bench.Bench/Empty") for c in aio_client.channels]
            aio_hit = [c.unary_unary("/recsys.bench.Bench/Recommend",
                                     request_serializer=pb.RecommendRequest.SerializeToString)
                       for c in aio_client.channels]
            cases = {
                "aio empty": (lambda n: aio_empty[n % 4](b"", timeout=10), [child.pid]),
                "aio hit": (lambda n: aio_hit[n % 4](requests[n % len(requests)], timeout=10), [child.pid]),
                "sync empty": (lambda n: sync_client.empty[n % 4](b"", timeout=10), [q.pid for q in sync.procs]),
                "sync hit": (lambda n: sync_client.stubs[n % 4].Recommend(requests[n % len(requests)], timeout=10),
                             [q.pid for q in sync.procs])}
            for call, _ in cases.values():  # twice: the first computes, the second memoizes
                await bs.drive(call, a.concurrency, 1.5)
                await bs.drive(call, a.concurrency, 1.5)
            out: dict[str, list] = {name: [] for name in cases}
            for _ in range(a.rounds):
                for name, (call, pids) in cases.items():
                    cpu0 = bs.process_cpu_s(pids)
                    latencies, elapsed = await bs.drive(call, a.concurrency, a.seconds)
                    out[name].append({"rps": len(latencies) / elapsed,
                                      "server_cpu_us": 1e6 * (bs.process_cpu_s(pids) - cpu0) / max(len(latencies), 1)})
            await aio_client.close()
            await sync_client.close()
            return out

        out = asyncio.run(run())
    finally:
        if child.poll() is None:
            child.stdin.close()
            child.wait(30)
        if sync is not None:
            sync.close()
        redis.stop()
    summary = {}
    for name, rows in out.items():
        print(f"{name:10s} rps per round {[round(r['rps']) for r in rows]}, server CPU µs per call (median) "
              f"{statistics.median(r['server_cpu_us'] for r in rows):.0f}")
    for stack in ("aio", "sync"):
        per = [h["rps"] / e["rps"] for h, e in zip(out[f"{stack} hit"], out[f"{stack} empty"])]
        overall = sum(r["rps"] for r in out[f"{stack} hit"]) / sum(r["rps"] for r in out[f"{stack} empty"])
        summary[stack] = {"hit_over_empty": round(overall, 3), "median_round": round(statistics.median(per), 3),
                          "per_round": [round(x, 3) for x in per]}
        print(f"{stack}: near hit ÷ empty {overall:.3f} over all rounds, median round {statistics.median(per):.3f} "
              f"(per round {summary[stack]['per_round']})")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"args": vars(a), "rounds": out, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit(main())
