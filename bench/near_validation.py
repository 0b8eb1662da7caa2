"""What strict freshness costs a near-cache hit, in one process (insensitive to other processes' load).

  PYTHONPATH=$PWD .venv/bin/python bench/near_validation.py --version-dir artifacts/<version> --json bench/out/near_validation.json

Two in-process servers (no gRPC: `servicer.answer`, the hit path the servicer runs) on one
redis-server, near cache on, served-list logging off: one validates each near-cache hit by
reading the user's engagement counter (CacheConfig.near_validate, the default), one does not.
`--users` warm users are answered `--per-round` times per round, the two alternating for
`--rounds` rounds; reported: wall-clock and CPU (process_time) µs per hit, median round, and the
ratio. A third row: the same with the near cache off (every hit a Redis MGET of both entries and
the counter, then the decoded-entry reuse), for scale.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", required=True)
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--per-round", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default="")
    a = p.parse_args()
    from core import layout
    from features import FeatureStore
    from feedback import EventLogConfig
    from pipeline import RecommendPipeline
    from protos.recsys.v1 import recommender_pb2 as pb
    from serving import CacheConfig, RecommendServer, ServerConfig
    from serving.local_redis import LocalRedis
    from serving.validation import RequestLimits, validate_recommend

    version_dir = pathlib.Path(a.version_dir).resolve()
    users = list(FeatureStore.load(layout.features_dir(version_dir)).vocabularies["user_id"].tokens)[:a.users]
    model = RecommendPipeline.from_version_dir(version_dir, verify=False)
    queries = [validate_recommend(pb.RecommendRequest(user_id=u, num_results=10), RequestLimits()) for u in users]
    cases = {"near, validated": dict(near_validate=True), "near, not validated": dict(near_validate=False),
             "near cache off (Redis hit)": dict(near_ttl_s=0)}
    out: dict = {"config": vars(a), "loadavg_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-nearval-") as tmp:
        redis = LocalRedis(pathlib.Path(tmp), appendonly=False).start(timeout_s=30)
        servers = {name: RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=1, metrics_port=0),
                                         CacheConfig(redis_url=redis.url, **kw), events=EventLogConfig(log_served=False))
                   for name, kw in cases.items()}
        try:
            for srv in servers.values():
                srv.set_model(model)
                for q in queries:
                    srv.servicer.answer(q)
                    srv.servicer.answer(q)
            wall: dict[str, list[float]] = {n: [] for n in cases}
            cpu: dict[str, list[float]] = {n: [] for n in cases}
            for _ in range(a.rounds):
                for name, srv in servers.items():
                    w0, c0 = time.perf_counter(), time.process_time()
                    for i in range(a.per_round):
                        srv.servicer.answer(queries[i % len(queries)])
                    wall[name].append((time.perf_counter() - w0) / a.per_round * 1e6)
                    cpu[name].append((time.process_time() - c0) / a.per_round * 1e6)
        finally:
            for srv in servers.values():
                srv.stop(0)
            redis.stop()
    for name in cases:
        out[name] = {"wall_us_per_hit_median": round(float(np.median(wall[name])), 2),
                     "cpu_us_per_hit_median": round(float(np.median(cpu[name])), 2),
                     "wall_per_round": [round(x, 2) for x in wall[name]], "cpu_per_round": [round(x, 2) for x in cpu[name]]}
    v, n = out["near, validated"], out["near, not validated"]
    out["validated_over_not_wall"] = round(v["wall_us_per_hit_median"] / n["wall_us_per_hit_median"], 3)
    out["validated_over_not_cpu"] = round(v["cpu_us_per_hit_median"] / n["cpu_us_per_hit_median"], 3)
    out["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if a.json:
        pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
