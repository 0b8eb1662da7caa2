"""Where a cache hit's server CPU goes: per-thread CPU µs per request of one server process, by call type.

One server process (bench/serving.py's child, default configuration: near cache, validated near hits,
served lists logged) and the bench's grpc.aio client, `--concurrency` calls in flight. Short rounds
alternate the call types, so a machine shared with other work loads them alike:

  empty      the empty RPC (the reference of the hit ratios)
  null       NullRecommend: parses a RecommendRequest, answers fixed bytes of a hit's size
  redis_read one engagement-counter read through the server's cache store and nothing else: the Redis round
             trip from a handler thread that a validated near-cache hit adds to a Recommend
  spin       `--spin-us` of pure Python holding the GIL, answering nothing: what the same length of interpreted
             work costs in the server when it does no I/O and takes no lock (the inflation of Python in-server)
  hit        Recommend answered from the near cache (validated: by invalidation messages, or by a counter read
             with --cache-config '{"near_invalidations": false}'); with --near-ttl-s 0 every hit is a Redis hit
             (one MGET of both entries and the counter, decoded reuse)

For each round and call type the server's threads are read from /proc (utime + stime, voluntary context
switches), grouped as grpc-worker (the handler pool), poller (grpc's Python thread that takes every
completion-queue event), grpc C-core threads (event_engine, timers, ...), served-list-logger and other;
divided by the round's calls. Also: the whole process's CPU per call and its ratio to the empty RPC
measured in the same round (median over rounds: the steadier figure on a loaded machine).

    PYTHONPATH=$PWD .venv/bin/python bench/hit_threads.py --version-dir artifacts/<version> [--rounds 10]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protos.recsys.v1 import recommender_pb2 as pb  # noqa: E402
from serving.local_redis import LocalRedis  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

CASES = ("empty", "null", "redis_read", "spin", "hit")
_TICK = os.sysconf("SC_CLK_TCK")


def thread_stats(pid: int) -> dict[str, tuple[float, int]]:
    """native thread id → (CPU seconds, voluntary context switches) of every thread of `pid`."""
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:  # the thread ended
            continue
        switches = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        out[task.name] = ((int(fields[11]) + int(fields[12])) / _TICK, switches)
    return out


def group_of(name: str) -> str:
    if name.startswith("grpc-worker"):
        return "grpc-worker"
    if name.endswith("(_serve)"):
        return "poller"
    if name in ("served-list-logger", "MainThread"):
        return name
    return "other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--version-dir", required=True)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=1.5, help="per call type per round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--near-ttl-s", type=float, default=30.0, help="0 = near cache off: every hit reads Redis")
    p.add_argument("--cache-config", default="{}", help="JSON of further CacheConfig fields for the server")
    p.add_argument("--server-config", default="{}", help="JSON of ServerConfig fields, e.g. '{\"monitor\": false}'")
    p.add_argument("--events-config", default="{}",
                   help="JSON of EventLogConfig fields, e.g. '{\"log_served\": false}'")
    p.add_argument("--spin-us", type=float, default=15.0,
                   help="the spin call's pure Python per call, µs of thread CPU (default: a near hit's in-process "
                        "cost, bench/hit_cpu.py)")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    redis = LocalRedis(pathlib.Path(tempfile.mkdtemp(prefix="hit-threads-"))).start()
    requests = [pb.RecommendRequest(user_id=u, num_results=10)
                for u in bs.known_users(a.version_dir, 10**9, 0)[:a.users]]
    server = bs.ServerProcesses("sync", 1, a.version_dir, redis.url, a.workers, a.near_ttl_s,
                                json.loads(a.server_config), json.loads(a.cache_config), json.loads(a.events_config),
                                child_args=("--attribution",))
    pid = server.procs[0].pid

    async def empty(c, n: int) -> None:
        await c.empty[n % len(c.empty)](b"", timeout=10)

    async def null(c, n: int) -> None:
        await c.null[n % len(c.null)](requests[n % len(requests)], timeout=10)

    async def hit(c, n: int) -> None:
        await c.stubs[n % len(c.stubs)].Recommend(requests[n % len(requests)], timeout=10)

    rows: dict[str, list[dict]] = {case: [] for case in CASES}

    async def run() -> None:
        client = bs.Client(server.port, 4)
        redis_read = [ch.unary_unary(bs.REDIS_READ_METHOD) for ch in client.channels]
        spin = [ch.unary_unary(bs.SPIN_METHOD) for ch in client.channels]
        spin_us = str(a.spin_us).encode()
        calls = {"empty": empty, "null": null, "hit": hit,
                 "redis_read": lambda c, n: redis_read[n % len(redis_read)](b"", timeout=10),
                 "spin": lambda c, n: spin[n % len(spin)](spin_us, timeout=10)}
        try:
            for case in CASES:  # warm-up: every worker thread exists afterwards
                await bs.drive(lambda n, f=calls[case]: f(client, n), a.concurrency, 1.0)
            names = json.loads(await client.channels[0].unary_unary(bs.THREADS_METHOD)(b"", timeout=10))
            for _ in range(a.rounds):
                for case in CASES:
                    load1 = os.getloadavg()[0]
                    before, cpu0 = thread_stats(pid), bs.process_cpu_s([pid])
                    latencies, elapsed = await bs.drive(lambda n, f=calls[case]: f(client, n), a.concurrency,
                                                        a.seconds)
                    after, cpu1 = thread_stats(pid), bs.process_cpu_s([pid])
                    n = max(len(latencies), 1)
                    groups: dict[str, list[float]] = {}
                    for tid, (cpu, switches) in after.items():
                        cpu_b, switches_b = before.get(tid, (0.0, 0))
                        # threads Python does not know are gRPC core's (event engine, timers)
                        g = groups.setdefault(group_of(names[tid]) if tid in names else "grpc C-core", [0.0, 0.0])
                        g[0] += 1e6 * (cpu - cpu_b) / n
                        g[1] += (switches - switches_b) / n
                    rows[case].append({"rps": n / elapsed, "server_cpu_us": 1e6 * (cpu1 - cpu0) / n, "load1": load1,
                                       "threads": groups})
        finally:
            await client.close()

    try:
        asyncio.run(bs._warm(server.port, requests))
        asyncio.run(run())
    finally:
        server.close()
        redis.stop()

    def med(values) -> float:
        return round(float(statistics.median(values)), 2)

    summary = {}
    for case, rs in rows.items():
        groups = sorted({g for r in rs for g in r["threads"]})
        summary[case] = {
            "server_cpu_us_per_call": med(r["server_cpu_us"] for r in rs),
            "over_empty_same_round": med(r["server_cpu_us"] / e["server_cpu_us"] for r, e in zip(rs, rows["empty"])),
            "rps": med(r["rps"] for r in rs),
            "threads_cpu_us_per_call": {g: med(r["threads"].get(g, (0.0, 0.0))[0] for r in rs) for g in groups},
            "threads_voluntary_switches_per_call": {g: med(r["threads"].get(g, (0.0, 0.0))[1] for r in rs)
                                                    for g in groups},
        }
    loads = [r["load1"] for rs in rows.values() for r in rs]
    print(f"{a.rounds} rounds of {a.seconds} s per call type, {a.concurrency} in flight; load average "
          f"{min(loads):.2f}–{max(loads):.2f}")
    for case, s in summary.items():
        threads = ", ".join(f"{g} {us:.0f} µs/{s['threads_voluntary_switches_per_call'][g]:.2f} cs"
                            for g, us in sorted(s["threads_cpu_us_per_call"].items(), key=lambda kv: -kv[1])
                            if us >= 0.5)
        print(f"{case:10s} server CPU {s['server_cpu_us_per_call']:6.1f} µs/call (÷ empty, same round: "
              f"{s['over_empty_same_round']:.3f}), {s['rps']:6.0f} rps | {threads}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"args": vars(a), "summary": summary, "rounds": rows},
                                                   indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
