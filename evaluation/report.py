"""The evaluation report: report.md (table, definitions, split, config), report.json, metrics.png."""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from evaluation.protocol import EvalData

METRIC_DEFINITIONS = """\
Full-catalogue ranking for every test user with at least one relevant test item; items the
user engaged with in train are excluded from their ranking. Relevant = an engaged test
interaction; its gain is the rating where observed, else 1. Users with no relevant test
item are excluded from every mean. Ties in model scores are broken by lower catalogue
column index.

- **ndcg@k** = DCG@k / IDCG@k with DCG@k = Σ_{i≤k} gain_i / log2(i+1) and binary gain;
  IDCG@k over the user's relevant test items sorted by gain (Järvelin & Kekäläinen 2002;
  trec_eval `ndcg_cut.k`). **ndcg_graded@k**: the same with gain = rating.
- **map@k**: mean over users of AP@k = Σ_{i≤k} P@i · rel_i / min(k, |relevant|)
  (Microsoft Recommenders `map_at_k`; trec_eval's `map_cut` divides by |relevant|).
- **recall@k** = hits@k / |relevant|; **precision@k** = hits@k / k (trec_eval `recall.k`, `P.k`).
- **hit_rate@k** = 1 if any of the top k is relevant.
- **mrr** = mean of 1 / rank of the first relevant item within the top max(k) (0 if none).
- **coverage@k** = |∪ top-k items over evaluated users| / |catalogue|.
- **fit_seconds**, **score_seconds**: wall-clock time; the only columns that vary between runs.
"""

DEFAULT_PLOT_METRICS: tuple[str, ...] = ("ndcg@10", "ndcg_graded@10", "map@10", "recall@10", "recall@100",
                                         "precision@10", "mrr", "coverage@10")


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """Where write_report put its three files."""

    markdown: pathlib.Path
    json: pathlib.Path
    plot: pathlib.Path


def data_summary(data: EvalData) -> dict[str, Any]:
    """Split statistics plus what the protocol saw: catalogue, users evaluated, judgements."""
    return {
        **data.split.stats(),
        "dataset": data.dataset.name,
        "catalogue_items": int(data.num_items),
        "users": int(len(data.user_ids)),
        "evaluated_users": int(len(data.test_users)),
        "train_pairs": int(data.train.nnz),
        "relevant_test_pairs": int(data.test_binary.nnz),
    }


def _fmt(value: Any, column: str = "") -> str:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "nan"
        return f"{value:.2f}" if column.endswith("seconds") else f"{value:.4f}"
    return str(value)


def _rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = [df.index.name or "model", *map(str, df.columns)]
    body = [[str(idx), *(_fmt(v, c) for c, v in zip(df.columns, row))] for idx, row in
            zip(df.index, df.itertuples(index=False))]
    return header, body


def format_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table of `df` (one row per model) for the terminal.

    `columns` picks and orders the metric columns (default: all of them).
    """
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"no such result columns: {missing}; available: {list(df.columns)}")
        df = df[list(columns)]
    header, body = _rows(df)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in  # noqa: E731
                                   enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(df: pd.DataFrame) -> str:
    """`df` as a GitHub-flavoured markdown table (no tabulate dependency)."""
    header, body = _rows(df)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python, so report.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return obj


def plot_metrics(results: pd.DataFrame, path: str | pathlib.Path,
                 metrics: Sequence[str] = DEFAULT_PLOT_METRICS) -> pathlib.Path:
    """A grouped bar chart (one group per metric, one bar per model) saved as PNG."""
    # The Agg canvas is attached to this figure only: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [m for m in metrics if m in results.columns]
    if not shown:
        raise ValueError(f"none of the metrics {list(metrics)} is a column of the results ({list(results.columns)})")
    fig = Figure(figsize=(max(6.0, 1.3 * len(shown) + 2), 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = len(results)
    width = 0.8 / max(n, 1)
    x = np.arange(len(shown))
    for i, (name, row) in enumerate(results[shown].iterrows()):
        ax.bar(x - 0.4 + width * (i + 0.5), row.to_numpy(dtype=float), width, label=str(name))
    ax.set_xticks(x, shown, rotation=20)
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(n, 4))
    ax.set_title("Offline evaluation (test split, train items excluded)")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    return path


def write_report(directory: str | pathlib.Path, results: pd.DataFrame, split_stats: dict[str, Any],
                 config: Any = None, title: str = "Offline evaluation") -> ReportPaths:
    """Writes report.md, report.json and metrics.png into `directory` (created if needed).

    Args:
      directory: output directory; existing report files in it are overwritten.
      results: evaluate_models' frame (one row per model, one column per metric); its
        attrs["selection"] (hyper-parameters chosen on the validation carve, with every point
        tried) goes to report.json "selection" and a report.md section.
      split_stats: e.g. data_summary(data): split config and sizes.
      config: the run's config (a dataclass or JSON-ready dict); saved verbatim.
      title: the markdown heading.

    Returns:
      The three paths.
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = _jsonable(config) if config is not None else {}
    summary = _jsonable(split_stats)
    metrics = {str(name): {str(k): _jsonable(v) for k, v in row.items()} for name, row in
               results.to_dict(orient="index").items()}
    json_path = d / "report.json"
    selection = _jsonable(results.attrs.get("selection", {}))
    json_path.write_text(json.dumps({"config": cfg, "split": summary, "metrics": metrics,
                                     **({"selection": selection} if selection else {})}, indent=2,
                                    sort_keys=False) + "\n")
    plot_path = plot_metrics(results, d / "metrics.png")
    md = [f"# {title}", "", markdown_table(results), "", "![metrics](metrics.png)", "",
          *(_selection_markdown(selection) if selection else []),
          *_calibration_markdown(d, cfg),
          "## Metric definitions", "", METRIC_DEFINITIONS, "## Split", "", _split_table(summary), "",
          "```json", json.dumps(summary, indent=2), "```", "", "## Config", "", "```json",
          json.dumps(cfg, indent=2), "```", ""]
    md_path = d / "report.md"
    md_path.write_text("\n".join(md))
    return ReportPaths(markdown=md_path, json=json_path, plot=plot_path)


