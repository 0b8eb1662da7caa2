"""ANN benchmark: exact (Flat) vs IVF vs HNSW on a large synthetic catalogue of structured vectors.

Item vectors come from a Gaussian mixture with many clusters and power-law cluster sizes,
L2-normalised like the two towers' outputs; queries are fresh draws from the same mixture
(like user embeddings near the items they like). Isotropic Gaussian vectors would say
nothing about ANN: they have no neighbourhood structure for IVF/HNSW to exploit.

For each index setting it reports throughput as a ratio to exact search measured in the
same run, and recall@k against exact search (mean |ANN top-k ∩ exact top-k| / k).

  .venv/bin/python bench/ann.py                       # 1M × 64, 1000 queries: ~25 min on 2 busy cores
                                                      #   (building HNSW32 over 1M items is most of it)
  .venv/bin/python bench/ann.py --hnsw --extra        # exact vs IVF only: ~8 min
  .venv/bin/python bench/ann.py --items 100000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retrieval import IndexConfig, ItemIndex  # noqa: E402


def mixture(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator,
            centers: np.ndarray | None = None, weights: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """[n, dim] unit vectors around `clusters` centres with Zipf(1) cluster sizes."""
    if centers is None:
        centers = rng.normal(size=(clusters, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        weights = 1.0 / np.arange(1, clusters + 1)
        weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):  # chunks keep peak memory near the output's size
        m = min(200_000, n - start)
        c = rng.choice(clusters, m, p=weights)
        x = centers[c] + spread * rng.normal(size=(m, dim)).astype(np.float32) / np.sqrt(dim)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centers, weights


def timed_search(index: faiss.Index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best-of-`repeats` seconds to search all queries (after one warm-up batch), and the result ids."""
    index.search(queries[:16], k)
    best, ids = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - t0)
    return best, ids


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(t) & set(g[g >= 0])) / k for t, g in zip(truth, got)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=2000, help="mixture components of the synthetic catalogue")
    p.add_argument("--spread", type=float, default=1.0, help="within-cluster noise scale (relative to unit centres)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--ivf", nargs="*", default=["IVF4096,Flat"], help="IVF factory strings")
    p.add_argument("--nprobe", type=int, nargs="*", default=[16, 32, 64, 128])
    p.add_argument("--hnsw", nargs="*", default=["HNSW32"], help="HNSW factory strings")
    p.add_argument("--ef-search", type=int, nargs="*", default=[128, 256, 512])
    p.add_argument("--extra", nargs="*", default=["IVF4096,SQ8"],
                   help="more factory strings (PQ/SQ), searched at --extra-nprobe")
    p.add_argument("--extra-nprobe", type=int, default=64)
    p.add_argument("--train-size", type=int, default=200_000, help="vectors sampled to train IVF/PQ quantisers")
    p.add_argument("--threads", type=int, default=2, help="faiss.omp_set_num_threads (same for every index)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write config, hardware and results here")
    args = p.parse_args(argv)

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    items, centers, weights = mixture(args.items, args.dim, args.clusters, args.spread, rng)
    queries, _, _ = mixture(args.queries, args.dim, args.clusters, args.spread, rng, centers, weights)
    ids = np.arange(args.items).astype(str)
    print(f"data: {args.items:,} × {args.dim} items, {args.queries} queries, {args.clusters} clusters "
          f"({time.perf_counter() - t0:.1f} s); faiss {faiss.__version__}, {args.threads} threads", flush=True)

    def build(factory: str, **kw) -> ItemIndex:
        cfg = IndexConfig(factory=factory, train_size=args.train_size, recall_queries=0, seed=args.seed, **kw)
        t = time.perf_counter()
        index = ItemIndex.build(ids, items, cfg)
        print(f"built {factory} in {time.perf_counter() - t:.1f} s", flush=True)
        return index

    exact = build("Flat")
    exact_s, truth = timed_search(exact.index, queries, args.k, args.repeats)
    rows = [{"index": "Flat (exact)", "param": "", "build_s": exact.info["build_seconds"], "search_s": exact_s,
             "qps": args.queries / exact_s, "speedup": 1.0, f"recall@{args.k}": 1.0}]
    del exact

    def measure(index: ItemIndex, factory: str, name: str, values: list[int]) -> None:
        for v in values:
            if name:
                faiss.ParameterSpace().set_index_parameter(index.index, name, v)
            s, got = timed_search(index.index, queries, args.k, args.repeats)
            rows.append({"index": factory, "param": f"{name}={v}" if name else "", "build_s":
                         index.info["build_seconds"], "search_s": s, "qps": args.queries / s,
                         "speedup": exact_s / s, f"recall@{args.k}": recall(truth, got)})
            r = rows[-1]
            print(f"  {factory:<16} {r['param']:<14} {r['speedup']:7.1f}× exact  recall {r[f'recall@{args.k}']:.4f}",
                  flush=True)

    for factory in args.ivf:
        index = build(factory)
        measure(index, factory, "nprobe", args.nprobe)
        del index
    for factory in args.hnsw:
        index = build(factory)
        measure(index, factory, "efSearch", args.ef_search)
        del index
    for factory in args.extra:
        index = build(factory)
        measure(index, factory, "nprobe", [args.extra_nprobe])
        del index

    header = f"| index | search param | build s | queries/s | throughput ÷ exact | recall@{args.k} vs exact |"
    print("\n" + header + "\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['index']} | {r['param']} | {r['build_s']:.1f} | {r['qps']:,.0f} | {r['speedup']:.1f}× | "
              f"{r[f'recall@{args.k}']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(),
                                                          "python": platform.python_version(),
                                                          "faiss": faiss.__version__},
                       "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
