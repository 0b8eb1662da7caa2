"""`recsys experiment set|show|stop|report`: write the experiment file the server runs, and report on it.

The file format and the user → arm assignment are core/experiment.py's; the statistics are
evaluation/experiments.py's. `set` validates everything (names, shares, weights, canary schedule,
that every version exists and is sealed under the artifacts root) before it atomically replaces
the file, so a running server only ever sees a whole, valid file from here (it validates again
and refuses a bad file written by other means).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Any

import pandas as pd

from core.config import section
from core.errors import DataError
from core.experiment import (
    BUCKETS,
    Experiment,
    ExperimentConfigError,
    experiment_file,
    parse_experiment,
    read_experiment,
    write_experiment,
)
from core.registry import MANIFEST, default_root

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExperimentTarget:
    """Which experiment file."""

    artifacts: str = ""   # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    file: str = ""        # the experiment file ("" = <artifacts>/experiment.json)

    def path(self) -> pathlib.Path:
        return pathlib.Path(self.file) if self.file else experiment_file(self.root())

    def root(self) -> pathlib.Path:
        return pathlib.Path(self.artifacts) if self.artifacts else default_root()


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    """The experiment, from flags (or --from-json FILE)."""

    from_json: str = ""                   # install this JSON file (validated) instead of building from flags
    name: str = ""
    salt: str = ""                        # "" = the name
    control: str = ""                     # "" = the first arm
    arms: tuple[tuple[str, str], ...] = ()  # NAME=VERSION:SHARE[:W_E,W_Q[,MODE[,TRANSFORM]]]
    allow_force: bool = False
    shadow: str = ""                      # VERSION[:SAMPLE[:K]]; "" = no shadow


@dataclasses.dataclass(frozen=True)
class CanarySpec:
    """An optional canary arm with its schedule and guardrails."""

    arm: str = ""                         # "" = no canary
    schedule: str = ""                    # SECONDS:SHARE,... e.g. 0:0.01,300:0.05,900:0.2
    window_s: float = 60.0
    min_requests: int = 50
    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    max_empty_rate: float = 0.05


@dataclasses.dataclass(frozen=True)
class ExperimentSetConfig:
    """`recsys experiment set`."""

    target: ExperimentTarget = section(ExperimentTarget, title="experiment file")
    experiment: ExperimentSpec = section(ExperimentSpec, title="experiment")
    canary: CanarySpec = section(CanarySpec, prefix="canary_", title="canary")


@dataclasses.dataclass(frozen=True)
class ExperimentShowConfig:
    """`recsys experiment show|stop`."""

    target: ExperimentTarget = section(ExperimentTarget, title="experiment file")


@dataclasses.dataclass(frozen=True)
class ReportSpec:
    """What to read and how to test."""

    events: str = "events"               # the exported Parquet directory (recsys events export --output)
    control: str = ""                    # "" = the experiment file's control
    shares: tuple[tuple[str, str], ...] = ()  # ARM=SHARE expected shares ("" = the file's shares)
    k: int = 10                          # CTR@k: positions 1..k
    srm_alpha: float = 0.001             # SRM flagged when the chi-square p-value is below this
    output: str = "reports/experiment"   # report.md, report.json, report.png

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if not 0 < self.srm_alpha < 1:
            raise ValueError(f"--srm-alpha must be in (0, 1), got {self.srm_alpha}")


@dataclasses.dataclass(frozen=True)
class ExperimentReportConfig:
    """`recsys experiment report`: exported events → per-arm metrics, tests, SRM; Markdown, JSON, PNG."""

    target: ExperimentTarget = section(ExperimentTarget, title="experiment file")
    report: ReportSpec = section(ReportSpec, title="report")


def _float(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ExperimentConfigError(f"{flag}: {text!r} is not a number") from None
    return value


def experiment_from_flags(c: ExperimentSpec, canary: CanarySpec = CanarySpec()) -> dict[str, Any]:
    """The experiment file's JSON object from `recsys experiment set` flags (validated afterwards)."""
    if not c.name:
        raise ExperimentConfigError("--name: an experiment needs a name (or use --from-json FILE)")
    if not c.arms:
        raise ExperimentConfigError("--arms: give at least one NAME=VERSION:SHARE[:W_E,W_Q[,MODE[,TRANSFORM]]]")
    arms = []
    for name, spec in c.arms:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ExperimentConfigError(f"--arms {name}={spec}: expected VERSION:SHARE[:W_E,W_Q[,MODE[,TRANSFORM]]]")
        arm: dict[str, Any] = {"name": name, "version": parts[0] or "current",
                               "share": _float(f"--arms {name}", parts[1])}
        if len(parts) == 3:
            w = parts[2].split(",")
            if len(w) < 2 or len(w) > 4:
                raise ExperimentConfigError(f"--arms {name}={spec}: weights are W_E,W_Q[,MODE[,TRANSFORM]]")
            arm["weights"] = {"engagement": _float(f"--arms {name}", w[0]), "quality": _float(f"--arms {name}", w[1])}
            if len(w) > 2:
                arm["weights"]["mode"] = w[2]
            if len(w) > 3:
                arm["weights"]["transform"] = w[3]
        arms.append(arm)
    raw: dict[str, Any] = {"name": c.name, "arms": arms, "allow_force": c.allow_force}
    if c.salt:
        raw["salt"] = c.salt
    if c.control:
        raw["control"] = c.control
    if c.shadow:
        parts = c.shadow.split(":")
        raw["shadow"] = {"version": parts[0]}
        if len(parts) > 1:
            raw["shadow"]["sample"] = _float("--shadow", parts[1])
        if len(parts) > 2:
            raw["shadow"]["k"] = int(_float("--shadow", parts[2]))
    if canary.arm:
        if not canary.schedule:
            raise ExperimentConfigError("--canary-schedule: a canary needs SECONDS:SHARE,... steps")
        steps = []
        for step in canary.schedule.split(","):
            seconds, _, share = step.partition(":")
            steps.append([_float("--canary-schedule", seconds), _float("--canary-schedule", share)])
        raw["canary"] = {"arm": canary.arm, "schedule": steps, "start": time.time(), "window_s": canary.window_s,
                         "min_requests": canary.min_requests, "max_error_rate": canary.max_error_rate,
                         "max_p99_ratio": canary.max_p99_ratio, "max_empty_rate": canary.max_empty_rate}
    return raw


