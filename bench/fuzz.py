"""Hostile-input fuzzing of a real Recommender server with hypothesis (issue 8), at bench scale.

Generates malformed and extreme requests — huge strings, non-UTF-8 ids on the wire, empty
ids, control characters, num_results at the int32 extremes, NaN/±inf/huge/negative
weights, thousands of excludes, big context maps, truncated and random bytes — sends them
as raw bytes to a real gRPC server, and checks every answer:

  - a request the validation rules accept must get OK, one they reject INVALID_ARGUMENT
    (the oracle restates serving.validation's rules independently);
  - undecodable bytes must get INVALID_ARGUMENT (never INTERNAL);
  - an OK answer has at most num_results unique items, none excluded, finite scores,
    the served model version and a real source;
  - SimilarItems may also answer NOT_FOUND for an unknown item;
  - afterwards health is SERVING, a normal request works, and no RPC was INTERNAL.

    .venv/bin/python bench/fuzz.py --examples 10000 [--version-dir DIR | --artifacts ROOT --version NAME]

The strategies and the oracle live in tests/serving/fuzzing.py (test code: hypothesis is a test
dependency); tests/serving/test_fuzz.py runs them with a few hundred examples.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.serving.fuzzing import Checker, fuzz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=10_000, help="Recommend examples (SimilarItems: a fifth)")
    p.add_argument("--version-dir", default="", help="a trained version directory")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--version", default="current")
    p.add_argument("--redis-url", default="", help="use this Redis as the cache (default: in-process LRU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write the figures here")
    args = p.parse_args(argv)

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from core.registry import resolve_version
    from serving import CacheConfig, RecommendServer, ServerConfig

    version_dir = pathlib.Path(args.version_dir) if args.version_dir else resolve_version(args.artifacts,
                                                                                         args.version)
    server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=4, metrics_port=0),
                             CacheConfig(redis_url=args.redis_url)).start()
    try:
        model = server.load(version_dir)
        users = list(model.features.vocabularies["user_id"].tokens[:200])
        items = [str(i) for i in model.index.item_ids[:200]]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            checker = Checker(channel, model.model_version)
            start = time.perf_counter()
            error = ""
            try:
                fuzz(checker, users, items, args.examples, max(1, args.examples // 5), args.seed)
            except AssertionError as e:
                error = str(e)
            seconds = time.perf_counter() - start
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            healthy = status == health_pb2.HealthCheckResponse.SERVING
        internal = server.metrics.value("recsys_requests_total", {"code": "INTERNAL"})
    finally:
        server.stop(grace=1)
    sent = sum(checker.counts.values())
    print(f"fuzz: {sent} requests in {seconds:.1f}s against {version_dir.name}")
    for key in sorted(checker.counts):
        print(f"  {key:<40} {checker.counts[key]:>7}")
    print(f"server INTERNAL errors: {internal:.0f}; health after: {'SERVING' if healthy else 'NOT SERVING'}")
    print("contract: " + ("held" if not error else f"BROKEN: {error}"))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"requests": sent, "seconds": seconds, "counts": checker.counts,
                                                       "internal": internal, "healthy": healthy, "error": error,
                                                       "examples": args.examples, "seed": args.seed}, indent=2))
    return 0 if not error and healthy and internal == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
