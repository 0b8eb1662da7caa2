"""`recsys evaluate`: baselines, trained models and external run files on one split → table + report."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import time

import pandas as pd

from core.config import ConfigError, build_config, config_to_dict, section
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
from recsys.commands import add_command
from recsys.commands._data import DATA_HELP, data_from_version
from workflows.data import DataConfig, load_split
from workflows.index import artifacts_root

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
    override_data: bool = False   # evaluate a trained version on data settings other than its manifest's
    run_files: tuple[str, ...] = ()  # ranked lists from elsewhere: TREC run or CSV user_id,item_id,rank
    qrels: str = ""               # with --run-files: judge against this qrels file instead of a dataset split
    batch_output: tuple[str, ...] = ()  # `recsys batch-score --output` directories (Parquet) to score, one row each
    sweep_blend: str = ""         # quality shares α to sweep the pipeline's blend over, e.g. 0:1:11 or 0,0.5,1


def _models_config() -> type:
    """One section per registered model that takes a config: [models.<name>], flags --<name>-<field>."""
    fields = [(name, cls, section(cls, prefix=f"{name}_", title=f"model {name}"))
              for name in MODEL_FACTORIES if (cls := model_config_class(name)) is not None]
    cls = dataclasses.make_dataclass("EvalModelsConfig", fields, frozen=True)
    cls.__module__ = __name__
    return cls


EvalModelsConfig = _models_config()


@dataclasses.dataclass(frozen=True)
class EvaluateCommandConfig:
    """`recsys evaluate`: what to evaluate, on which data, with which model settings."""

    evaluate: EvaluateConfig = section(EvaluateConfig, title="evaluation")
    data: DataConfig = section(DataConfig)
    models: EvalModelsConfig = section(EvalModelsConfig)  # type: ignore[valid-type]


# Fields a trained model's config gets from --artifacts/--version, not from its own flags.
_FILLED_FROM_VERSION = ("version_dir",)


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "evaluate", EvaluateCommandConfig, run, build=_build,
        help_text={"evaluate": {
            "models": f"models to evaluate, from: {', '.join(MODEL_FACTORIES)}",
            "ks": "metric cut-offs",
            "override_data": "with a trained model (two_tower, pipeline), data and split settings come from its "
                             "version's manifest; data flags that differ from them are an error unless this is "
                             "given (then they are used, and the test split may leak into the model's training)",
            "run_files": "TREC run (user Q0 item rank score tag) or CSV user_id,item_id,rank files to score",
            "qrels": "TREC qrels (user 0 item gain) or CSV user_id,item_id[,gain]; skips the dataset",
            "batch_output": "Parquet output directories of `recsys batch-score --output` to score (row batch:<version>)",
            "sweep_blend": "also sweep the trained pipeline's blend: weights (1-α, α) for each quality share α "
                           "('0:1:11' = 11 values, or '0,0.5,1'); writes sweep.png/json/csv of the engagement metric "
                           "against the quality metrics into --report-dir, from one trained ranker"},
            "models.pipeline": {
                "events": "event table (`recsys events export --output` directory, or a Parquet/CSV file with "
                          "user_id, item_id, timestamp and engaged or type): each test user's engagements in it "
                          "are merged into their history and excluded, as the server does with its live events",
                "events_before": "with --pipeline-events: only events with timestamp < this (seconds); 0 = each "
                                 "user's events before their own first test interaction"},
            **{f"data.{k}": v for k, v in DATA_HELP.items()}},
        skip={f"models.{name}": _FILLED_FROM_VERSION for name in MODEL_FACTORIES},
        description="Full-catalogue top-k for every test user with train items excluded; prints one table "
                    "and writes report.md, report.json and metrics.png to --report-dir. Models: "
                    + ", ".join(MODEL_FACTORIES) + ". --run-files scores ranked lists produced elsewhere "
                    "on the same protocol (or against --qrels alone). Trained models (two_tower, pipeline) are "
                    "evaluated on the data and split of their version's manifest: no data flags needed; "
                    "baselines alone take the data flags.")


def _trained_models(cfg: EvaluateConfig) -> list[str]:
    """The selected models whose config names a trained version (plus pipeline for --sweep-blend)."""
    names = [*cfg.models, *(["pipeline"] if cfg.sweep_blend else [])]
    return [n for n in dict.fromkeys(names) if (cls := model_config_class(n)) is not None
            and "version_dir" in {f.name for f in dataclasses.fields(cls)}]


def _build(args: argparse.Namespace) -> EvaluateCommandConfig:
    """Defaults ← file ← flags; with a trained model, the version's manifest data under the file and flags."""
    config = build_config(EvaluateCommandConfig, args)
    cfg = config.evaluate
    unknown = [m for m in cfg.models if m not in MODEL_FACTORIES]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown}; choose from {', '.join(MODEL_FACTORIES)}")
    if not cfg.ks or min(cfg.ks) < 1:
        raise ConfigError(f"--ks must be positive integers, got {list(cfg.ks)}")
    if cfg.sweep_blend:
        from evaluation.pipeline import parse_sweep
        parse_sweep(cfg.sweep_blend)  # a bad value fails before any data loads
    trained = _trained_models(cfg)
    if not trained or cfg.qrels:
        return config
    root = artifacts_root(cfg.artifacts)
    base = data_from_version(EvaluateCommandConfig, args, root, cfg.version, override=cfg.override_data,
                             flag="--version")
    config = build_config(EvaluateCommandConfig, args, base=base)
    from core import registry

    version_dir = str(registry.resolve_version(root, cfg.version))
    models = config.models
    for name in trained:
        models = dataclasses.replace(models, **{name: dataclasses.replace(getattr(models, name),
                                                                          version_dir=version_dir)})
    return dataclasses.replace(config, models=models)


