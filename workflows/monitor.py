"""`recsys monitor`: an offline drift report between two windows of interaction data.

A window is a split of the configured data (train / validation / test / all), optionally cut
to a time range, or an events file (CSV/Parquet in the interactions schema, e.g. exported
events). Each side is profiled per interaction row with the same quantities the server
watches where they exist, and compared with the one drift implementation (drift: PSI, KS):

  input        each user categorical / numeric feature of the row's user; history_length (the
               user's engaged interactions before the row, over the data and the events file)
  interaction  each item categorical / numeric / multi-valued feature of the row's item;
               item_popularity (the item's engaged count in the reference window); rating; engaged

plus the share of current rows whose user / item never occurs in the reference window.
Writes report.json, report.md, psi.png and distributions.png into `report.output`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import pathlib
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.config import ConfigError, config_to_dict, section
from core.errors import DataError
from drift import Profile, QuantityProfile
from features import Dataset, Split, read_table, split_multi, validate_interactions
from workflows.data import DataConfig, load_split

log = logging.getLogger(__name__)

Part = Literal["train", "validation", "test", "all"]


@dataclasses.dataclass(frozen=True)
class ReferenceWindow:
    """The reference side: a split of the data, optionally cut to [since, until), or an events file."""

    split: Part = "train"
    since: str = ""    # keep rows with timestamp >= this (ISO-8601 date/time or epoch seconds; "" = no bound)
    until: str = ""    # keep rows with timestamp < this
    file: str = ""     # an events file (CSV/Parquet, interactions schema) instead of the split


@dataclasses.dataclass(frozen=True)
class CurrentWindow(ReferenceWindow):
    """The current side (default: the test split, the most recent data)."""

    split: Part = "test"


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Where the report goes and what counts as drift."""

    output: str = "monitor-report"   # directory for report.json, report.md and the PNGs
    psi_threshold: float = 0.25      # PSI above this marks a quantity as drifted
    bins: int = 10                   # numeric quantities: reference quantile bins
    max_categories: int = 20         # categorical quantities: the reference's top values (the rest: "other")
    fail_on_drift: bool = False      # exit status 1 when any quantity drifted (for cron/CI)

    def __post_init__(self) -> None:
        if not self.psi_threshold > 0:
            raise ValueError(f"--psi-threshold must be > 0, got {self.psi_threshold}")
        if self.bins < 2 or self.max_categories < 1:
            raise ValueError(f"--bins must be >= 2 and --max-categories >= 1, got {self.bins}, {self.max_categories}")


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """`recsys monitor`: the data, the two windows and the report."""

    data: DataConfig = section(DataConfig)
    reference: ReferenceWindow = section(ReferenceWindow, prefix="reference_", title="reference window")
    current: CurrentWindow = section(CurrentWindow, prefix="current_", title="current window")
    report: ReportConfig = section(ReportConfig, title="report")


@dataclasses.dataclass(frozen=True)
class MonitorResult:
    rows: list[dict[str, Any]]
    rates: dict[str, float]
    output: pathlib.Path
    drifted: list[str]


def run_monitor(config: MonitorConfig) -> MonitorResult:
    """Loads both windows, profiles the reference, compares the current window, writes the report."""
    dataset, split = load_split(config.data)
    reference = _window(dataset, split, config.reference, "reference")
    current = _window(dataset, split, config.current, "current")
    events = pd.concat([dataset.interactions] + [w for w, c in ((reference, config.reference),
                                                                (current, config.current)) if c.file],
                       ignore_index=True)
    r = config.report
    popularity = reference.loc[reference["engaged"] == 1, "item_id"].value_counts()
    ref_q = window_quantities(dataset, reference, events, popularity)
    cur_q = window_quantities(dataset, current, events, popularity)
    profile = Profile({g: {name: QuantityProfile.fit(v, kind, bins=r.bins, max_categories=r.max_categories)
                           for name, (v, kind) in qs.items()} for g, qs in ref_q.items()})
    rows = []
    for group, quantities in profile.groups.items():
        for name, q in quantities.items():
            result = q.compare(cur_q[group][name][0])
            rows.append({"group": group, "quantity": name, "kind": q.kind, "psi": result["psi"], "ks": result["ks"],
                         "n_reference": q.count, "n_current": result["n"],
                         "drifted": bool(result["psi"] > r.psi_threshold)})
    rows.sort(key=lambda x: -x["psi"] if not math.isnan(x["psi"]) else math.inf)
    rates = {"unknown_user_rate": float((~current["user_id"].isin(set(reference["user_id"]))).mean()),
             "unknown_item_rate": float((~current["item_id"].isin(set(reference["item_id"]))).mean())}
    out = pathlib.Path(r.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": config_to_dict(config), "definition": {
        "psi": "sum_i (a_i - e_i) ln(max(a_i, 1e-4) / max(e_i, 1e-4)) over reference quantile (numeric) or top-category "
               "(categorical) bins", "ks": "two-sample Kolmogorov-Smirnov statistic sup |F_ref - F_cur|",
        "threshold": r.psi_threshold},
        "reference": _describe(reference), "current": _describe(current), "rates": rates, "drift": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(_markdown(report, config))
    _plots(profile, cur_q, rows, r.psi_threshold, out)
    drifted = [f"{x['group']}/{x['quantity']}" for x in rows if x["drifted"]]
    log.info("monitor: %d quantities, %d drifted; report in %s", len(rows), len(drifted), out)
    return MonitorResult(rows, rates, out, drifted)


