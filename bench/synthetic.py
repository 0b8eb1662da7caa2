"""Synthetic generator scale: time and peak memory to generate N interactions.

  .venv/bin/python bench/synthetic.py --interactions 10000000 --users 500000 --items 100000

Prints seconds, rows/s and peak RSS (ru_maxrss), and the ratio of generation time to a
reference measured in the same run: writing the same frame to Parquet.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from features import SyntheticConfig, generate_synthetic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=500_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args()
    t0 = time.perf_counter()
    ds = generate_synthetic(SyntheticConfig(num_users=a.users, num_items=a.items, num_interactions=a.interactions,
                                            seed=a.seed))
    gen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        ds.interactions.to_parquet(f"{d}/x.parquet")
        write = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {"interactions": len(ds.interactions), "generate_s": round(gen, 1), "rows_per_s": int(len(ds.interactions) / gen),
              "parquet_write_s": round(write, 1), "generate_over_write": round(gen / write, 2),
              "peak_rss_gib": round(peak_gib, 2)}
    print(json.dumps(result, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "result": result}, f, indent=2)


if __name__ == "__main__":
    main()