def _selection_markdown(selection: dict[str, Any]) -> list[str]:
    """report.md lines: per model, the values chosen on the validation carve and the table tried."""
    out = ["## Hyper-parameter selection (validation carve: fit on split.fit, scored on split.validation; "
           "never test)", ""]
    for model, sel in selection.items():
        chosen = ", ".join(f"{k}={v:g}" for k, v in sel["chosen"].items())
        out += [f"### {model}: {chosen} (by validation {sel['metric']})", ""]
        out += [f"- {msg}" for msg in sel.get("extensions", [])]
        if sel.get("edges"):
            out.append(f"- still on the edge of its grid: {', '.join(sel['edges'])}")
        out += ["", markdown_table(pd.DataFrame(sel["table"]).set_index(list(sel["chosen"])[0])), ""]
    return out


def _split_table(summary: dict[str, Any]) -> str:
    parts = [p for p in ("train", "validation", "test") if isinstance(summary.get(p), dict)]
    if not parts:
        return "(no split statistics)"
    cols = ["rows", "engaged", "users", "items"]
    lines = ["| part | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += ["| " + p + " | " + " | ".join(str(summary[p].get(c, "")) for c in cols) + " |" for p in parts]
    return "\n".join(lines)


def _calibration_markdown(d: pathlib.Path, cfg: Any) -> list[str]:
    """report.md lines (and reliability_<model>.png) for each model with head diagnostics: the served
    engagement's calibration on test candidates, and the choices its training run made on validation."""
    from evaluation.calibration import plot_reliability

    diagnostics = cfg.get("head_diagnostics", {}) if isinstance(cfg, dict) else {}
    out: list[str] = []
    for name, diag in diagnostics.items():
        if not isinstance(diag, dict):
            continue
        bins = diag.get("reliability_bins")
        if bins:
            png = f"reliability_{name.replace('[', '_').replace(']', '')}.png"
            plot_reliability(bins, d / png, title=f"{name}: test candidates, ECE = {diag.get('engagement_ece', 0):.4f}")
            table = pd.DataFrame(bins)[["count", "lo", "hi", "confidence", "accuracy"]]
            out += [f"## Engagement calibration: {name} (test candidates)", "",
                    f"ECE over 15 equal-mass bins (evaluation.calibration) = {diag.get('engagement_ece', float('nan')):.4f}"
                    f" (calibrated: {diag.get('engagement_calibrated')}); mean served engagement "
                    f"{diag.get('mean_engagement', float('nan')):.4f} vs engaged rate {diag.get('engaged_rate', float('nan')):.4f}; "
                    f"AUC on the same {diag.get('candidate_pairs', 0)} pairs: engagement "
                    f"{diag.get('candidate_engagement_auc', float('nan')):.4f}, retrieval score "
                    f"{diag.get('candidate_retrieval_auc', float('nan')):.4f}.", "",
                    markdown_table(table.rename_axis("bin")), "", f"![reliability]({png})", ""]
        sel = diag.get("validation_selection")
        if isinstance(sel, dict) and sel.get("fusion_table"):
            out += [f"## {name}: choices made on the validation carve by its training run (never test)", "",
                    f"Rules: {sel.get('rules', '')}. {sel.get('users', '')} validation users, "
                    f"{sel.get('candidates', '')} served candidates, {sel.get('positives', '')} engaged.", "",
                    "Retrieval fusion β (ndcg@10 / map@10 of the engagement order):", "",
                    markdown_table(pd.DataFrame(sel["fusion_table"]).set_index("retrieval_weight")), "",
                    f"Calibration: {sel.get('calibration')}; validation ECE before {sel.get('uncalibrated_ece')}, "
                    f"after {sel.get('calibrated_ece')}.", ""]
            if sel.get("stacking_table"):
                stacked = sel.get("stacking")
                out += ["Stacked engagement model vs the fused head (validation; the stacker out of fold):", "",
                        markdown_table(pd.DataFrame(sel["stacking_table"]).set_index("engagement")), "",
                        f"Served: {'the stacked model' if stacked else 'the fused head'}"
                        + (f"; its out-of-fold validation ECE {sel.get('stacking_oof_ece')}; weights "
                           + ", ".join(f"{k} {v:.4g}" for k, v in stacked["weights"].items())
                           + f", intercept {stacked['intercept']:.4g}" if stacked else "") + ".", ""]
            if sel.get("blend_table"):
                out += ["Blend sweep on validation (served heads):", "",
                        markdown_table(pd.DataFrame(sel["blend_table"])), ""]
    return out