def window_quantities(dataset: Dataset, rows: pd.DataFrame, events: pd.DataFrame,
                      popularity: pd.Series) -> dict[str, dict[str, tuple[np.ndarray, str]]]:
    """{group: {name: (values, kind)}}, one value per row of `rows` (see the module docstring)."""
    spec = dataset.spec
    users = dataset.users.reindex(rows["user_id"].astype(str))
    items = dataset.items.reindex(rows["item_id"].astype(str))
    inputs: dict[str, tuple[np.ndarray, str]] = {}
    for col in spec.user_categorical:
        inputs[col] = (users[col].to_numpy(dtype=object), "categorical")
    for col in spec.user_numeric:
        inputs[col] = (pd.to_numeric(users[col], errors="coerce").to_numpy(np.float64), "numeric")
    inputs["history_length"] = (_history_length(rows, events), "numeric")
    inter: dict[str, tuple[np.ndarray, str]] = {}
    for col in spec.item_categorical:
        inter[col] = (items[col].to_numpy(dtype=object), "categorical")
    for col in spec.item_numeric:
        inter[col] = (pd.to_numeric(items[col], errors="coerce").to_numpy(np.float64), "numeric")
    for col in spec.item_multi:  # one value per token: the genre mix of what users interact with
        tokens = [t for v in items[col].to_numpy(dtype=object) if isinstance(v, str) for t in split_multi(v)]
        inter[col] = (np.asarray(tokens, dtype=object), "categorical")
    inter["item_popularity"] = (rows["item_id"].map(popularity).fillna(0).to_numpy(np.float64), "numeric")
    inter["rating"] = (rows["rating"].to_numpy(np.float64), "numeric")
    inter["engaged"] = (rows["engaged"].astype(int).astype(str).to_numpy(dtype=object), "categorical")
    return {"input": inputs, "interaction": inter}


