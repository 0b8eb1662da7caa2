"""`recsys monitor`: an offline drift report (PSI / KS per feature) between two windows of interaction data."""
from __future__ import annotations

import argparse
import math

from recsys.commands import add_command
from recsys.commands._data import DATA_HELP

_WINDOW = {"split": "which part of the data: train, validation, test or all",
           "since": "keep rows at or after this time (ISO-8601 date/time, UTC unless it says otherwise, or epoch "
                    "seconds)",
           "until": "keep rows before this time",
           "file": "an events file (CSV/Parquet with user_id,item_id,timestamp[,rating][,engaged], e.g. exported "
                   "events) instead of the split"}


def register(sub: argparse._SubParsersAction) -> None:
    from workflows.monitor import MonitorConfig

    add_command(sub, "monitor", MonitorConfig, run, help_text={
        **{f"data.{k}": v for k, v in DATA_HELP.items()},
        "reference": {k: f"reference window: {v}" for k, v in _WINDOW.items()},
        "current": {k: f"current window: {v}" for k, v in _WINDOW.items()},
        "report": {"output": "directory for report.json, report.md, psi.png and distributions.png",
                   "psi_threshold": "PSI above this marks a quantity as drifted (0.25: significant shift)",
                   "bins": "reference quantile bins of a numeric quantity",
                   "max_categories": "the reference's most frequent values of a categorical quantity (the rest: "
                                     "one 'other' bin)",
                   "fail_on_drift": "exit with status 1 when any quantity drifted"}},
        description="Compares two windows of interaction data — by default the test split (the most recent "
                    "activity) against train, or an exported events file against train, or two time ranges of "
                    "the same data — per user feature, item feature, history length, item popularity, rating and "
                    "engagement: population stability index and the two-sample KS statistic (the same math as the "
                    "server's live drift gauges), plus the share of unknown users and items. Writes a Markdown "
                    "and a JSON report and PNG plots.")


def run(config, args: argparse.Namespace) -> int:
    from workflows.monitor import run_monitor

    result = run_monitor(config)
    print(f"{'quantity':<28} {'kind':<12} {'PSI':>8} {'KS':>8} {'n ref':>9} {'n cur':>9}")
    for x in result.rows:
        name = f"{x['group']}/{x['quantity']}"
        flag = "  drifted" if x["drifted"] else ""
        print(f"{name:<28} {x['kind']:<12} {_f(x['psi']):>8} {_f(x['ks']):>8} {x['n_reference']:>9,} "
              f"{x['n_current']:>9,}{flag}")
    print(f"unknown users {result.rates['unknown_user_rate']:.2%}, unknown items {result.rates['unknown_item_rate']:.2%}"
          f"; {len(result.drifted)} drifted (PSI > {config.report.psi_threshold}); report in {result.output}/")
    return 1 if config.report.fail_on_drift and result.drifted else 0


def _f(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.4f}"
