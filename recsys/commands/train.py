"""`recsys train`: data → split → features → each stage's steps → one sealed, promoted version.

A step is a function of a `TrainContext` that writes its artifacts into the version
directory and adds its section to the manifest. `STEPS` lists them in order, each tagged
with its stage; `--stages` picks stages (its choices come from STEPS). Adding a stage:

  1. `def train_x(ctx: TrainContext) -> None` — read flags from ctx.args, write into
     ctx.version_dir/<stage>/, set ctx.manifest["<stage>"]; earlier steps' objects are in
     ctx.state (e.g. "retrieval_model").
  2. optionally `def x_config(args)` building its frozen config (errors name the flag), run
     before any data loads; its flags go into `register` via `add_config_args(..., prefix=)`.
  3. one entry in STEPS after the steps it needs: `Step("x", "what it does", train_x, x_config)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from core import layout, registry
from core.config import add_config_args, config_from_args, config_to_dict
from core.errors import RecsysError
from features import Dataset, FeatureStore, Split, fit_feature_store
from workflows.data import DataConfig, add_data_args, data_config_from_args, load_split

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainContext:
    """What every step sees. Steps add their manifest section and may leave objects in `state`."""

    args: argparse.Namespace
    data_config: DataConfig
    dataset: Dataset
    split: Split
    features: FeatureStore
    version_dir: pathlib.Path
    manifest: dict[str, Any]
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Step:
    """One unit of training. `check(args)` (optional) validates the step's flags before any
    data is loaded, raising RecsysError/ValueError naming the flag."""

    stage: str
    title: str
    run: Callable[[TrainContext], None]
    check: Callable[[argparse.Namespace], Any] | None = None


def _prefixed(message: str, prefix: str) -> str:
    """A config's error names its own field flags (--epochs); here they are --<prefix>-epochs."""
    return re.sub(r"--(?=[a-z])", f"--{prefix}-", message)


def retrieval_config(args: argparse.Namespace):
    """The TwoTowerConfig of the --retrieval-* flags (and the global --epochs override)."""
    from retrieval import TwoTowerConfig

    overrides = {"epochs": args.epochs} if getattr(args, "epochs", 0) else {}
    try:
        return config_from_args(TwoTowerConfig, args, prefix="retrieval_", **overrides)
    except ValueError as e:
        raise RecsysError(_prefixed(str(e), "retrieval")) from e


def index_config(args: argparse.Namespace):
    """The IndexConfig of the --index-* flags."""
    from retrieval import IndexConfig

    try:
        return config_from_args(IndexConfig, args, prefix="index_")
    except ValueError as e:
        raise RecsysError(_prefixed(str(e), "index")) from e


def train_retrieval(ctx: TrainContext) -> None:
    """Trains the two-tower model, exports the user tower and items.npz, records metrics."""
    from evaluation import retrieval_validator
    from retrieval import RetrievalEvaluator, export_model, train_two_tower

    config = retrieval_config(ctx.args)
    validator = retrieval_validator()
    result = train_two_tower(ctx.features, ctx.split, config, validator)
    exported = export_model(result.model, ctx.features, ctx.version_dir)
    # Test metrics here are informational (nothing is selected on them); `recsys evaluate`
    # gives the full table through the FAISS index.
    test = RetrievalEvaluator(ctx.features, ctx.split.train, ctx.split.test,
                              config.history_length, validator).evaluate(result.model)
    ctx.manifest["retrieval"] = {
        "config": config_to_dict(config),
        "metrics": {"validation": result.validation, "test_exact": test,
                    "definition": "binary gain over engaged held-out items, full catalogue, the user's earlier "
                                  "items excluded; recall@k = hits/|relevant|"},
        "training_seconds": round(result.training_seconds, 2),
        "epochs_run": result.epochs_run,
        **{k: v for k, v in result.summary().items() if k not in ("training_seconds", "epochs_run")},
        "export": exported,
    }
    ctx.state["retrieval_model"] = result.model
    log.info("two-tower: test (exact) %s", ", ".join(f"{k}={v:.4f}" for k, v in test.items()))


