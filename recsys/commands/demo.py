"""`recsys demo`: the main job end to end on MovieLens-100k, one real command after another.

Each step is printed as the `recsys …` command a user would type, then run in-process
through the same entry point, so the demo is also the CLI's tour.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import shlex
import time

from recsys.errors import RecsysError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole system end to end on MovieLens-100k",
                       description="Fetches MovieLens-100k, evaluates the baselines, trains and indexes the two-tower "
                                   "model, trains the ranker, evaluates the pipeline, precomputes with Beam, serves "
                                   "over gRPC with Redis and calls Recommend. Stages not yet built are skipped.")
    p.add_argument("--workdir", default="demo-run", help="where artifacts and reports go (default: demo-run)")
    p.add_argument("--quick", action="store_true", help="fewer epochs: a smoke run, not the measured numbers")
    p.set_defaults(func=run)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(args: argparse.Namespace) -> int:
    from recsys.cli import main as recsys_main

    work = pathlib.Path(args.workdir)
    artifacts, reports = work / "artifacts", work / "reports"
    steps: list[tuple[str, list[str]]] = [
        ("Fetch MovieLens-100k and show the per-user temporal split", ["data"]),
    ]
    trained = _available("recsys.commands.train")
    if trained:
        train = ["train", "--artifacts", str(artifacts)]
        if args.quick:
            train += ["--epochs", "2"]
        steps.append(("Train the two-tower retriever and the ranker, export, build the FAISS index", train))
    models = ["random", "popularity", "ease", "itemknn"]
    if trained:
        models += ["two_tower"]
        if _available("ranking.model"):
            models += ["pipeline"]
    evaluate = ["evaluate", "--models", *models, "--report-dir", str(reports / "evaluation")]
    if trained:
        evaluate += ["--artifacts", str(artifacts)]
    steps.append(("Evaluate every model on the same split (full-catalogue ranking, train items excluded)", evaluate))
    if trained and _available("recsys.commands.batch_score"):
        steps.append(("Precompute candidates and scores for every user with Beam (DirectRunner)",
                      ["batch-score", "--artifacts", str(artifacts), "--output", str(work / "batch")]))
    if trained and _available("recsys.commands.serve"):
        steps.append(("Serve over gRPC with Redis and call Recommend", ["serve-demo", "--artifacts", str(artifacts)]))

    started = time.perf_counter()
    for n, (title, argv) in enumerate(steps, 1):
        print(f"\n=== [{n}/{len(steps)}] {title}\n$ recsys {shlex.join(argv)}", flush=True)
        code = recsys_main(argv)
        if code:
            raise RecsysError(f"demo step {n} (recsys {argv[0]}) failed with exit code {code}")
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s. Artifacts: {artifacts}  Reports: {reports}")
    return 0
