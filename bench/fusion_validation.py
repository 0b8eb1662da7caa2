"""Choose the retrieval-fusion weight β on the validation carve (never on test).

The ranker's served engagement head is σ(ranker logit + β·(s − 1)), s the two-tower score
of the pair (ranking/model.py, RetrievalAffinity). This script picks β the way every other
hyper-parameter is picked here: on validation.

  1. Inner split: `split.train` re-split with the validation rule, so its "test" part is
     exactly `split.validation` (each user's last val_fraction of train) and its own
     validation carve comes from `split.fit`. Test rows are never read.
  2. `workflows.train.train` (what `recsys train` runs: retrieval, index, ranker) runs on the
     inner split with β = 0, i.e. the ranker alone, exported as a normal version under --work.
  3. Each validation user's N candidates are scored once; fusion is applied post hoc,
     e_β = σ(logit(e) + β·(s − 1)) — identical to the in-model fusion, which
     tests/ranking/test_ranker.py checks — and ranked by the default blend e_β · q.

Prints NDCG@10 / MAP@10 (and graded NDCG, recall) per β for the retriever alone, the
ranker alone and each fused β:

  nice -n 10 .venv/bin/python bench/fusion_validation.py --work /tmp/fusion
  .venv/bin/python bench/fusion_validation.py --work /tmp/fusion --betas 0,10,20,30 -- --epochs 2

Flags after `--` are `recsys train`'s (data source, model flags..., or --config FILE.toml).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import registry  # noqa: E402
from core.config import parse_config  # noqa: E402
from features import SplitConfig, fit_feature_store, split_interactions  # noqa: E402
from workflows.data import load_split  # noqa: E402
from workflows.train import TrainConfig, train  # noqa: E402

log = logging.getLogger("fusion_validation")


def inner_split(split):
    """split.train re-split so that its test part is exactly split.validation (same per-user tail rule)."""
    cfg = split.config
    if cfg.strategy != "user_temporal" or cfg.val_fraction <= 0:
        raise SystemExit("fusion_validation: needs --strategy user_temporal with --val-fraction > 0")
    inner = split_interactions(split.train, SplitConfig(strategy="user_temporal", test_fraction=cfg.val_fraction,
                                                        val_fraction=cfg.val_fraction,
                                                        min_user_interactions=cfg.min_user_interactions))
    assert len(inner.test) == len(split.validation), (len(inner.test), len(split.validation))
    return inner


def train_inner(config: TrainConfig, dataset, inner, work: pathlib.Path, version: str) -> pathlib.Path:
    """Trains every stage on the inner split (β = 0) into work/version; returns the version dir."""
    vdir = work / version
    if (vdir / registry.MANIFEST).exists():
        log.info("reusing trained version %s", vdir)
        return vdir
    run = dataclasses.replace(config.run, artifacts=str(work), new_version=version, promote=False)
    return train(dataclasses.replace(config, run=run), loaded=(dataset, inner)).version_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="directory for the inner-split version (reused if present)")
    parser.add_argument("--betas", default="0,5,10,15,20,25,30", help="comma-separated β values to score")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", default="", help="also write the table here")
    parser.add_argument("train_flags", nargs="*", help="flags for recsys train, after --")
    opts = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    betas = [float(b) for b in opts.betas.split(",") if b.strip()]
    work = pathlib.Path(opts.work)

    config = parse_config(TrainConfig, ["--no-retrieval-progress", "--no-ranking-progress", *opts.train_flags,
                                        "--ranking-retrieval-weight", "0"], prog="recsys train")
    dataset, split = load_split(config.data)
    inner = inner_split(split)
    log.info("inner split: fit %d (its validation %d), scored part = split.validation %d rows",
             len(inner.train), len(inner.validation), len(inner.test))
    vdir = train_inner(config, dataset, inner, work, "inner-beta0")

    from evaluation.metrics import evaluate_rankings
    from evaluation.pipeline import PipelineEvalConfig, PipelineRecommender
    from evaluation.protocol import build_eval_data
    from ranking import BlendWeights, blend_scores

    features = fit_feature_store(dataset, inner.train)
    data = build_eval_data(dataset, inner, features)
    rec = PipelineRecommender(PipelineEvalConfig(version_dir=str(vdir), diagnostics=False, verify=False))
    rec.fit(data)
    cands = rec.candidate_sets(data.test_users)
    columns = {item: c for c, item in enumerate(np.asarray(data.item_ids).astype(str))}
    weights = BlendWeights(1.0, 1.0, mode="multiplicative")

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)

    def score(name: str, key) -> dict:
        ranked = np.full((len(cands), opts.k), -1, dtype=np.int64)
        for r, c in enumerate(cands):
            top = np.argsort(-key(c), kind="stable")[:opts.k]
            ranked[r, :len(top)] = [columns[i] for i in c.item_ids[top]]
        m = evaluate_rankings(ranked, data, ks=(opts.k,))
        row = {"model": name, **{f"{k}@{opts.k}": float(m[f"{k}@{opts.k}"])
                                 for k in ("ndcg", "ndcg_graded", "map", "recall")}}
        print(f"{name:28s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "model"), flush=True)
        return row

    rows = [score("retrieval alone", lambda c: c.retrieval_scores.astype(np.float64)),
            score("ranker alone, e", lambda c: c.engagement.astype(np.float64))]
    for beta in betas:
        def fused(c, beta=beta):
            e = 1.0 / (1.0 + np.exp(-(logit(c.engagement) + beta * (c.retrieval_scores.astype(np.float64) - 1.0))))
            return blend_scores(e, c.quality.astype(np.float64), weights)
        rows.append(score(f"β = {beta:g}, e·q", fused))
    if opts.json:
        pathlib.Path(opts.json).write_text(json.dumps({"rows": rows, "version": str(vdir),
                                                       "train_flags": opts.train_flags}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