def build_index(ctx: TrainContext) -> None:
    """Builds the FAISS index over this version's items.npz and records recall vs exact."""
    from retrieval import UserTower, load_items

    config = index_config(ctx.args)
    item_ids, embeddings = load_items(ctx.version_dir)
    # Recall is measured on the queries the index will really see: train users' embeddings.
    users = np.asarray(sorted(ctx.split.train["user_id"].unique()), dtype=object)
    queries = UserTower.load(ctx.version_dir).embed_ids(ctx.features, users)
    index = _build(item_ids, embeddings, config, queries)
    index.save(layout.index_dir(ctx.version_dir))
    ctx.manifest["index"] = {"config": config_to_dict(config), **index.info}


def _build(item_ids, embeddings, config, queries):
    from retrieval import ItemIndex
    try:
        return ItemIndex.build(item_ids, embeddings, config, queries)
    except ValueError as e:
        raise RecsysError(_prefixed(str(e), "index")) from e


def ranking_configs(args: argparse.Namespace):
    """(RankerConfig, NegativeConfig, PipelineConfig) of the --ranking-*, --neg-* and --pipeline-* flags."""
    from pipeline import PipelineConfig
    from ranking import NegativeConfig, RankerConfig

    overrides = {"epochs": args.epochs} if getattr(args, "epochs", 0) else {}
    try:
        ranker = config_from_args(RankerConfig, args, prefix="ranking_", **overrides)
    except ValueError as e:
        raise RecsysError(_prefixed(str(e), "ranking")) from e
    try:
        pipeline = config_from_args(PipelineConfig, args, prefix="pipeline_")
    except ValueError as e:
        raise RecsysError(_prefixed(str(e), "pipeline")) from e
    return ranker, config_from_args(NegativeConfig, args, prefix="neg_"), pipeline


def train_ranking(ctx: TrainContext) -> None:
    """Trains the wide & deep ranker on the retrieval model's candidates, exports it with the
    version's default pipeline config, and records its head diagnostics on test."""
    from pipeline import save_pipeline_config
    from ranking import diagnose, evaluation_rows, export_ranker, train_ranker, training_rows
    from ranking.train import resolve_negative_source

    config, neg, pipeline = ranking_configs(ctx.args)
    source = resolve_negative_source(ctx.split, neg)
    have_retrieval = layout.has_retrieval(ctx.version_dir)
    generator = None
    if source == "window" and have_retrieval:
        generator = _fit_only_generator(ctx, pipeline.num_candidates)
    elif source == "sampled" and have_retrieval:
        generator = _version_generator(ctx, pipeline.num_candidates)
    rows = training_rows(ctx.split, ctx.features, neg, config.history_length, generator)
    retrieval = None
    if config.retrieval_weight > 0 and "retrieval_model" in ctx.state:
        from retrieval import load_items
        retrieval = (ctx.state["retrieval_model"].user_tower, *load_items(ctx.version_dir))
    elif config.retrieval_weight > 0:
        log.warning("ranker: --ranking-retrieval-weight %g ignored: no retrieval model trained in this run",
                    config.retrieval_weight)
    try:
        model, info = train_ranker(rows, ctx.features, config, retrieval=retrieval)
    except ValueError as e:
        raise RecsysError(_prefixed(str(e), "ranking")) from e
    # Diagnostics on test, with negatives from the serving retriever (see evaluation_rows).
    test_gen = _version_generator(ctx, pipeline.num_candidates) if have_retrieval else None
    test_rows = evaluation_rows(ctx.split.test, ctx.features, neg, ctx.split.train, candidates=test_gen)
    diagnostics = diagnose(model, test_rows, ctx.features) if len(test_rows) else {}
    export_ranker(model, layout.ranking_dir(ctx.version_dir), info)
    save_pipeline_config(ctx.version_dir, pipeline)
    ctx.manifest["ranking"] = {
        "config": config_to_dict(config), "negatives": {**config_to_dict(neg), "resolved_source": source,
                                                        "generator": None if generator is None else
                                                        ("two-tower on split.fit" if source == "window"
                                                         else "this version's retriever")},
        "pipeline": config_to_dict(pipeline), "training": {k: v for k, v in info.items() if k != "history"},
        "loss_history": info["history"], "test_diagnostics": diagnostics,
    }
    log.info("ranker: %d examples in %.0f s; test %s", info["examples"], info["seconds"],
             ", ".join(f"{k}={v:.4f}" for k, v in diagnostics.items() if isinstance(v, float)))


