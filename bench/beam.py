"""Beam batch-scoring throughput: users/s through the pipeline on the local runner vs the same models in-process.

Reference (measured in the same run): the job's three ModelHandlers loaded once in this
process and called on exactly the batches the job forms (beam_jobs.assign_batches), i.e.
user tower → FAISS → ranker with no Beam, no serialization, no writes. Each pipeline
configuration (running mode × --direct_num_workers) then runs the real job
(beam_jobs.score_users: read users → validate → fixed batches → RunInference ×3 →
Parquet, and Redis when --redis) and is reported two ways:

  end-to-end   users / wall seconds of the whole job, worker start-up and model loading included;
  marginal     (users - b) / (T_all - T_one), where T_one is the same job over one batch of b
               users: the steady-state rate once workers are up, which is what a long job sees.

Both as ratios to the reference rate. The host has 2 cores shared with other work, so
ratios (not seconds) are the numbers to compare.

  .venv/bin/python bench/beam.py --artifacts /tmp/ml --version current          # an existing version
  .venv/bin/python bench/beam.py --synthetic-users 20000 --redis --json out.json  # trains a synthetic one first
  .venv/bin/python bench/beam.py --artifacts A --configs in_memory:1,dask:2 --rounds 3  # Dask (2 worker processes) vs local
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def train_synthetic(root: pathlib.Path, users: int, items: int, interactions: int) -> pathlib.Path:
    """A small-model synthetic version via `recsys train` (1 epoch): the bench measures scoring, not quality."""
    from recsys.cli import main as recsys_main

    code = recsys_main(["--log-level", "WARNING", "train", "--artifacts", str(root), "--new-version", "bench",
                        "--source", "synthetic", "--synthetic-num-users", str(users), "--synthetic-num-items",
                        str(items), "--synthetic-num-interactions", str(interactions), "--epochs", "1",
                        "--no-retrieval-progress", "--index-recall-queries", "100", "--no-promote"])
    if code:
        raise SystemExit(f"recsys train failed ({code})")
    return root / "bench"


def reference(version_dir: pathlib.Path, users: list[str], batch_size: int, num_candidates: int) -> dict:
    """Seconds for the job's handlers, loaded here once, over the job's own batches."""
    from beam_jobs import RankerHandler, RetrievalHandler, UserBatch, UserTowerHandler, assign_batches

    handlers = [UserTowerHandler(version_dir), RetrievalHandler(version_dir, num_candidates),
                RankerHandler(version_dir)]
    t0 = time.perf_counter()
    models = [h.load_model() for h in handlers]
    load_s = time.perf_counter() - t0
    batches = [UserBatch(b) for b in assign_batches(users, batch_size)]

    def score(batch):
        for h, m in zip(handlers, models):
            batch = next(iter(h.run_inference([batch], m)))
        return batch

    score(batches[0])  # warm-up: TF traces its functions on the first call
    t0 = time.perf_counter()
    scored = sum(len(score(b)) for b in batches)
    seconds = time.perf_counter() - t0
    return {"users": scored, "batches": len(batches), "seconds": seconds, "users_per_s": scored / seconds,
            "load_s": load_s, "users_per_s_with_load": scored / (seconds + load_s)}


DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"


def beam_flags(mode: str, workers: int, dask_address: str) -> list[str]:
    if mode == "dask":
        return ["--runner", DASK, "--dask_client_address", dask_address]
    return ["--direct_running_mode", mode, "--direct_num_workers", str(workers)]


def run_job(version_dir: pathlib.Path, out: pathlib.Path, batch_size: int, flags: list[str],
            redis_url: str, users_file: str = "") -> dict:
    from beam_jobs import BatchScoreConfig, score_users

    if out.exists():
        shutil.rmtree(out)
    config = BatchScoreConfig(artifacts=str(version_dir.parent), version=version_dir.name, output=str(out),
                              redis_url=redis_url, batch_size=batch_size, users=users_file, verify=False)
    t0 = time.perf_counter()
    result = score_users(config, flags)
    wall = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"the job lost Redis writes: {result.counters}")
    return {"users": result.counters["users_scored"], "seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default="", help="artifacts root of an existing version")
    ap.add_argument("--version", default="current")
    ap.add_argument("--synthetic-users", type=int, default=0, help="train a synthetic version with this many users")
    ap.add_argument("--synthetic-items", type=int, default=2000)
    ap.add_argument("--interactions-per-user", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--configs", default="in_memory:1,multi_processing:1,multi_processing:2",
                    help="comma-separated running_mode:direct_num_workers; dask:N = the DaskRunner on a local "
                         "cluster of N single-thread worker processes (started here)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every config this many times; medians reported")
    ap.add_argument("--redis", action="store_true", help="also write every entry to a real redis-server")
    ap.add_argument("--no-one-batch", action="store_true", help="skip the one-batch runs (no marginal rate)")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()

    import logging

    from beam_jobs import read_scores
    from beam_jobs.logs import quiet_beam_logs
    from core import layout, registry
    from pipeline import load_pipeline_config

    logging.basicConfig(level=logging.WARNING)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-beam-"))
    local_redis = None
    try:
        if args.synthetic_users:
            t0 = time.perf_counter()
            version_dir = train_synthetic(work / "artifacts", args.synthetic_users, args.synthetic_items,
                                          args.synthetic_users * args.interactions_per_user)
            print(f"trained a synthetic version in {time.perf_counter() - t0:.0f} s", flush=True)
        else:
            version_dir = registry.resolve_version(args.artifacts or registry.default_root(), args.version)
        from features import FeatureStore

        store = FeatureStore.load(layout.features_dir(version_dir))
        users = list(store.vocabularies["user_id"].tokens)
        n_items = len(store.catalogue)
        num_candidates = load_pipeline_config(version_dir).num_candidates
        one_batch = work / "one_batch.txt"
        from beam_jobs import assign_batches

        first = assign_batches(users, args.batch_size)[0]
        one_batch.write_text("\n".join(first) + "\n")
        redis_url = ""
        if args.redis:
            from serving.local_redis import LocalRedis

            try:
                local_redis = LocalRedis(work)
            except FileNotFoundError as e:
                raise SystemExit(str(e)) from None
            redis_url = local_redis.start().url

        ref = reference(version_dir, users, args.batch_size, num_candidates)
        print(f"{version_dir.name}: {len(users)} users, {n_items} items, N={num_candidates}, batch {args.batch_size}; "
              f"reference (in-process handlers): {ref['users_per_s']:.0f} users/s "
              f"({ref['seconds']:.1f} s, models load {ref['load_s']:.1f} s)", flush=True)
        rows = []
        specs = [(m, int(w)) for m, w in (spec.split(":") for spec in args.configs.split(","))]
        dask_workers = max((w for m, w in specs if m == "dask"), default=0)
        if dask_workers:
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            print(f"dask: a local cluster of {dask_workers} single-thread worker processes at "
                  f"{cluster.scheduler_address}", flush=True)
        baseline = None
        with quiet_beam_logs():
            for mode, workers in specs:
                flags = beam_flags(mode, workers, cluster.scheduler_address if mode == "dask" else "")
                runs = []
                for _ in range(args.rounds):
                    small = ({"users": 0, "seconds": float("nan")} if args.no_one_batch else
                             run_job(version_dir, work / "out", args.batch_size, flags, redis_url, str(one_batch)))
                    full = run_job(version_dir, work / "out", args.batch_size, flags, redis_url)
                    runs.append((small, full))
                    table = read_scores(work / "out")
                    if baseline is None:
                        baseline = table
                    elif not table.equals(baseline):  # every config writes the same rows
                        raise SystemExit(f"{mode}:{workers} wrote different Parquet rows than {specs[0]}")
                small_s = statistics.median(r[0]["seconds"] for r in runs)
                full_s = statistics.median(r[1]["seconds"] for r in runs)
                full = {"users": runs[0][1]["users"], "seconds": full_s}
                small = {"users": runs[0][0]["users"], "seconds": small_s}
                e2e = full["users"] / full["seconds"]
                marginal_s = full["seconds"] - small["seconds"]
                marginal = (full["users"] - small["users"]) / marginal_s if marginal_s > 0 else float("nan")
                row = {"mode": mode, "workers": int(workers), "users": full["users"], "seconds": full["seconds"],
                       "rounds_seconds": [r[1]["seconds"] for r in runs],
                       "one_batch_seconds": small["seconds"], "end_to_end_users_per_s": e2e,
                       "end_to_end_ratio": e2e / ref["users_per_s"],
                       "end_to_end_ratio_vs_ref_with_load": e2e / ref["users_per_s_with_load"],
                       "marginal_users_per_s": marginal, "marginal_ratio": marginal / ref["users_per_s"],
                       "loadavg": os.getloadavg()}
                if rows:
                    row["end_to_end_vs_first_config"] = e2e / rows[0]["end_to_end_users_per_s"]
                rows.append(row)
                vs_first = (f"; {row['end_to_end_vs_first_config']:.2f}x the first config"
                            if "end_to_end_vs_first_config" in row else "")
                print(f"  {mode:17s} workers={workers}: {full['seconds']:6.1f} s end-to-end = {e2e:6.0f} users/s "
                      f"({row['end_to_end_ratio']:.2f}x ref, {row['end_to_end_ratio_vs_ref_with_load']:.2f}x ref "
                      f"with load{vs_first}); "
                      f"one batch {small['seconds']:.1f} s → marginal {marginal:6.0f} users/s "
                      f"({row['marginal_ratio']:.2f}x ref); identical rows; load average "
                      f"{' '.join(f'{x:.1f}' for x in row['loadavg'])}", flush=True)
        if dask_workers:
            cluster.close()
        result = {"version": version_dir.name, "users": len(users), "items": n_items, "num_candidates": num_candidates,
                  "batch_size": args.batch_size, "redis": bool(args.redis), "reference": ref, "pipeline": rows,
                  "host": {"cpus": os.cpu_count(), "python": platform.python_version()}}
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        if local_redis is not None:
            local_redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
