"""Two-tower retrieval quality on MovieLens-100k: logQ on and off, beside the baselines, one table.

Trains two versions with `workflows.train.train` (what `recsys train --stages retrieval` runs; identical
settings except retrieval.logq), then
scores them through their FAISS indexes with the offline protocol (full catalogue, train
items excluded) next to random, popularity, item-kNN and EASE on the same split.

  .venv/bin/python bench/retrieval_quality.py                    # default flags = `recsys train`'s
  .venv/bin/python bench/retrieval_quality.py --retrieval-temperature 0.1 --json out.json

Unknown flags are `recsys train`'s (e.g. --retrieval-epochs, --source ..., --config FILE.toml).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.config import parse_config  # noqa: E402
from evaluation import (  # noqa: E402
    EASERecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    RandomRecommender,
    build_eval_data,
    evaluate_models,
)
from evaluation.two_tower import TwoTowerEvalConfig, TwoTowerRecommender  # noqa: E402
from features import fit_feature_store  # noqa: E402
from workflows.data import load_split  # noqa: E402
from workflows.train import TrainConfig, train  # noqa: E402

COLUMNS = ("ndcg@10", "map@10", "recall@10", "recall@100", "coverage@10")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default="", help="where the two versions go (default: a temporary directory)")
    p.add_argument("--json", default="", help="also write the table and both manifests' retrieval sections here")
    args, train_flags = p.parse_known_args(argv)
    root = args.artifacts or tempfile.mkdtemp(prefix="retrieval-quality-")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config = parse_config(TrainConfig, train_flags, prog="recsys train")
    versions = {}
    for logq in (True, False):
        name = f"{'logq' if logq else 'nologq'}-{stamp}"
        run = dataclasses.replace(config.run, artifacts=root, new_version=name, stages=("retrieval",), promote=False)
        retrieval = dataclasses.replace(config.retrieval, logq=logq)
        versions[logq] = train(dataclasses.replace(config, run=run, retrieval=retrieval)).manifest

    # The evaluation data is the data the versions were trained on.
    dataset, split = load_split(config.data)
    data = build_eval_data(dataset, split, fit_feature_store(dataset, split.train))
    models = [RandomRecommender(), PopularityRecommender(), ItemKNNRecommender(), EASERecommender()]
    for logq, manifest in versions.items():
        models.append(TwoTowerRecommender(TwoTowerEvalConfig(os.path.join(root, manifest["version"])),
                                          name="two_tower" if logq else "two_tower_no_logq"))
    table = evaluate_models(data, models, ks=(10, 100))

    print("\n| model | " + " | ".join(COLUMNS) + " | train s |")
    print("|---|" + "---:|" * (len(COLUMNS) + 1))
    for name, row in table.iterrows():
        seconds = row["fit_seconds"]
        if name.startswith("two_tower"):
            seconds = versions[name == "two_tower"]["retrieval"]["training_seconds"]
        print(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS) + f" | {seconds:.1f} |")
    for logq, m in versions.items():
        r = m["retrieval"]
        print(f"two-tower logQ={'on' if logq else 'off'}: best epoch {r['best_epoch']} of {r['epochs_run']} "
              f"(validation {r['validation']}), final model on {r['trained_on']} for {r['final_epochs']} epochs, "
              f"{r['training_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"train_flags": train_flags, "table": json.loads(table.to_json(orient="index")),
                       "retrieval": {("logq" if k else "no_logq"): v["retrieval"] for k, v in versions.items()}},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