def set_experiment(c: ExperimentSetConfig) -> tuple[pathlib.Path, Experiment]:
    """Validates the experiment (and that its versions exist under the root), then writes the file atomically."""
    spec = c.experiment
    if spec.from_json:
        try:
            raw = json.loads(pathlib.Path(spec.from_json).read_text())
        except OSError as e:
            raise ExperimentConfigError(f"--from-json {spec.from_json}: unreadable ({e})") from e
        except ValueError as e:
            raise ExperimentConfigError(f"--from-json {spec.from_json}: not valid JSON ({e})") from e
        if isinstance(raw, dict) and raw.get("canary") is not None and "start" not in raw["canary"]:
            raw["canary"]["start"] = time.time()
    else:
        raw = experiment_from_flags(spec, c.canary)
    experiment = parse_experiment(raw)
    root = c.target.root()
    for v in experiment.versions:
        if v != "current" and not (root / v / MANIFEST).exists():
            raise ExperimentConfigError(f"version {v!r} is not a finished version under {root} (no {MANIFEST})")
    return write_experiment(c.target.path(), experiment), experiment


def describe(experiment: Experiment, now: float | None = None) -> str:
    """Human-readable summary: arms, versions, weights, effective shares and bucket ranges."""
    now = time.time() if now is None else now
    shares = experiment.shares(now)
    lines = [f"experiment {experiment.name} (salt {experiment.salt!r}, control {experiment.control}, "
             f"force {'allowed' if experiment.allow_force else 'not allowed'})"]
    ranges: dict[str, list[str]] = {}
    for lo, hi, arm in experiment.layout(now):
        ranges.setdefault(arm, []).append(f"[{lo}, {hi})")
    for a in experiment.arms:
        w = a.weights
        blend = f"{w.engagement:g},{w.quality:g},{w.mode},{w.transform}" if w else "version default"
        lines.append(f"  arm {a.name:<12} version {a.version:<24} blend {blend:<32} share {shares[a.name]:.4f} "
                     f"buckets {' '.join(ranges.get(a.name, ['none']))} of {BUCKETS}")
    if experiment.shadow is not None:
        s = experiment.shadow
        lines.append(f"  shadow version {s.version}, sample {s.sample:g}, overlap at k={s.k}")
    if experiment.canary is not None:
        c = experiment.canary
        state = f"ROLLED BACK ({c.rolled_back.get('reason')})" if c.rolled_back else \
            f"{now - c.start:.0f}s since start, share now {c.share_at(now):g}"
        lines.append(f"  canary arm {c.arm}: schedule {list(map(list, c.schedule))}; {state}; guardrails over "
                     f"{c.window_s:g}s (>= {c.min_requests} requests): error rate <= {c.max_error_rate:g}, "
                     f"p99 <= {c.max_p99_ratio:g}x control, empty rate <= {c.max_empty_rate:g}")
    return "\n".join(lines)


def show_experiment(target: ExperimentTarget) -> Experiment | None:
    return read_experiment(target.path())


def stop_experiment(target: ExperimentTarget) -> bool:
    """Removes the file (servers stop the experiment at their next poll); False when none was running."""
    try:
        target.path().unlink()
    except FileNotFoundError:
        return False
    return True