def _history_length(rows: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """Per row: the user's engaged events strictly before the row's timestamp, over `events`."""
    engaged = events.loc[events["engaged"] == 1, ["user_id", "timestamp"]]
    by_user = {u: np.sort(g.to_numpy()) for u, g in engaged.groupby("user_id")["timestamp"]}
    empty = np.zeros(0, dtype=np.int64)
    return np.fromiter((np.searchsorted(by_user.get(u, empty), t, side="left")
                        for u, t in zip(rows["user_id"], rows["timestamp"])), dtype=np.float64, count=len(rows))


def _window(dataset: Dataset, split: Split, w: ReferenceWindow, side: str) -> pd.DataFrame:
    flag = f"--{side}"
    if w.file:
        try:
            rows = validate_interactions(read_table(w.file, f"{flag}-file"), where=f"{flag}-file {w.file}")
        except DataError as e:
            raise ConfigError(str(e)) from e
        what = f"{flag}-file {w.file}"
    else:
        rows = {"train": split.train, "validation": split.validation, "test": split.test,
                "all": dataset.interactions}[w.split]
        what = f"{flag}-split {w.split}"
    since, until = _time(w.since, f"{flag}-since"), _time(w.until, f"{flag}-until")
    if since is not None:
        rows = rows[rows["timestamp"] >= since]
    if until is not None:
        rows = rows[rows["timestamp"] < until]
    if len(rows) == 0:
        raise ConfigError(f"{what}{f' {flag}-since {w.since}' if w.since else ''}"
                          f"{f' {flag}-until {w.until}' if w.until else ''} selects no rows; widen the window")
    return rows.astype({"user_id": str, "item_id": str})


def _time(value: str, flag: str) -> int | None:
    """ISO-8601 (UTC unless it says otherwise) or epoch seconds → epoch seconds; "" → None."""
    if not value:
        return None
    try:
        return int(float(value))
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise ConfigError(f"{flag} {value!r}: not an ISO-8601 date/time (2024-05-01, 2024-05-01T12:00:00) or epoch "
                          "seconds") from e
    return int((t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp())


def _describe(rows: pd.DataFrame) -> dict[str, Any]:
    return {"rows": len(rows), "users": int(rows["user_id"].nunique()), "items": int(rows["item_id"].nunique()),
            "from": _iso(rows["timestamp"].min()), "until": _iso(rows["timestamp"].max())}


def _iso(t: Any) -> str:
    return dt.datetime.fromtimestamp(int(t), dt.timezone.utc).isoformat()


def _json_default(x: Any) -> Any:
    return float(x) if isinstance(x, np.floating) else int(x) if isinstance(x, np.integer) else str(x)


def _fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.4f}"


def _markdown(report: dict, config: MonitorConfig) -> str:
    ref, cur = report["reference"], report["current"]

    def side(w: ReferenceWindow) -> str:
        return (f"file `{w.file}`" if w.file else f"split `{w.split}`") + (f" since {w.since}" if w.since else "") + (
            f" until {w.until}" if w.until else "")
    lines = [f"# Drift report: {side(config.current)} vs {side(config.reference)}", "",
             f"Reference: {ref['rows']:,} rows, {ref['users']:,} users, {ref['items']:,} items ({ref['from']} … "
             f"{ref['until']}). Current: {cur['rows']:,} rows, {cur['users']:,} users, {cur['items']:,} items "
             f"({cur['from']} … {cur['until']}).", "",
             f"Unknown users in the current window: {report['rates']['unknown_user_rate']:.2%}; unknown items: "
             f"{report['rates']['unknown_item_rate']:.2%}. Drifted = PSI > {config.report.psi_threshold}.", "",
             "| group | quantity | kind | PSI | KS | n reference | n current | drifted |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for x in report["drift"]:
        lines.append(f"| {x['group']} | {x['quantity']} | {x['kind']} | {_fmt(x['psi'])} | {_fmt(x['ks'])} | "
                     f"{x['n_reference']:,} | {x['n_current']:,} | {'**yes**' if x['drifted'] else 'no'} |")
    lines += ["", "PSI = Σ (a − e)·ln(a / e) over reference quantile (numeric) or top-category bins (proportions "
              "floored at 1e-4 inside the log); KS = sup |F_ref − F_cur|. Plots: `psi.png`, `distributions.png`.", ""]
    return "\n".join(lines)


def _plots(profile: Profile, current: dict, rows: list[dict], threshold: float, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{x['group']}/{x['quantity']}" for x in rows]
    psis = [0.0 if math.isnan(x["psi"]) else x["psi"] for x in rows]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ax.barh(names[::-1], psis[::-1], color=["tab:red" if p > threshold else "tab:blue" for p in psis[::-1]])
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xlabel("PSI (current vs reference)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "psi.png", dpi=110)
    plt.close(fig)
    quantities = [(g, n, q) for g, qs in profile.groups.items() for n, q in qs.items()]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(quantities) / cols), cols, figsize=(4 * cols, 2.6 * math.ceil(
        len(quantities) / cols)), squeeze=False)
    for ax, (group, name, q) in zip(axes.ravel(), quantities):
        counts = q.bin_counts(current[group][name][0])
        cur = counts / counts.sum() if counts.sum() else counts * 0.0
        x = np.arange(len(q.proportions))
        ax.bar(x - 0.2, q.proportions, 0.4, label="reference")
        ax.bar(x + 0.2, cur, 0.4, label="current")
        labels = list(q.categories) + ["other"] if q.kind == "categorical" else [f"≤{e:.3g}" for e in q.edges] + ["more"]
        ax.set_xticks(x, labels, rotation=60, fontsize=6)
        ax.set_title(f"{group}/{name}", fontsize=9)
    for ax in axes.ravel()[len(quantities):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "distributions.png", dpi=90)
    plt.close(fig)


__all__ = ["CurrentWindow", "MonitorConfig", "MonitorResult", "ReferenceWindow", "ReportConfig", "run_monitor",
           "window_quantities"]
