"""`recsys experiment set|show|stop|report`: the A/B, shadow and canary file a server runs, and its report."""
from __future__ import annotations

import argparse
import math

from recsys.commands import COMMANDS, add_command

_TARGET = {"artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts)",
           "file": "the experiment file (empty = <artifacts>/experiment.json, where `recsys serve` looks)"}


def register(sub: argparse._SubParsersAction) -> None:
    from workflows.experiments import ExperimentReportConfig, ExperimentSetConfig, ExperimentShowConfig

    p = sub.add_parser("experiment", help=COMMANDS["experiment"][1],
                       description="Online experiments: the file beside the registry that every `recsys serve` of "
                                   "that artifacts root re-reads when it changes (arms, shadow, canary), and the "
                                   "report on exported events.")
    esub = p.add_subparsers(dest="experiment_command", metavar="ACTION", required=True)
    add_command(esub, "set", ExperimentSetConfig, run_set, help="validate and install an experiment (atomic)",
                help_text={"target": _TARGET, "experiment": {
                    "from_json": "install this JSON experiment file (validated; format in core/experiment.py) instead "
                                 "of building one from the flags",
                    "name": "experiment name", "salt": "hashing salt (empty = the name): a new salt reshuffles users",
                    "control": "the arm the report compares with (empty = the first arm)",
                    "arms": "NAME=VERSION:SHARE[:W_E,W_Q[,MODE[,TRANSFORM]]] per arm; VERSION 'current' = the served "
                            "version; shares sum to 1; weights replace the version's default blend",
                    "allow_force": "requests may pick an arm with force_arm (the server needs --experiment-allow-force)",
                    "shadow": "VERSION[:SAMPLE[:K]]: score a SAMPLE fraction of requests with VERSION off the request "
                              "path and compare its top K",
                    }, "canary": {
                    "arm": "the arm whose share ramps on --canary-schedule (taken from control)",
                    "schedule": "SECONDS:SHARE,... steps from now, e.g. 0:0.01,300:0.05,900:0.2",
                    "window_s": "guardrails look at the last this many seconds",
                    "min_requests": "canary requests in the window before a guardrail can fire",
                    "max_error_rate": "roll back above this error rate",
                    "max_p99_ratio": "roll back when the canary's p99 latency exceeds this × control's",
                    "max_empty_rate": "roll back above this rate of empty answers"}},
                description="Writes <artifacts>/experiment.json (validated first: names, shares, weights, the "
                            "canary schedule, and that every version exists under the root). Running servers "
                            "pick it up within --experiment-poll-s; one that cannot load it keeps the old one "
                            "and logs why.")
    add_command(esub, "show", ExperimentShowConfig, run_show, help="print the running experiment and its current "
                "shares", help_text={"target": _TARGET})
    add_command(esub, "stop", ExperimentShowConfig, run_stop, help="remove the experiment (servers stop it at their "
                "next poll)", help_text={"target": _TARGET})
    add_command(esub, "report", ExperimentReportConfig, run_report,
                help="per-arm CTR@k, mean rating, 95%% CIs, tests vs control and a sample-ratio check",
                help_text={"target": _TARGET, "report": {
                    "events": "the exported events directory (`recsys events export --output`)",
                    "control": "the control arm (empty = the experiment file's)",
                    "shares": "ARM=SHARE expected shares for the sample-ratio check (empty = the file's)",
                    "k": "CTR@k counts positions 1..k", "srm_alpha": "flag a sample-ratio mismatch below this p-value",
                    "output": "directory for report.md, report.json and report.png"}},
                description="Reads exported events (served lists as impressions with their arm, engagements and "
                            "ratings attributed to the arm of the list they answer), and writes per arm: users, "
                            "impressions, engagements, CTR@k and mean rating of engaged items with 95% confidence "
                            "intervals (delta method over users), a two-sided test of each arm against control, "
                            "and a chi-square sample-ratio-mismatch check. Markdown, JSON and a PNG.")


def run_set(config, args: argparse.Namespace) -> int:
    from core.config import config_errors
    from workflows.experiments import describe, set_experiment

    with config_errors():
        path, experiment = set_experiment(config)
    print(f"wrote {path}\n{describe(experiment)}")
    return 0


def run_show(config, args: argparse.Namespace) -> int:
    from core.config import config_errors
    from workflows.experiments import describe, show_experiment

    with config_errors():
        experiment = show_experiment(config.target)
    print(describe(experiment) if experiment is not None else f"no experiment running ({config.target.path()} absent)")
    return 0


def run_stop(config, args: argparse.Namespace) -> int:
    from workflows.experiments import stop_experiment

    path = config.target.path()
    print(f"removed {path}" if stop_experiment(config.target) else f"no experiment to stop ({path} absent)")
    return 0


def run_report(config, args: argparse.Namespace) -> int:
    from core.config import config_errors
    from workflows.experiments import run_report as report

    with config_errors():
        result = report(config)
    k = result["k"]
    print(f"{'arm':<12} {'users':>8} {'impressions':>12} {'engaged':>8} {'CTR@' + str(k):>8} {'mean rating':>12}")
    for arm, a in result["arms"].items():
        print(f"{arm:<12} {a['users']:>8,} {a['impressions']:>12,} {a['engagements']:>8,} {_f(a['ctr_at_k']):>8} "
              f"{_f(a['mean_rating'], 3):>12}")
    for arm, t in result["tests"].items():
        c, r = t["ctr_at_k"], t["mean_rating"]
        print(f"{arm} vs {result['control']}: CTR@{k} {c['diff']:+.4f} (p {_f(c['p_value'])}), mean rating "
              f"{r['diff']:+.3f} (p {_f(r['p_value'])})")
    srm = result.get("srm")
    if srm:
        print(f"sample ratio: p {_f(srm['p_value'])}" + (" — MISMATCH" if srm["mismatch"] else " — ok"))
    print(f"report in {result['output']}/")
    return 0


def _f(x: float, digits: int = 4) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
