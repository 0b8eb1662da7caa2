"""`recsys evaluate`: baselines, trained models and external run files on one split → table + report."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import time

import pandas as pd

from core import registry
from core.config import add_config_args, config_from_args, config_to_dict
from core.errors import ArtifactMismatchError, DataError
from evaluation import (
    MODEL_FACTORIES,
    build_eval_data,
    build_model,
    data_summary,
    evaluate_models,
    evaluate_run,
    evaluate_run_against_qrels,
    format_table,
    model_config_class,
    read_qrels,
    read_run,
    write_report,
)
from features import fit_feature_store
from workflows.data import DataConfig, add_data_args, data_config_from_args, load_split

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate and where the report goes."""

    models: tuple[str, ...] = ("random", "popularity", "ease", "itemknn")
    ks: tuple[int, ...] = (10, 100)
    report_dir: str = "reports/evaluation"
    batch_size: int = 1024
    artifacts: str = ""           # artifacts root for trained models (default $RECSYS_ARTIFACTS or ./artifacts)
    version: str = "current"      # which trained version ('current' follows the registry pointer)
    run_files: tuple[str, ...] = ()  # ranked lists from elsewhere: TREC run or CSV user_id,item_id,rank
    qrels: str = ""               # with --run-files: judge against this qrels file instead of a dataset split
    batch_output: tuple[str, ...] = ()  # `recsys batch-score --output` directories (Parquet) to score, one row each
    sweep_blend: str = ""         # quality shares α to sweep the pipeline's blend over, e.g. 0:1:11 or 0,0.5,1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate baselines, trained models and run files on one split",
        description="Full-catalogue top-k for every test user with train items excluded; prints one table "
                    "and writes report.md, report.json and metrics.png to --report-dir. Models: "
                    + ", ".join(MODEL_FACTORIES) + ". --run-files scores ranked lists produced elsewhere "
                    "on the same protocol (or against --qrels alone).")
    add_config_args(p, EvaluateConfig, help_text={
        "models": f"models to evaluate, from: {', '.join(MODEL_FACTORIES)}",
        "ks": "metric cut-offs",
        "run_files": "TREC run (user Q0 item rank score tag) or CSV user_id,item_id,rank files to score",
        "qrels": "TREC qrels (user 0 item gain) or CSV user_id,item_id[,gain]; skips the dataset",
        "batch_output": "Parquet output directories of `recsys batch-score --output` to score (row batch:<version>)",
        "sweep_blend": "also sweep the trained pipeline's blend: weights (1-α, α) for each quality share α "
                       "('0:1:11' = 11 values, or '0,0.5,1'); writes sweep.png/json/csv of the engagement metric "
                       "against the quality metrics into --report-dir, from one trained ranker",
    })
    add_data_args(p)
    for name in MODEL_FACTORIES:
        cls = model_config_class(name)
        if cls is not None:
            add_config_args(p.add_argument_group(f"model {name}"), cls, prefix=f"{name}_",
                            skip=_FILLED_FROM_VERSION)
    p.set_defaults(func=run)


# Fields a trained model's config gets from --artifacts/--version, not from its own flags.
_FILLED_FROM_VERSION = ("version_dir",)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(EvaluateConfig, args)
    unknown = [m for m in cfg.models if m not in MODEL_FACTORIES]
    if unknown:
        raise DataError(f"--models: unknown model(s) {unknown}; choose from {', '.join(MODEL_FACTORIES)}")
    if not cfg.ks or min(cfg.ks) < 1:
        raise DataError(f"--ks must be positive integers, got {list(cfg.ks)}")
    if cfg.sweep_blend:
        from evaluation.pipeline import parse_sweep
        parse_sweep(cfg.sweep_blend)  # a bad value fails before any data loads
    if cfg.qrels:
        return _run_against_qrels(cfg)

    data_cfg = data_config_from_args(args)
    started = time.perf_counter()
    dataset, split = load_split(data_cfg)
    features = fit_feature_store(dataset, split.train)
    data = build_eval_data(dataset, split, features)
    models, model_configs = [], {}
    for name in cfg.models:
        model_cfg = _model_config(name, args, cfg, data_cfg)
        model_configs[name] = config_to_dict(model_cfg) if model_cfg is not None else {}
        models.append(build_model(name, model_cfg))
    results = evaluate_models(data, models, cfg.ks, cfg.batch_size) if models else pd.DataFrame()
    diagnostics = {getattr(m, "name", ""): m.diagnostics for m in models if getattr(m, "diagnostics", None)}
    for name, d in diagnostics.items():
        print(f"{name} heads on test: " + ", ".join(f"{k} {v:.4f}" for k, v in d.items() if isinstance(v, float)))
    run_rows = []
    for path in cfg.run_files:
        metrics = evaluate_run(read_run(path), data, cfg.ks, where=path)
        run_rows.append(pd.Series(metrics, name=f"run:{pathlib.Path(path).stem}"))
    for path in cfg.batch_output:
        from beam_jobs import read_scores  # Beam loads only when asked

        scores = read_scores(path)
        version = scores["model_version"].iloc[0] if len(scores) else pathlib.Path(path).name
        run_rows.append(pd.Series(evaluate_run(scores, data, cfg.ks, where=path), name=f"batch:{version}"))
    if run_rows:
        results = pd.concat([results, pd.DataFrame(run_rows)]) if len(results) else pd.DataFrame(run_rows)
    if results.empty:
        raise DataError("nothing to evaluate: give --models, --run-files and/or --batch-output")
    results.index.name = "model"
    report = write_report(cfg.report_dir, results, data_summary(data), {
        "evaluate": config_to_dict(cfg), "data": config_to_dict(data_cfg), "models": model_configs,
        **({"head_diagnostics": diagnostics} if diagnostics else {})})
    print(format_table(results, _headline_columns(results, cfg.ks)))
    if cfg.sweep_blend:
        _sweep(cfg, args, data, data_cfg, models)
    print(f"\nreport: {report.markdown}  ({report.json.name}, {report.plot.name}); "
          f"{len(data.test_users)} test users, {data.num_items} catalogue items, {time.perf_counter() - started:.0f} s")
    return 0