def _version_generator(ctx: TrainContext, n: int):
    """user ids → this version's FAISS top-n (the user's train items excluded): the serving candidates."""
    from retrieval import ItemIndex, UserTower

    tower, index = UserTower.load(ctx.version_dir), ItemIndex.load(layout.index_dir(ctx.version_dir))

    def generate(user_ids):
        ids, _ = index.search(tower.embed_ids(ctx.features, user_ids), n, ctx.features.seen_items(user_ids))
        return [row[row != ""] for row in ids]
    return generate


def _fit_only_generator(ctx: TrainContext, n: int):
    """A two-tower retriever trained like this version's but on split.fit alone (its own feature
    store, so neither vocabulary, history nor popularity has seen the validation window), for
    the ranker's window examples: its top-n for a user is what serving would have retrieved
    just before the window."""
    import tempfile

    from features import Split, SplitConfig
    from retrieval import IndexConfig, ItemIndex, UserTower, export_model, load_items, train_two_tower

    fit = ctx.split.fit
    store = fit_feature_store(ctx.dataset, fit)
    config = retrieval_config(ctx.args)
    epochs = int(ctx.manifest.get("retrieval", {}).get("final_epochs") or config.epochs)
    config = dataclasses.replace(config, epochs=max(1, epochs), refit=False)
    log.info("ranker: training a split.fit-only two-tower (%d epochs) to generate window candidates", config.epochs)
    result = train_two_tower(store, Split(fit, fit.iloc[:0], fit.iloc[:0], SplitConfig(val_fraction=0.0)), config)
    with tempfile.TemporaryDirectory(prefix="recsys-fit-retriever-") as tmp:
        export_model(result.model, store, tmp)
        item_ids, embeddings = load_items(tmp)
        tower = UserTower.load(tmp)
        index = ItemIndex.build(item_ids, embeddings, IndexConfig(recall_queries=0))

    def generate(user_ids):
        ids, _ = index.search(tower.embed_ids(store, user_ids), n, store.seen_items(user_ids))
        return [row[row != ""] for row in ids]
    return generate


STEPS: list[Step] = [
    Step("retrieval", "train the two-tower model and export it", train_retrieval, retrieval_config),
    Step("retrieval", "build the FAISS index", build_index, index_config),
    Step("ranking", "train the ranker on the retriever's candidates", train_ranking, ranking_configs),
]


def _stages() -> list[str]:
    return list(dict.fromkeys(s.stage for s in STEPS))