# -- report --------------------------------------------------------------------------------------
def read_events(directory: str | pathlib.Path) -> pd.DataFrame:
    """Every exported Parquet file under `directory` (files from before the `arm` column get arm "")."""
    d = pathlib.Path(directory)
    files = sorted(p for p in d.rglob("*.parquet") if not any(part.startswith((".", "_")) for part in p.parts[-2:]))
    if not files:
        raise DataError(f"--events {d}: no exported Parquet files (run `recsys events export --output {d}`)")
    frames = [pd.read_parquet(p) for p in files]
    frame = pd.concat(frames, ignore_index=True)
    if "arm" not in frame.columns:
        frame["arm"] = ""
    return frame


def run_report(config: ExperimentReportConfig) -> dict[str, Any]:
    """Reads the events and the experiment's arms, computes the report, writes report.{md,json,png}."""
    from evaluation.experiments import analyze

    c = config.report
    path = config.target.path()
    experiment = read_experiment(path) if not (c.control and c.shares) else None
    if experiment is None and not (c.control and c.shares):
        raise ExperimentConfigError(f"no experiment file at {path}: pass --control and --shares "
                                    "(or --file)")
    control = c.control or experiment.control
    if c.shares:
        shares = {arm: _float("--shares", v) for arm, v in c.shares}
    else:
        shares = {a.name: a.share for a in experiment.arms}
    frame = read_events(c.events)
    result = analyze(frame, control, shares, c.k, c.srm_alpha)
    result["experiment"] = experiment.to_dict() if experiment is not None else None
    result["events"] = str(c.events)
    out = pathlib.Path(c.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2, default=_json_default))
    (out / "report.md").write_text(markdown(result))
    _plot(result, out / "report.png")
    result["output"] = str(out)
    return result


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def _f(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    k = result["k"]
    lines = [f"# Experiment report ({(result.get('experiment') or {}).get('name', 'unnamed')})", "",
             f"Control: **{result['control']}**. Events: `{result.get('events', '')}`. Intervals are 95% (delta "
             "method over users, the unit of assignment); tests are two-sided z-tests against control.", "",
             f"| arm | users | lists | impressions | engagements | CTR@{k} | 95% CI | mean rating | 95% CI |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for arm, a in result["arms"].items():
        lines.append(f"| {arm} | {a['users']:,} | {a['lists']:,} | {a['impressions']:,} | {a['engagements']:,} | "
                     f"{_f(a['ctr_at_k'])} | [{_f(a['ctr_ci'][0])}, {_f(a['ctr_ci'][1])}] | {_f(a['mean_rating'], 3)} "
                     f"| [{_f(a['rating_ci'][0], 3)}, {_f(a['rating_ci'][1], 3)}] |")
    lines += ["", "| arm vs control | metric | difference | 95% CI | relative | p-value |", "|---|---|---:|---|---:|---:|"]
    for arm, t in result["tests"].items():
        for metric, name in (("ctr_at_k", f"CTR@{k}"), ("mean_rating", "mean rating")):
            x = t[metric]
            lines.append(f"| {arm} | {name} | {_f(x['diff'])} | [{_f(x['ci_low'])}, {_f(x['ci_high'])}] | "
                         f"{_f(100 * x['relative'], 2)}% | {_f(x['p_value'], 4)} |")
    srm = result.get("srm")
    if srm:
        verdict = "**SAMPLE-RATIO MISMATCH** — the assignment or the logging is broken; do not trust the " \
                  "comparisons" if srm["mismatch"] else "no mismatch"
        lines += ["", f"Sample-ratio check (users per arm vs expected shares, chi-square): chi2 {_f(srm['chi2'], 2)}, "
                      f"p {_f(srm['p_value'], 4)} — {verdict}. Observed {srm['observed']}, expected "
                      f"{ {a: round(v, 1) for a, v in srm['expected'].items()} }."]
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(result["arms"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (metric, ci, title) in zip(axes, (("ctr_at_k", "ctr_ci", f"CTR@{result['k']}"),
                                              ("mean_rating", "rating_ci", "mean rating of engaged items"))):
        values = [result["arms"][a][metric] for a in arms]
        lows = [result["arms"][a][ci][0] for a in arms]
        highs = [result["arms"][a][ci][1] for a in arms]
        err = [[max(0.0, v - lo) if math.isfinite(lo) else 0 for v, lo in zip(values, lows)],
               [max(0.0, hi - v) if math.isfinite(hi) else 0 for v, hi in zip(values, highs)]]
        ax.bar(arms, values, yerr=err, capsize=6, color=["#888" if a == result["control"] else "#3a7" for a in arms])
        ax.set_title(title + " (95% CI)")
        finite = [x for x in lows + highs if math.isfinite(x)]
        if finite:
            span = max(max(finite) - min(finite), 0.05 * max(abs(x) for x in finite), 1e-3)
            ax.set_ylim(max(0.0, min(finite) - span), max(finite) + span)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
