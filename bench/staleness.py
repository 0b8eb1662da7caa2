"""Staleness: a model trained once vs retrained at every window through `recsys retrain`'s code path.

MovieLens-100k on global time. The timeline is cut into `--windows` W windows of equal row
counts (boundaries b_0 < b_1 < ... < b_W, quantiles of the timestamps). Then:

  (a) static     one retrain at cutoff b_{s+1} (s = --start): trains on windows 0..s-1, holds
                 window s out for its gate (no serving version yet: promoted). Never retrained.
  (b) retrained  at every later cutoff b_{i+1} (i = s+1 .. W-2) one `workflows.retrain.retrain`
                 (the function `recsys retrain` runs): trains on windows < i, gates on window i
                 against the serving version, promotes or keeps serving.
  both are scored on each NEXT window i+1 (history = every row before it; a version's later
  engagements are merged into its users' histories as streamed events, as serving does) by
  the gate's own evaluation (evaluation.pipeline.gate_metrics): ndcg@10 per window, table + PNG.

Warm start vs from scratch: at the last retrain cutoff, a warm-started candidate (--warm-start
from the serving version, --no-promote) is trained BEFORE the regular from-scratch one, both
from the same serving version; their training wall time and next-window ndcg@10 are reported.

  nice -n 10 .venv/bin/python bench/staleness.py --epochs 4 --out bench/out/staleness
Every training uses the demo's model defaults except `--epochs` (caps every stage's epochs) when
given; the run records its exact arguments and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=7)
    ap.add_argument("--start", type=int, default=2, help="static model holds out window s (trains on windows < s)")
    ap.add_argument("--epochs", type=int, default=0, help="cap every stage's epochs (0 = the demo defaults)")
    ap.add_argument("--out", default="bench/out/staleness")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `recsys retrain` flags")
    args = ap.parse_args(argv)
    from core.tf_env import limit_threads

    limit_threads(args.threads, args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from core import registry
    from core.config import parse_config
    from evaluation import build_eval_data
    from features import fit_feature_store, split_interactions
    from serving.hotswap import load_checked
    from workflows.data import DataConfig, load_dataset
    from workflows.retrain import RetrainConfig, evaluate_version, retrain, streamed_since

    out = pathlib.Path(args.out)
    root = out / "artifacts"
    if root.exists():
        shutil.rmtree(root)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(parse_config(DataConfig, ["--source", "movielens-100k"]))
    ts = dataset.interactions["timestamp"].to_numpy()
    bounds = [int(v) for v in np.quantile(ts, np.linspace(0, 1, args.windows + 1))]
    bounds[-1] = int(ts.max()) + 1
    s = args.start
    if not 1 <= s <= args.windows - 2:
        raise SystemExit(f"--start must be in [1, {args.windows - 2}]")
    common = ["--artifacts", str(root), "--source", "movielens-100k", "--no-retrieval-progress", "--no-ranking-progress",
              *(["--epochs", str(args.epochs)] if args.epochs else []), *args.extra]

    def run(cutoff_i: int, name: str, *flags: str):
        cfg = parse_config(RetrainConfig, [*common, "--cutoff", str(bounds[cutoff_i + 1]), "--holdout-start",
                                           str(bounds[cutoff_i]), "--new-version", name, *flags])
        t0 = time.perf_counter()
        result = retrain(cfg)
        wall = time.perf_counter() - t0
        lineage = result.manifest["lineage"]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {result.decision} (train {lineage['train_seconds']} s, "
              f"total {wall:.0f} s; load {os.getloadavg()[0]:.2f}) {'; '.join(result.reasons)}", flush=True)
        return result, wall

    def next_window_ndcg(version: str, i: int) -> dict:
        """gate_metrics of `version` on window i (history: every row before b_i)."""
        rows = dataset.interactions.loc[dataset.interactions["timestamp"] < bounds[i + 1]]
        split = split_interactions(rows.reset_index(drop=True),
                                   parse_config(DataConfig, ["--strategy", "global_time", "--cutoff-timestamp",
                                                             str(bounds[i]), "--val-fraction", "0"]).split)
        from features import Dataset
        ds = Dataset(dataset.name, rows.reset_index(drop=True), dataset.users, dataset.items, dataset.spec)
        data = build_eval_data(ds, split, fit_feature_store(ds, split.train))
        pipe = load_checked(root / version, verify=True, warmup_users=0)
        return evaluate_version(pipe, data, streamed_since(split.train, pipe.features.seen))

    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    static, _ = run(s, "static")
    rows = []
    warm = None
    for i in range(s + 1, args.windows):
        # window i is the "next window" of the model serving after the retrain at cutoff b_i (holdout i-1)
        if i - 1 > s:
            if i - 1 == args.windows - 2:  # the last retrain: warm start first, from the same serving version
                warm_result, warm_wall = run(i - 1, f"warm-w{i - 1}", "--warm-start", "--no-promote")
                warm = {"version": warm_result.version, "train_seconds": warm_result.manifest["lineage"]["train_seconds"],
                        "wall_seconds": round(warm_wall, 1), "decision": warm_result.decision,
                        "carried": warm_result.manifest["lineage"]["warm_start"]}
            result, wall = run(i - 1, f"retrain-w{i - 1}")
            decision = result.decision
            scratch = {"version": result.version, "train_seconds": result.manifest["lineage"]["train_seconds"],
                       "wall_seconds": round(wall, 1)}
        else:
            decision, scratch = "static (first version)", None
        load.append(os.getloadavg()[0])
        current = registry.current_version(root)
        m_static = next_window_ndcg("static", i)
        m_current = m_static if current == "static" else next_window_ndcg(current, i)
        row = {"window": i, "window_start": bounds[i], "window_end": bounds[i + 1],
               "gate_decision": decision, "serving": current,
               "static_ndcg@10": m_static["ndcg@10"], "retrained_ndcg@10": m_current["ndcg@10"],
               "static_mean_hit_rating@10": m_static["mean_hit_rating@10"],
               "retrained_mean_hit_rating@10": m_current["mean_hit_rating@10"],
               "users": m_static["users"]}
        if warm is not None and scratch is not None and warm.get("next_ndcg@10") is None:
            warm["next_ndcg@10"] = next_window_ndcg(warm["version"], i)["ndcg@10"]
            scratch["next_ndcg@10"] = next_window_ndcg(scratch["version"], i)["ndcg@10"]
            row["warm_vs_scratch"] = {"warm": warm, "scratch": scratch}
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    summary = {
        "args": vars(args), "command": "bench/staleness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "bounds": bounds, "rows": rows, "load_avg_1min": load, "uptime": os.popen("uptime").read().strip(),
        "mean_static_ndcg@10": float(np.mean([r["static_ndcg@10"] for r in rows])),
        "mean_retrained_ndcg@10": float(np.mean([r["retrained_ndcg@10"] for r in rows])),
        "warm_vs_scratch": next((r["warm_vs_scratch"] for r in rows if "warm_vs_scratch" in r), None),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "staleness.json").write_text(json.dumps(summary, indent=2, default=str))
    _plot(rows, out / "staleness.png")
    print(_table(summary))
    return 0


def _table(summary: dict) -> str:
    lines = ["| next window | rows from | static ndcg@10 | retrained ndcg@10 | gate decision (serving after) |",
             "|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['window']} | {time.strftime('%Y-%m-%d', time.gmtime(r['window_start']))} | "
                     f"{r['static_ndcg@10']:.4f} | {r['retrained_ndcg@10']:.4f} | {r['gate_decision']} ({r['serving']}) |")
    lines.append(f"| mean | | {summary['mean_static_ndcg@10']:.4f} | {summary['mean_retrained_ndcg@10']:.4f} | |")
    w = summary.get("warm_vs_scratch")
    if w:
        lines += ["", "| candidate | train wall s | next-window ndcg@10 |", "|---|---|---|",
                  f"| warm start | {w['warm']['train_seconds']} | {w['warm']['next_ndcg@10']:.4f} |",
                  f"| from scratch | {w['scratch']['train_seconds']} | {w['scratch']['next_ndcg@10']:.4f} |"]
    return "\n".join(lines)


def _plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["window"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["static_ndcg@10"] for r in rows], "o-", label="(a) trained once")
    ax.plot(x, [r["retrained_ndcg@10"] for r in rows], "s-", label="(b) retrained + gated each window")
    for r in rows:
        ax.annotate(r["gate_decision"].split(" ")[0], (r["window"], r["retrained_ndcg@10"]), fontsize=7,
                    textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xlabel("next window (global time)")
    ax.set_ylabel("ndcg@10 on the window")
    ax.set_title("MovieLens-100k: staleness")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
