"""The stacked engagement model applied to an existing version's heads on its test candidates (issue 12).

For a version trained WITHOUT the stacked model (e.g. main's defaults: fused β, uncalibrated), this
recomputes, in numpy, exactly the features `ranking.model.StackInputs` computes in the graph (the
ranker's engagement logit recovered from the served value as logit(e)/a − b/a − β·(s − 1), s, the
quality logit, the history similarities from the version's items.npz, the activity stats of
split.train) for every test user's served candidates, applies a stacked model's weights and reports
NDCG@10 / MAP@10 on the test split with `evaluation.selection.list_metrics` (binary gain, IDCG over
all of the user's test engagements — the protocol of `recsys evaluate`; the script checks this by
printing the version's own default order, which must equal its `recsys evaluate` pipeline row).

The weights: `--weights FILE` (a JSON of StackedEngagement.to_dict(), e.g. a manifest's
ranking.selection.stacking), or by default the ones `recsys train`'s validation run chooses
(workflows.train._select_on_validation on the version's data; trains a split.fit two-tower and
ranker, ~15 min on ML-100k). Nothing is chosen on test here.

  python bench/stacked_replica.py --version-dir ART/VERSION [--weights stacking.json]
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version-dir", required=True)
    ap.add_argument("--weights", default="", help="JSON of StackedEngagement.to_dict(); default: choose on validation")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from core import registry
    from core.config import build_config, flatten
    from evaluation.selection import ValidationCandidates, list_metrics
    from features import FeatureStore
    from pipeline import RecommendPipeline
    from ranking.stacking import STACK_FEATURES, StackedEngagement, activity_stats
    from retrieval import load_items
    from workflows.data import DataConfig, load_split

    manifest = registry.read_manifest(args.version_dir)
    data = build_config(DataConfig, base=flatten(DataConfig, manifest["data"]))
    dataset, split = load_split(data)
    if args.weights:
        d = json.loads(open(args.weights).read())
        model = StackedEngagement(tuple(float(d["weights"][k]) for k in STACK_FEATURES), float(d["intercept"]))
    else:
        from workflows.train import TrainConfig, TrainContext, _select_on_validation
        config = TrainConfig(data=data)
        ctx = TrainContext(config, dataset, split, FeatureStore.load(f"{args.version_dir}/features"),
                           args.version_dir, {"retrieval": manifest["retrieval"]})
        model = _select_on_validation(ctx, "sampled")["stacking"]
        if model is None:
            raise SystemExit("validation did not choose the stacked model for this data")
    print("stacked model:", json.dumps(model.to_dict()))

    pipe = RecommendPipeline.from_version_dir(args.version_dir)
    meta = pipe.ranker.meta
    beta = float(meta.get("retrieval_weight") or 0.0)
    cal = meta.get("calibration") or {"a": 1.0, "b": 0.0}
    if cal.get("method") == "stacked":
        raise SystemExit("this version already serves a stacked model; evaluate it with recsys evaluate")
    a, b = float(cal.get("a", 1.0)), float(cal.get("b", 0.0))
    test = split.test.loc[split.test["engaged"] == 1]
    users = sorted(test["user_id"].astype(str).unique())
    rel = {u: set(g.astype(str)) for u, g in test.groupby(test["user_id"].astype(str))["item_id"]}
    sets = pipe.candidates(users)
    n, width = len(users), max(len(s.item_ids) for s in sets)
    valid = np.zeros((n, width), bool)
    e, s, q = np.zeros((n, width)), np.zeros((n, width)), np.full((n, width), 0.5)
    y = np.zeros((n, width), bool)
    items = np.full((n, width), "", dtype=object)
    for r, (u, cs) in enumerate(zip(users, sets)):
        k = len(cs.item_ids)
        valid[r, :k] = True
        e[r, :k], s[r, :k], q[r, :k], items[r, :k] = cs.engagement, cs.retrieval_scores, cs.quality, cs.item_ids
        y[r, :k] = [i in rel[u] for i in cs.item_ids]
    cands = ValidationCandidates(np.array(users, object), valid, np.zeros_like(e), s, q, y, np.full(e.shape, np.nan),
                                 np.array([len(rel[u]) for u in users]))

    def logit(p):
        p = np.clip(p, 1e-30, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)

    default = pipe.default_weights
    from ranking import blend_scores
    served = blend_scores(e.ravel(), q.ravel(), default).reshape(e.shape)
    print(f"the version's own default blend {default}:", list_metrics(cands, served))
    print("retrieval score alone:", list_metrics(cands, s))
    z = (logit(e) - b) / a - beta * (s - 1.0)
    ids, emb = load_items(args.version_dir)
    row = {str(i): k for k, i in enumerate(ids)}
    unit = np.asarray(emb, np.float64)
    unit /= np.where(np.linalg.norm(unit, axis=1, keepdims=True) > 0, np.linalg.norm(unit, axis=1, keepdims=True), 1)
    hist = pipe.ranker.user_features(pipe.features, users)["history"]
    stats = activity_stats(split.train)
    istat, ustat = dict(zip(stats.item_ids, stats.item_values)), dict(zip(stats.user_ids, stats.user_values))
    x = np.zeros((n, width, len(STACK_FEATURES)))
    for r, u in enumerate(users):
        h = [t for t in str(hist[r]).split("|") if t][-20:]
        vecs = np.array([unit[row[t]] if t in row else np.zeros(unit.shape[1]) for t in h]).reshape(len(h), -1)
        k = int(valid[r].sum())
        cand = np.array([unit[row[str(i)]] if str(i) in row else np.zeros(unit.shape[1]) for i in items[r, :k]])
        dots = cand @ vecs.T
        last = dots[:, -1] if len(h) else np.zeros(k)
        s5 = vecs[-5:].sum(axis=0) if len(h) else np.zeros(unit.shape[1])
        rec = cand @ (s5 / np.linalg.norm(s5)) if np.linalg.norm(s5) > 0 else np.zeros(k)
        mx = dots.max(axis=1) if len(h) else np.zeros(k)
        st = np.array([istat.get(str(i), np.zeros(3)) for i in items[r, :k]]).reshape(k, 3)
        x[r, :k] = np.column_stack([z[r, :k], s[r, :k] - 1, logit(q[r, :k]), last, rec, mx, st,
                                    np.full(k, ustat.get(u, 0.0))])
    stacked = np.where(valid, model.logit(x.reshape(-1, x.shape[2])).reshape(valid.shape), -np.inf)
    print("stacked engagement order (replica):", list_metrics(cands, stacked))


if __name__ == "__main__":
    main()
