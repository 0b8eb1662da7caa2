"""Oracle study for issue 12's synthetic bars: what the generator's hidden truth could reach (numpy, fast).

On a trained synthetic version's TEST candidates (each test user's served top N, exactly the lists
`recsys evaluate` ranks; metrics by evaluation.selection.list_metrics: binary NDCG@10 with IDCG over
all of the user's test engagements, clickbait share of the top-10 slots), it compares orderings:

  truth e     — the generator's engagement probability σ(logit) of (user, item);
  truth hit   — the per-impression probability that (user, item) becomes a logged engagement:
                P(impressed) · P(engaged | impressed), with P(impressed) = ½·pop_i + ½·P(i wins the
                user's best-of-4 taste draw) (SyntheticTruth.impression_probability). Rows are i.i.d. given the
                truth, so within a user the Bayes-optimal order for "is a test hit" is this one;
  truth r     — the expected rating E[clip(rint(N(μ_i, 0.5²)), 1, 5)] of the item (SyntheticTruth.rating_moments);
  ours        — the version's served engagement and quality heads.

For each (engagement order, quality signal) it sweeps the blend families of the project
(multiplicative e^(1−α)·q^α, additive on logits) and a "perfect filter" (a logit penalty δ on every
clickbait item, the truth of item_type) and prints the FRONTIER figure of the issue: the best NDCG@10
among sweep points whose clickbait share is at most ¼ of the engagement-only share, as a % of the
engagement-only NDCG@10. Then the ranking AUCs within user (ours vs truth) and the rating floor:
the Bayes RMSE (truth r vs the observed test ratings) beside the bias baseline and the quality head.

Nothing here is chosen or fit on test: the truth is the generator's, the heads are the version's.

  python bench/frontier_oracle.py --version-dir ART/VERSION [--alphas 0:1:41]
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np
from scipy.special import expit


def within_user_auc(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> float:
    """Mean over users (with ≥ 1 positive and ≥ 1 negative candidate) of the AUC of scores vs labels."""
    from scipy.stats import rankdata

    out = []
    for s, y, v in zip(scores, labels, valid):
        s, y = s[v], y[v]
        pos = int(y.sum())
        if pos == 0 or pos == len(y):
            continue
        r = rankdata(s)
        out.append((r[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))
    return float(np.mean(out)) if out else float("nan")


def frontier(cands, family: dict[str, np.ndarray], e_only_key: str) -> tuple[dict, list[dict]]:
    """Metrics of every scorer in `family` (name → [n, N] scores); the frontier point vs `e_only_key`."""
    from evaluation.selection import list_metrics

    rows = [{"scorer": name, **list_metrics(cands, s)} for name, s in family.items()]
    base = next(r for r in rows if r["scorer"] == e_only_key)
    cap = base["clickbait_share@10"] / 4.0
    ok = [r for r in rows if r["clickbait_share@10"] <= cap + 1e-12]
    best = max(ok, key=lambda r: r["ndcg@10"]) if ok else None
    summary = {"e_only_ndcg": base["ndcg@10"], "e_only_share": base["clickbait_share@10"],
               "best_at_quarter": best and best["scorer"],
               "kept": best and best["ndcg@10"] / base["ndcg@10"],
               "best_share": best and best["clickbait_share@10"]}
    return summary, rows


WIDE_TRANSFORMS = tuple((t, s) for t in (2.0, 2.5, 3.0) for s in (0.3, 0.55, 1.0))


def blend_family(prefix: str, log_e: np.ndarray, logit_e: np.ndarray, q01: np.ndarray, alphas: np.ndarray,
                 cb: np.ndarray, deltas: np.ndarray, wide: bool = False) -> dict[str, np.ndarray]:
    """Scorers: multiplicative (1−α)·log e + α·log q, additive on logits, and the clickbait penalty δ; with
    `wide` also (1−α)·log e + α·log P(rating ≥ t) for P = Φ((r − t)/s), r = 1 + 4q, (t, s) ∈ WIDE_TRANSFORMS
    (a "satisfied engagement" family: steeper than log q below the threshold)."""
    from scipy.special import ndtr

    q = np.clip(q01, 1e-6, 1 - 1e-6)
    out = {}
    for a in alphas:
        out[f"{prefix} mult α={a:.3f}"] = (1 - a) * log_e + a * np.log(q)
        out[f"{prefix} add-logit α={a:.3f}"] = (1 - a) * logit_e + a * (np.log(q) - np.log1p(-q))
        for t, sd in WIDE_TRANSFORMS if wide else ():
            out[f"{prefix} sat t={t}/s={sd} α={a:.3f}"] = (1 - a) * log_e + a * np.log(
                np.clip(ndtr((1 + 4 * q - t) / sd), 1e-12, 1))
    for d in deltas:
        out[f"{prefix} filter δ={d:g}"] = log_e - d * cb
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version-dir", required=True)
    ap.add_argument("--alphas", default="0:1:41", help="start:stop:count of the quality share α")
    ap.add_argument("--json", default="", help="write the summary here")
    ap.add_argument("--wide", action="store_true", help="also the P(rating ≥ t) blend transforms (WIDE_TRANSFORMS)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from core import registry
    from core.config import build_config, flatten
    from evaluation.selection import ValidationCandidates, list_metrics
    from features.synthetic import SyntheticConfig, synthetic_truth
    from pipeline import RecommendPipeline
    from workflows.data import DataConfig, load_split

    manifest = registry.read_manifest(args.version_dir)
    if manifest["data"]["source"]["source"] != "synthetic":
        raise SystemExit("frontier_oracle needs a version trained on --source synthetic (the truth is the generator's)")
    data = build_config(DataConfig, base=flatten(DataConfig, manifest["data"]))
    dataset, split = load_split(data)
    truth = synthetic_truth(SyntheticConfig(**manifest["data"]["synthetic"]))
    a0, a1, na = args.alphas.split(":")
    alphas = np.linspace(float(a0), float(a1), int(na))
    deltas = np.array([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 6, 100])

    test = split.test.loc[split.test["engaged"] == 1]
    users = sorted(test["user_id"].astype(str).unique())
    rel = {u: set(g.astype(str)) for u, g in test.groupby(test["user_id"].astype(str))["item_id"]}
    pipe = RecommendPipeline.from_version_dir(args.version_dir)
    sets = pipe.candidates(users)
    n, width = len(users), max(len(s.item_ids) for s in sets)
    valid = np.zeros((n, width), bool)
    e, q, y = np.zeros((n, width)), np.full((n, width), 0.5), np.zeros((n, width), bool)
    item_idx = np.zeros((n, width), np.int64)
    for r, (u, cs) in enumerate(zip(users, sets)):
        k = len(cs.item_ids)
        valid[r, :k] = True
        e[r, :k], q[r, :k] = cs.engagement, cs.quality
        item_idx[r, :k] = [int(str(i)[1:]) for i in cs.item_ids]
        y[r, :k] = [i in rel[u] for i in cs.item_ids]
    user_idx = np.array([int(u[1:]) for u in users])
    cb = (truth.item_type[item_idx] == 1) & valid  # ITEM_TYPES[1] == "clickbait"
    ratings = np.full((n, width), np.nan)
    cands = ValidationCandidates(np.array(users, object), valid, np.zeros_like(e), np.zeros_like(e), q, y, ratings,
                                 np.array([len(rel[u]) for u in users]), flags={"clickbait": cb})

    true_logit = truth.engagement_logit(user_idx[:, None], item_idx)
    imp = truth.impression_probability(user_idx)
    true_hit = np.take_along_axis(imp, item_idx, axis=1) * expit(true_logit)
    mean_r, var_r = truth.rating_moments()
    true_r = mean_r[item_idx]
    true_q01 = (true_r - 1) / 4
    eps = 1e-12
    log_e_ours = np.log(np.clip(e, eps, 1))
    logit_e_ours = log_e_ours - np.log1p(-np.clip(e, 0, 1 - 1e-7))
    log_hit = np.log(true_hit)
    fams = {
        "(a) truth hit × truth r": blend_family("truth-hit/truth-r", log_hit, log_hit - np.log1p(-true_hit), true_q01,
                                                alphas, cb, deltas, args.wide),
        "(a') truth e × truth r": blend_family("truth-e/truth-r", np.log(expit(true_logit)), true_logit, true_q01,
                                               alphas, cb, deltas, args.wide),
        "(c) ours e × ours q": blend_family("ours", log_e_ours, logit_e_ours, q, alphas, cb, deltas, args.wide),
        "(c') ours e × truth r": blend_family("ours-e/truth-r", log_e_ours, logit_e_ours, true_q01, alphas, cb,
                                              deltas, args.wide),
        "(c'') truth hit × ours q": blend_family("truth-hit/ours-q", log_hit, log_hit - np.log1p(-true_hit), q,
                                                 alphas, cb, deltas, args.wide),
    }
    summary = {}
    print(f"test users {n}, candidates {int(valid.sum())}, engaged {int((y & valid).sum())}, "
          f"clickbait share of candidates {cb[valid].mean():.3f}")
    for name, fam in fams.items():
        keys = list(fam)
        for part, sel in (("blends (mult + add-logit)", [k for k in keys if " filter " not in k and " sat " not in k]),
                          *((("blends incl. P(r ≥ t)", [k for k in keys if " filter " not in k]),) if args.wide else ()),
                          ("perfect clickbait filter δ", [k for k in keys if " filter " in k or "mult α=0.000" in k])):
            e_key = next(k for k in keys if "mult α=0.000" in k)
            s, rows = frontier(cands, {k: fam[k] for k in sel}, e_key)
            summary[f"{name} / {part}"] = s
            print(f"{name:28s} {part:28s} e-only ndcg {s['e_only_ndcg']:.4f} share {s['e_only_share']:.3f} | "
                  f"best at ≤ ¼ share: {s['best_at_quarter']} kept {100 * (s['kept'] or 0):.1f}% "
                  f"(share {s['best_share'] if s['best_share'] is None else round(s['best_share'], 4)})")
        # the curve at the project's sweep points (multiplicative α ∈ 0, .1, …)
        curve = []
        for a in np.linspace(0, 1, 11):
            key = next((k for k in keys if k.endswith(f"mult α={a:.3f}")), None)
            if key:
                m = list_metrics(cands, fam[key])
                curve.append(f"α={a:.1f}: {m['ndcg@10']:.4f}/{m['clickbait_share@10']:.3f}")
        print("   multiplicative sweep ndcg/share:", "; ".join(curve[:6]))
    print("retrieval-free checks: ndcg of truth hit", round(list_metrics(cands, log_hit)["ndcg@10"], 4),
          "truth e", round(list_metrics(cands, true_logit)["ndcg@10"], 4),
          "ours", round(list_metrics(cands, log_e_ours)["ndcg@10"], 4))
    aucs = {"ours e": within_user_auc(e, y, valid), "truth e": within_user_auc(true_logit, y, valid),
            "truth hit": within_user_auc(log_hit, y, valid)}
    print("within-user AUC vs test labels:", {k: round(v, 4) for k, v in aucs.items()})
    from scipy.stats import spearmanr
    rho = np.nanmean([spearmanr(a[v], b[v])[0] for a, b, v in zip(log_e_ours, log_hit, valid)])
    print(f"within-user Spearman(ours e, truth hit) = {rho:.3f}")
    summary["auc"] = aucs
    summary["spearman_ours_truth_hit"] = float(rho)

    # Ratings: the Bayes floor on the same rated test rows the ranker's RMSE uses.
    rated = split.test.loc[split.test["engaged"] == 1]
    items = rated["item_id"].astype(str).str[1:].astype(int).to_numpy()
    obs = rated["rating"].to_numpy(np.float64)
    bayes = float(np.sqrt(np.mean((obs - mean_r[items]) ** 2)))
    floor = float(np.sqrt(np.mean(var_r[items])))
    diag = manifest.get("ranking", {}).get("test_diagnostics", {})
    print(f"rating: Bayes RMSE {bayes:.4f} on {len(obs)} test ratings (expected floor {floor:.4f}); "
          f"quality head {diag.get('quality_rmse', float('nan')):.4f}")
    summary["rmse"] = {"bayes": bayes, "expected_floor": floor, "quality_head": diag.get("quality_rmse")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, default=float)


if __name__ == "__main__":
    main()
