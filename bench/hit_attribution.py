"""Near-cache hit ÷ empty RPC on one-process servers that differ only in the event log.

Attributes the cost of issue 13's event log on the fastest Recommend path: (log_on) the
default, every served list logged as impressions; (log_off) the event log on but served-list
logging off; (no_redis) no Redis at all, so no event log (in-process LRU cache). Each server
is its own reference (its empty RPC, rounds alternating), 8 requests in flight.

    .venv/bin/python bench/hit_attribution.py --version-dir artifacts/<version> [--rounds 3 --seconds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import pathlib
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version-dir", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    redis = LocalRedis(pathlib.Path(tempfile.mkdtemp(prefix="hit-attr-"))).start()
    requests = [pb.RecommendRequest(user_id=u, num_results=10)
                for u in bs.known_users(a.version_dir, 10**9, a.seed)[:a.users]]
    variants = {"log_on": (redis.url, {"log_served": True}), "log_off": (redis.url, {"log_served": False}),
                "no_redis": ("", {})}
    servers = {name: bs.ServerProcesses("sync", 1, a.version_dir, url, 8, 30.0, {}, events_config=events)
               for name, (url, events) in variants.items()}

    async def empty(c, n: int) -> None:
        await c.empty[n % len(c.empty)](b"", timeout=10)

    async def hit(c, n: int) -> None:
        await c.stubs[n % len(c.stubs)].Recommend(requests[n % len(requests)], timeout=10)

    try:
        for server in servers.values():
            asyncio.run(bs._warm(server.port, requests))
        for name, server in servers.items():
            out = bs.rpc_rounds(server.port, {"empty": empty, "hit": hit}, 8, a.seconds, a.rounds, 4, warmup_s=0.5)
            rps = {case: sum(len(lat) for lat, _ in rounds) / sum(s for _, s in rounds) for case, rounds in out.items()}
            print(f"{name:9s} empty {rps['empty']:7.0f} rps  near-cache hit {rps['hit']:7.0f} rps  "
                  f"hit/empty {rps['hit'] / rps['empty']:.3f}  per round {bs.per_round(out['empty'], out['hit'])}",
                  flush=True)
    finally:
        for server in servers.values():
            server.close()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