def run(config: EvaluateCommandConfig, args: argparse.Namespace) -> int:
    cfg = config.evaluate
    if cfg.qrels:
        return _run_against_qrels(cfg)

    data_cfg = config.data
    started = time.perf_counter()
    dataset, split = load_split(data_cfg)
    features = fit_feature_store(dataset, split.train)
    data = build_eval_data(dataset, split, features)
    models, model_configs = [], {}
    for name in cfg.models:
        model_cfg = getattr(config.models, name, None)
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
        selection = results.attrs.get("selection")  # concat drops attrs; the report records the selections
        results = pd.concat([results, pd.DataFrame(run_rows)]) if len(results) else pd.DataFrame(run_rows)
        if selection:
            results.attrs["selection"] = selection
    if results.empty:
        raise ConfigError("nothing to evaluate: give --models, --run-files and/or --batch-output")
    results.index.name = "model"
    report = write_report(cfg.report_dir, results, data_summary(data), {
        "evaluate": config_to_dict(cfg), "data": config_to_dict(data_cfg), "models": model_configs,
        **({"head_diagnostics": diagnostics} if diagnostics else {})})
    print(format_table(results, _headline_columns(results, cfg.ks)))
    if cfg.sweep_blend:
        _sweep(cfg, config.models.pipeline, data, models)
    print(f"\nreport: {report.markdown}  ({report.json.name}, {report.plot.name}); "
          f"{len(data.test_users)} test users, {data.num_items} catalogue items, {time.perf_counter() - started:.0f} s")
    return 0


def _sweep(cfg: EvaluateConfig, pipe_cfg, data, models: list) -> None:
    """--sweep-blend: re-blends one set of pipeline candidates per quality share (evaluation.pipeline.run_sweep)."""
    from evaluation.pipeline import parse_sweep, run_sweep

    shares = parse_sweep(cfg.sweep_blend)
    fitted = next((m for m in models if getattr(m, "name", "") == "pipeline"), None)
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


def _run_against_qrels(cfg: EvaluateConfig) -> int:
    if not cfg.run_files:
        raise ConfigError("--qrels needs --run-files to score")
    qrels = read_qrels(cfg.qrels)
    rows = [pd.Series(evaluate_run_against_qrels(read_run(p), qrels, cfg.ks, where=p), name=pathlib.Path(p).stem)
            for p in cfg.run_files]
    results = pd.DataFrame(rows)
    results.index.name = "run"
    report = write_report(cfg.report_dir, results, {"qrels": cfg.qrels}, {"evaluate": config_to_dict(cfg)})
    print(format_table(results))
    print(f"\nreport: {report.markdown}")
    return 0