def _sweep(cfg: EvaluateConfig, args: argparse.Namespace, data, data_cfg: DataConfig, models: list) -> None:
    """--sweep-blend: re-blends one set of pipeline candidates per quality share (evaluation.pipeline.run_sweep)."""
    from evaluation.pipeline import parse_sweep, run_sweep

    shares = parse_sweep(cfg.sweep_blend)
    fitted = next((m for m in models if getattr(m, "name", "") == "pipeline"), None)
    pipe_cfg = _model_config("pipeline", args, cfg, data_cfg)
    sweep = run_sweep(data, pipe_cfg, shares, cfg.report_dir, k=min(cfg.ks),
                      pipeline=fitted.pipeline if fitted is not None else None,
                      diagnostics=fitted.diagnostics if fitted is not None else None)
    print(f"\nblend sweep ({sweep['mode'].iloc[0]}; weights engagement 1-α, quality α):")
    print(sweep.drop(columns=["mode"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"sweep: {pathlib.Path(cfg.report_dir) / 'sweep.png'} (sweep.json, sweep.csv)")


def _headline_columns(results: pd.DataFrame, ks: tuple[int, ...]) -> list[str]:
    """The columns worth a terminal line; the report has all of them."""
    lo, hi = min(ks), max(ks)
    wanted = [f"ndcg@{lo}", f"ndcg_graded@{lo}", f"map@{lo}", f"recall@{lo}", f"recall@{hi}", f"precision@{lo}",
              "mrr", f"coverage@{lo}", "fit_seconds"]
    return [c for c in dict.fromkeys(wanted) if c in results.columns]


def _model_config(name: str, args: argparse.Namespace, cfg: EvaluateConfig, data_cfg: DataConfig):
    cls = model_config_class(name)
    if cls is None:
        return None
    overrides = {}
    if "version_dir" in {f.name for f in dataclasses.fields(cls)}:
        root = cfg.artifacts or str(registry.default_root())
        version_dir = registry.resolve_version(root, cfg.version)
        _check_same_data(version_dir, data_cfg)
        overrides["version_dir"] = str(version_dir)
    return config_from_args(cls, args, prefix=f"{name}_", **overrides)


def _check_same_data(version_dir: pathlib.Path, data_cfg: DataConfig) -> None:
    """A trained model must be evaluated on the split it was trained on, or its test leaks."""
    trained_on = registry.read_manifest(version_dir).get("data")
    now = config_to_dict(data_cfg)
    if trained_on is not None and _normalise(trained_on) != _normalise(now):
        diff = sorted(f"{section}.{k}" for section in now for k in now[section]
                      if _normalise(trained_on).get(section, {}).get(k) != _normalise(now)[section][k])
        raise ArtifactMismatchError(
            f"version {version_dir.name} was trained on different data/split settings ({', '.join(diff)}); "
            "evaluate it with the flags it was trained with, or retrain")


def _normalise(d: dict) -> dict:
    """JSON round-trips turn tuples into lists; compare on lists."""
    import json
    return json.loads(json.dumps(d, default=str))


def _run_against_qrels(cfg: EvaluateConfig) -> int:
    if not cfg.run_files:
        raise DataError("--qrels needs --run-files to score")
    qrels = read_qrels(cfg.qrels)
    rows = [pd.Series(evaluate_run_against_qrels(read_run(p), qrels, cfg.ks, where=p), name=pathlib.Path(p).stem)
            for p in cfg.run_files]
    results = pd.DataFrame(rows)
    results.index.name = "run"
    report = write_report(cfg.report_dir, results, {"qrels": cfg.qrels}, {"evaluate": config_to_dict(cfg)})
    print(format_table(results))
    print(f"\nreport: {report.markdown}")
    return 0
