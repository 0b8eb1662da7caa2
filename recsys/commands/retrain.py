"""`recsys retrain`: flags and config file → RetrainConfig → workflows.retrain.retrain → the gate table."""
from __future__ import annotations

import argparse
import math

from recsys.commands import add_command
from recsys.commands._data import DATA_HELP
from recsys.commands.train import _HELP as _TRAIN_HELP

_HELP = {
    "retrain": {
        "artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts); its CURRENT version is the one "
                     "the candidate must beat",
        "events": "event table `recsys events export --output` wrote (directory, Parquet or CSV): its engagements, "
                  "ratings and impressions are added to the base source's interactions",
        "cutoff": "use only rows with timestamp < this (seconds), base source and events alike (0 = all)",
        "holdout_days": "the held-out window is the last N days before the cut-off (0 = the last --test-fraction "
                        "of the rows by time); the candidate trains on what precedes it",
        "holdout_start": "or: the held-out window starts at this timestamp (seconds; overrides --holdout-days)",
        "warm_start": "initialise the two-tower from the serving version: known ids keep their embeddings, new "
                      "ids start fresh",
        "new_version": "name of the candidate version (empty = v<UTC time>-<random>)",
        "promote": "on a pass, point CURRENT at the candidate (--no-promote: record the decision only)",
        "epochs": "override every stage's maximum epochs (0 = each stage's own default)",
        "ndcg_tolerance": "gate: candidate ndcg@10 >= serving ndcg@10 - this",
        "rating_tolerance": "gate: candidate mean rating of top-10 hits >= serving's - this",
        "ece_tolerance": "gate: candidate engagement ECE (served candidates) <= serving's + this",
        "warmup_users": "users the serving checks' warm-up scores",
    },
    **{k: v for k, v in _TRAIN_HELP.items() if k != "run"},
    **{f"data.{k}": v for k, v in DATA_HELP.items()},
}


def register(sub: argparse._SubParsersAction) -> None:
    from workflows.retrain import RetrainConfig

    add_command(sub, "retrain", RetrainConfig, run, help_text=_HELP,
                description="Trains a candidate on the base source plus exported events up to --cutoff, holding "
                            "out the most recent window; scores the candidate and the serving (CURRENT) version on "
                            "that window with the evaluation code (ndcg@10, mean rating of hits, engagement ECE); "
                            "runs the serving checks; promotes on a pass, keeps serving on a fail. Lineage and the "
                            "gate table go into the candidate's manifest (see `recsys versions`). One retrain at a "
                            "time per artifacts root (a lock file); a crash leaves no partial version. Exit code 0 "
                            "on a pass, 3 when the gate refused the candidate.")


def run(config, args: argparse.Namespace) -> int:
    from workflows.retrain import retrain

    result = retrain(config)
    print(f"candidate {result.version} vs serving {result.parent or '(none)'}: {result.decision.upper()}")
    print(format_gate(result.gate))
    for reason in result.reasons:
        print(f"  - {reason}")
    print(f"version directory: {result.version_dir}")
    return 0 if result.passed else 3


def format_gate(rows: list[dict]) -> str:
    def num(v) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
    lines = [f"  {'check':<22}{'candidate':>11}{'serving':>11}  {'result':<6}  rule"]
    for r in rows:
        lines.append(f"  {r['check']:<22}{num(r['candidate']):>11}{num(r['serving']):>11}  "
                     f"{'pass' if r['passed'] else 'FAIL':<6}  {r['rule']}")
    return "\n".join(lines)
