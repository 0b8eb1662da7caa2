"""Offline feasibility study for brand-new users (issue 13, new-user target): numpy scorers on the same
94 held-out users as bench/feedback.py, first 5 events known, NDCG@10 on the rest of their history.

  PYTHONPATH=$PWD RECSYS_DATA_DIR=... .venv/bin/python bench/new_users_study.py

Every statistic is fit on the train split of the holdout data (the 10% held-out users removed,
the project's default split); the grid values printed are NOT chosen on these users — this is
a map of what each family can reach (the served scorer's (w, d) is chosen at training on
simulated new users, see workflows/newusers.py). Scorers: raw popularity; EASE (λ) on the
recency-weighted events, alone and + a·popularity; the served form (popularity and P(j | i) mixed
with weight w, times the quality prior; w = 0 is the server's fallback); item-kNN (shrunk cosine, top-K); user-kNN;
P(j | i) co-occurrence (decayed); time-windowed popularity (train rows of the W days before the
user's 5th event) alone and + P(j | i).
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> int:
    from core.config import parse_config
    from evaluation.baselines import _keep_neighbors, _shrunk_cosine, ease_weights
    from evaluation.metrics import ndcg_at_k
    from features import split_interactions
    from workflows.data import DataConfig, load_split

    cfg = parse_config(DataConfig, [])
    dataset, _ = load_split(cfg)
    inter = dataset.interactions
    users = np.array(sorted(inter["user_id"].astype(str).unique()))
    held = sorted(np.random.default_rng(0).choice(users, size=round(0.1 * len(users)), replace=False).tolist())
    reduced = inter.loc[~inter["user_id"].astype(str).isin(held)].reset_index(drop=True)
    train = split_interactions(reduced, cfg.split).train
    train = train.loc[train["engaged"] == 1]
    items = pd.Index(np.array(sorted(set(inter["item_id"].astype(str)))))
    n_items = len(items)
    tusers = pd.Index(sorted(train["user_id"].astype(str).unique()))
    x = sp.csr_matrix((np.ones(len(train)), (tusers.get_indexer(train["user_id"].astype(str)),
                                             items.get_indexer(train["item_id"].astype(str)))),
                      shape=(len(tusers), n_items))
    x.data[:] = 1.0
    pop = np.asarray(x.sum(0)).ravel() / x.shape[0]
    rows = inter.loc[inter["user_id"].astype(str).isin(held) & (inter["engaged"] == 1)]
    rows = rows.sort_values(["timestamp", "item_id"], kind="stable")
    cases, t5 = [], []
    for _, part in rows.groupby(rows["user_id"].astype(str), sort=True):
        its = part["item_id"].astype(str).tolist()
        if len(its) > 5:
            cases.append((its[:5], set(its[5:]) - set(its[:5])))
            t5.append(int(part["timestamp"].iloc[4]))

    def evaluate(score) -> float:
        ranked = np.full((len(cases), 10), -1)
        r_rows, r_cols = [], []
        for n, (first, rel) in enumerate(cases):
            s = np.asarray(score(n, first), dtype=np.float64).copy()
            s[items.get_indexer(first)] = -np.inf
            ranked[n] = np.argsort(-s, kind="stable")[:10]
            cols = items.get_indexer(sorted(rel))
            r_rows += [n] * len(cols)
            r_cols += cols.tolist()
        rel = sp.csr_matrix((np.ones(len(r_rows)), (r_rows, r_cols)), shape=(len(cases), n_items))
        return float(np.nanmean(ndcg_at_k(ranked, rel, 10)))

    def hvec(first, decay):  # first: oldest first
        h = np.zeros(n_items)
        for m, j in enumerate(items.get_indexer(first)):
            h[j] = decay ** (len(first) - 1 - m)
        return h

    out = [("raw popularity", evaluate(lambda n, f: pop))]
    for lam in (50, 200, 1000, 3000):
        b = ease_weights(x, lam)
        for d in (1.0, 0.7):
            out.append((f"EASE λ={lam} d={d}", evaluate(lambda n, f: hvec(f, d) @ b)))
            for a in (0.3, 1.0, 3.0):
                out.append((f"EASE λ={lam} d={d} + {a:g}·pop",
                            evaluate(lambda n, f, a=a: (hvec(f, d) @ b) / hvec(f, d).sum() + a * pop)))
    for shrink in (0, 50):
        sim = _shrunk_cosine(x, shrink)
        for k in (50, 200):
            s = _keep_neighbors(sim, k)
            out.append((f"item-kNN shrink={shrink} K={k}",
                        evaluate(lambda n, f: np.asarray(s.T @ hvec(f, 1.0)).ravel())))
    xn = x.multiply(1 / np.sqrt(np.asarray(x.sum(1)))).tocsr()
    for k in (50, 200):
        def uknn(n, f, k=k):
            sim = np.asarray(xn @ hvec(f, 1.0)).ravel()
            top = np.argsort(-sim)[:k]
            return np.asarray(x[top].T @ sim[top]).ravel() / max(sim[top].sum(), 1e-9) + 0.5 * pop
        out.append((f"user-kNN K={k} + 0.5·pop", evaluate(uknn)))
    co = (x.T @ x).toarray()
    cnt = np.diag(co).copy()
    np.fill_diagonal(co, 0)
    cond = co / np.maximum(cnt[:, None], 1)
    for d in (1.0, 0.7):
        out.append((f"P(j|i) d={d}", evaluate(lambda n, f: hvec(f, d) @ cond / hvec(f, d).sum())))
    # the served form: (1 - w)·reach + w·P(j|i) (decay 0.5), blended with the quality prior (multiplicative 1, 1)
    from features import fit_feature_store
    from ranking import normalize_rating
    store = fit_feature_store(dataclasses.replace(dataset, interactions=reduced), split_interactions(reduced, cfg.split).train)
    quality = np.clip(normalize_rating(store.rating_prior.of(np.asarray(items)), (1.0, 5.0)), 0.0, 1.0)
    for w in (0.0, 0.3, 0.5, 0.7, 0.9, 1.0):
        out.append((f"((1-w)·pop + w·P(j|i) d=0.5) × quality prior, w={w:g}",
                    evaluate(lambda n, f, w=w: ((1 - w) * pop + w * (hvec(f, 0.5) @ cond) / hvec(f, 0.5).sum())
                             * quality)))
    trc, trt = items.get_indexer(train["item_id"].astype(str)), train["timestamp"].to_numpy()
    for days in (30, 90):
        def windowed(n, f, a, days=days):
            m = (trt <= t5[n]) & (trt > t5[n] - days * 86400)
            wp = np.bincount(trc[m], minlength=n_items).astype(float)
            cp = hvec(f, 0.7) @ cond
            return wp / max(wp.sum(), 1) + a * cp / max(cp.sum(), 1e-9)
        for a in (0.0, 1.0):
            out.append((f"popularity of the {days} days before + {a:g}·P(j|i)", evaluate(lambda n, f: windowed(n, f, a))))
    base = out[0][1]
    print(f"{len(cases)} held-out users, first 5 events known; NDCG@10 (÷ raw popularity)")
    for name, v in out:
        print(f"  {name:48} {v:.4f}  {v / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