def register(sub: argparse._SubParsersAction) -> None:
    from pipeline import PipelineConfig
    from ranking import NegativeConfig, RankerConfig
    from retrieval import IndexConfig, TwoTowerConfig

    p = sub.add_parser("train", help="train every stage, export, index, and promote one new version",
                       description="Loads the data, splits it, fits the feature store on train, trains each stage "
                                   "(two-tower retrieval + FAISS index, ...) into a new version directory "
                                   "<artifacts>/<version>/, seals it with a checksummed manifest.json and points "
                                   "CURRENT at it.")
    add_data_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--artifacts", default=str(registry.default_root()),
                   help="artifacts root (default: $RECSYS_ARTIFACTS or ./artifacts)")
    g.add_argument("--version", default="", help="version name (default: v<UTC time>-<random>)")
    g.add_argument("--stages", nargs="+", default=_stages(), choices=_stages(), help="stages to train (default: all)")
    g.add_argument("--promote", action=argparse.BooleanOptionalAction, default=True,
                   help="point CURRENT at the new version when done")
    g.add_argument("--epochs", type=int, default=0,
                   help="override every stage's maximum epochs (0 = each stage's own default); for smoke runs")
    add_config_args(p.add_argument_group("two-tower retrieval model"), TwoTowerConfig, prefix="retrieval_",
                    help_text={"monitor": "validation metric that selects the epoch count",
                               "refit": "retrain on all of train for the selected epochs",
                               "logq": "sampling-bias (logQ) correction"})
    add_config_args(p.add_argument_group("FAISS index"), IndexConfig, prefix="index_",
                    help_text={"factory": "faiss.index_factory string: Flat, IVF1024,Flat, HNSW32, IVF1024,PQ16 ..."})
    add_config_args(p.add_argument_group("wide & deep ranker"), RankerConfig, prefix="ranking_",
                    help_text={"crosses": "wide crossed features USER_COL*ITEM_COL (empty = every user × item "
                                          "categorical pair)",
                               "retrieval_weight": "β: served engagement = σ(ranker logit + β·(retrieval score - 1)), "
                                                   "the two-tower trained in the same run (0 = ranker alone)"})
    add_config_args(p.add_argument_group("ranker negatives"), NegativeConfig, prefix="neg_")
    add_config_args(p.add_argument_group("serving pipeline defaults"), PipelineConfig, prefix="pipeline_",
                    help_text={"num_candidates": "N: FAISS candidates the ranker scores per user"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    steps = [s for s in STEPS if s.stage in args.stages]
    for step in steps:  # every flag is checked before minutes of data loading and training
        if step.check is not None:
            try:
                step.check(args)
            except ValueError as e:
                raise RecsysError(str(e)) from e
    data_config = data_config_from_args(args)
    dataset, split = load_split(data_config)
    features = fit_feature_store(dataset, split.train)
    version_dir = registry.start_version(args.artifacts, args.version or None)
    log.info("training version %s", version_dir)
    manifest: dict[str, Any] = {
        "data": config_to_dict(data_config),
        "dataset": dataset.describe(),
        "split": split.stats(),
        "stages": list(args.stages),
    }
    ctx = TrainContext(args, data_config, dataset, split, features, version_dir, manifest)
    try:
        features.save(layout.features_dir(version_dir))
        for step in steps:
            log.info("[%s] %s", step.stage, step.title)
            step.run(ctx)
        manifest["sizes"] = {
            "users": len(features.vocabularies["user_id"]) - 1, "items": len(features.catalogue),
            "vocabularies": {k: len(v) for k, v in features.vocabularies.items()},
            "bytes": sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file()),
        }
        manifest["train_seconds"] = round(time.perf_counter() - started, 1)
        registry.finalize_version(version_dir, manifest)
    except BaseException:
        # An unfinished version has no manifest and can never be served; remove it so the
        # same --version can be retried.
        shutil.rmtree(version_dir, ignore_errors=True)
        raise
    if args.promote:
        registry.promote(args.artifacts, version_dir.name)
    _print_summary(manifest, version_dir, args.promote)
    return 0


def _print_summary(manifest: dict, version_dir: pathlib.Path, promoted: bool) -> None:
    print(f"version {version_dir.name} written to {version_dir}{' and promoted (CURRENT)' if promoted else ''} "
          f"in {manifest['train_seconds']:.0f} s")
    r = manifest.get("retrieval")
    if r:
        val = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"]["validation"].items())
        test = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"]["test_exact"].items())
        print(f"  two-tower: best epoch {r['best_epoch']} of {r['epochs_run']} (validation {val}); final model "
              f"trained on {r['trained_on']} for {r['final_epochs']} epochs in {r['training_seconds']:.0f} s")
        print(f"  two-tower test (exact search): {test}")
    i = manifest.get("index")
    if i:
        print(f"  index {i['factory']}: {i['size']} items × {i['dim']}, recall@{i.get('recall_n')} vs exact "
              f"{i.get('recall_at_n', float('nan')):.4f}")
    rk = manifest.get("ranking")
    if rk:
        d = rk["test_diagnostics"]
        print(f"  ranker: {rk['training']['examples']} examples ({rk['negatives']['resolved_source']} negatives) in "
              f"{rk['training']['seconds']:.0f} s; test engagement AUC {d.get('engagement_auc', float('nan')):.4f}, "
              f"quality RMSE {d.get('quality_rmse', float('nan')):.4f} / MAE {d.get('quality_mae', float('nan')):.4f}")
