"""Training as a function of a TrainConfig: data → split → features → each stage → one sealed version.

A step is a function of a `TrainContext` that writes its artifacts into the version
directory and adds its section to the manifest. `STEPS` lists them in order, each tagged
with its stage; `config.run.stages` picks stages (the choices come from STAGES). Adding a stage:

  1. its config dataclass as a section of TrainConfig (`section(XConfig, prefix="x_")`);
  2. `def train_x(ctx: TrainContext) -> None` — read ctx.config.x, write into
     ctx.version_dir/<stage>/, set ctx.manifest["<stage>"]; earlier steps' objects are in
     ctx.state (e.g. "user_tower");
  3. one entry in STEPS after the steps it needs: `Step("x", "what it does", train_x)`.

`train(TrainConfig(...))` is what `recsys train` runs; benches call it the same way.
With `run.base_version = V` the new version starts as a byte-identical copy of V's
features/, retrieval/ and index/ and only the later stages are trained on V's retriever.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd

from core import layout, registry
from core.config import ConfigError, build_config, config_errors, config_to_dict, flatten, section
from features import Dataset, FeatureStore, Split, fit_feature_store
from features.cooccurrence import NewUserConfig
from pipeline import PipelineConfig, retrieve
from ranking import RankerConfig
from ranking.negatives import NegativeConfig
from retrieval import IndexConfig, TwoTowerConfig
from workflows.data import DataConfig, load_split
from workflows.index import artifacts_root, build_index
from workflows.newusers import train_new_users
from workflows.profile import train_profile

log = logging.getLogger(__name__)

Stage = Literal["retrieval", "ranking"]
STAGES: tuple[str, ...] = ("retrieval", "ranking")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where the version goes, what it is built on, which stages train."""

    artifacts: str = ""               # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    new_version: str = ""             # name of the new version ("" = v<UTC time>-<random>)
    base_version: str = ""            # reuse this version's features, retriever and index; train the later stages
    stages: tuple[Stage, ...] = STAGES  # stages to train
    promote: bool = True              # point CURRENT at the new version when done (if serving can load it)
    epochs: int = 0                   # override every stage's maximum epochs (0 = each stage's own); for smoke runs
    warm_start: str = ""              # initialise the two-tower from this version (known ids keep their rows; retrieval.warm)

    def __post_init__(self) -> None:
        if not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"--stages must name each stage once, from {', '.join(STAGES)}; got {list(self.stages)}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
        if self.epochs < 0:
            raise ValueError(f"--epochs must be >= 0 (0 = each stage's default), got {self.epochs}")
        if self.warm_start and self.base_version:
            raise ValueError(f"--warm-start {self.warm_start} initialises a two-tower this run trains; --base-version "
                             f"{self.base_version} reuses one instead: give one of them")
        if self.base_version and self.stages == ("retrieval",):
            raise ValueError(f"--base-version {self.base_version} reuses its retriever; with --stages retrieval "
                             "there is nothing left to train")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`recsys train`: every setting of a training run; each section lands in the manifest."""

    data: DataConfig = section(DataConfig)
    run: RunConfig = section(RunConfig, title="run")
    retrieval: TwoTowerConfig = section(TwoTowerConfig, prefix="retrieval_", title="two-tower retrieval model")
    index: IndexConfig = section(IndexConfig, prefix="index_", title="FAISS index")
    ranking: RankerConfig = section(RankerConfig, prefix="ranking_", title="wide & deep ranker")
    negatives: NegativeConfig = section(NegativeConfig, prefix="neg_", title="ranker negatives")
    pipeline: PipelineConfig = section(PipelineConfig, prefix="pipeline_", title="serving pipeline defaults")
    newuser: NewUserConfig = section(NewUserConfig, prefix="newuser_", title="new-user scorer (EVENTS source)")

    @property
    def retrieval_config(self) -> TwoTowerConfig:
        """The two-tower config with run.epochs applied."""
        with config_errors("retrieval"):
            return dataclasses.replace(self.retrieval, epochs=self.run.epochs) if self.run.epochs else self.retrieval

    @property
    def ranker_config(self) -> RankerConfig:
        """The ranker config with run.epochs applied."""
        with config_errors("ranking"):
            return dataclasses.replace(self.ranking, epochs=self.run.epochs) if self.run.epochs else self.ranking


@dataclasses.dataclass
class TrainContext:
    """What every step sees. Steps add their manifest section and may leave objects in `state`."""

    config: TrainConfig
    dataset: Dataset
    split: Split
    features: FeatureStore
    version_dir: pathlib.Path
    manifest: dict[str, Any]
    base_dir: pathlib.Path | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Step:
    """One unit of training."""

    stage: str
    title: str
    run: Callable[[TrainContext], None]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The sealed version. `not_promoted` says why a version asked to be promoted was not ("" otherwise)."""

    version_dir: pathlib.Path
    manifest: dict[str, Any]
    promoted: bool
    not_promoted: str = ""


def train_retrieval(ctx: TrainContext) -> None:
    """Trains the two-tower model, exports the user tower and items.npz, records metrics."""
    from evaluation import retrieval_validator
    from retrieval import RetrievalEvaluator, export_model, train_two_tower

    config = ctx.config.retrieval_config
    validator = retrieval_validator()  # evaluation's metrics select the epochs
    warm = None
    if ctx.config.run.warm_start:
        from retrieval import WarmStart
        warm = WarmStart(registry.resolve_version(artifacts_root(ctx.config.run.artifacts), ctx.config.run.warm_start))
    result = train_two_tower(ctx.features, ctx.split, config, validator, init=warm)
    exported = export_model(result.model, ctx.features, ctx.version_dir)
    # Test metrics here are informational (nothing is selected on them); `recsys evaluate`
    # gives the full table through the FAISS index.
    tester = RetrievalEvaluator(ctx.features, ctx.split.train, ctx.split.test, config.history_length, validator,
                                config.eval_max_users, config.seed)
    test = tester.evaluate(result.model)
    ctx.manifest["retrieval"] = {
        "config": config_to_dict(config),
        "metrics": {"validation": result.validation, "test_exact": test,
                    "definition": "binary gain over engaged held-out items, full catalogue, the user's earlier "
                                  "items excluded; recall@k = hits/|relevant|",
                    **({"test_users": len(tester.user_ids), "test_users_held_out": tester.held_out_users}
                       if config.eval_max_users else {})},
        "training_seconds": round(result.training_seconds, 2),
        "epochs_run": result.epochs_run,
        **{k: v for k, v in result.summary().items() if k not in ("training_seconds", "epochs_run")},
        "export": exported,
        **({"warm_start": warm.report} if warm is not None else {}),
    }
    ctx.state["user_tower"] = result.model.user_tower
    log.info("two-tower: test (exact) %s", ", ".join(f"{k}={v:.4f}" for k, v in test.items()))


def train_index(ctx: TrainContext) -> None:
    """Builds the FAISS index over this version's items.npz and records recall vs exact."""
    users = sorted(ctx.split.train["user_id"].unique())
    ctx.manifest["index"] = build_index(ctx.version_dir, ctx.features, users, ctx.config.index)


def train_ranking(ctx: TrainContext) -> None:
    """Trains the wide & deep ranker on the retriever's candidates, exports it with the
    version's default pipeline config, and records its head diagnostics on test.

    The serving-time choices — the retrieval fusion weight β, the engagement calibration and
    the default blend — are made on the validation carve by `_select_on_validation` (a
    retriever and a ranker trained on split.fit alone, scored on the validation users' served
    candidates; evaluation.selection has the rules) and recorded with their tables in the
    manifest ("ranking" → "selection"); test is never read by them."""
    from pipeline import save_pipeline_config
    from ranking import diagnose, evaluation_rows, export_ranker, train_ranker, training_rows
    from ranking.train import resolve_negative_source

    config, neg, pipeline = ctx.config.ranker_config, ctx.config.negatives, ctx.config.pipeline
    with config_errors("negatives"):
        source = resolve_negative_source(ctx.split, neg)
    have_retrieval = layout.has_retrieval(ctx.version_dir)
    selection, why_not = None, ""
    if not (config.retrieval_weight < 0 or config.calibrate or config.select_blend):
        why_not = "nothing to choose (--ranking-retrieval-weight >= 0, --no-ranking-calibrate, --no-ranking-select-blend)"
    elif not have_retrieval:
        why_not = "this version has no retrieval model to generate validation candidates"
    elif source == "window":
        why_not = "--neg-source window trains the ranker on the validation carve itself"
    elif not (ctx.split.validation["engaged"] == 1).any():
        why_not = "the split has no validation carve with engagements (--val-fraction 0)"
    else:
        with config_errors("ranking"):
            selection = _select_on_validation(ctx, source)
    if why_not:
        log.warning("ranker: no validation selection: %s; β = %g, engagement uncalibrated, blend from --pipeline-*",
                    why_not, max(config.retrieval_weight, 0.0))
    beta = config.retrieval_weight if config.retrieval_weight >= 0 else (selection or {}).get("retrieval_weight", 0.0)
    calibration = (selection or {}).get("calibration") or {"a": 1.0, "b": 0.0}
    stacked = (selection or {}).get("stacking")
    if stacked is not None:
        calibration = {"a": 1.0, "b": 0.0}  # the stacked model is its own calibration
    if selection and config.select_blend:
        w = selection["blend"]
        pipeline = dataclasses.replace(pipeline, engagement_weight=w.engagement, quality_weight=w.quality,
                                       blend_mode=w.mode, blend_transform=w.transform)
    generator = None
    if source == "window" and have_retrieval:
        generator = _fit_only_retriever(ctx, pipeline.num_candidates).generate
    elif source == "sampled" and have_retrieval:
        generator = _version_generator(ctx, pipeline.num_candidates)
    rows = training_rows(ctx.split, ctx.features, neg, config.history_length, generator)
    retrieval = None
    if (beta > 0 or stacked is not None) and have_retrieval:
        from retrieval import load_items
        tower = ctx.state.get("user_tower") or _saved_user_tower(ctx.version_dir)
        retrieval = (tower, *load_items(ctx.version_dir))
    elif beta > 0:
        log.warning("ranker: --ranking-retrieval-weight %g ignored: this version has no retrieval model", beta)
        beta = 0.0
    baseline = _rating_baselines(ctx)
    stats = None
    if stacked is not None and retrieval is not None:
        from ranking.stacking import activity_stats
        stats = activity_stats(ctx.split.train)
    with config_errors("ranking"):
        model, info = train_ranker(rows, ctx.features,
                                   dataclasses.replace(config, retrieval_weight=beta if beta > 0 or stats is None
                                                       else -1.0),
                                   retrieval=retrieval, rating_baseline=baseline and baseline["train"],
                                   stack_stats=stats)
    model.set_serving(beta, calibration["a"], calibration["b"], (selection or {}).get("quality_residual_scale", 1.0))
    if stats is not None:
        model.set_stacking(stacked)
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
        "serving": {**model.serving_values(), "stacked": model.stacking() is not None,
                    "calibrated": calibration != {"a": 1.0, "b": 0.0} or model.stacking() is not None},
        "quality_baseline": ({"reg": baseline["reg"], "user_reg": baseline["regs"][0],
                              "item_reg": baseline["regs"][1], "shrinkage_selection": baseline["shrinkage"],
                              "mu": baseline["train"][0],
                              "definition": "quality logit += logit(normalised μ + b_u + b_i), a bias model fit on "
                                            "train: the bias baseline's shared reg, or separate user / item regs "
                                            "when they beat it on validation by more than one standard error "
                                            "(evaluation.baselines.select_bias_shrinkage)"}
                             if baseline else None),
        "selection": _selection_record(selection) if selection else {"skipped": why_not},
        "pipeline": config_to_dict(pipeline), "training": {k: v for k, v in info.items() if k != "history"},
        "loss_history": info["history"], "test_diagnostics": diagnostics,
    }
    log.info("ranker: %d examples in %.0f s; β = %g, calibration a = %.4f b = %.4f, default blend %s; test %s",
             info["examples"], info["seconds"], beta, calibration["a"], calibration["b"],
             pipeline.default_weights, ", ".join(f"{k}={v:.4f}" for k, v in diagnostics.items()
                                                  if isinstance(v, float)))


def _select_on_validation(ctx: TrainContext, source: str) -> dict[str, Any]:
    """β, the Platt calibration and the default blend, chosen on the validation carve.

    A two-tower and a ranker are trained exactly like this version's but on split.fit alone
    (their own feature store, so nothing has seen the validation window); each validation
    user's served candidates are that retriever's top N (fit items excluded), labelled by
    the user's validation engagements, and scored by that ranker. evaluation.selection's
    rules choose on them; the choices are then applied to the ranker trained on all of train.
    """
    from evaluation.calibration import expected_calibration_error, reliability_bins
    from evaluation.selection import (
        ValidationCandidates,
        calibrated_engagement,
        fit_calibration,
        select_blend,
        select_fusion,
        select_stacking,
        sweep_blends,
    )
    from ranking import denormalize_quality, predict_logits, train_ranker, training_rows
    from ranking.calibration import sigmoid
    from ranking.stacking import activity_stats, feature_matrix
    from ranking.train import as_train_split, make_examples

    started = time.perf_counter()
    config, neg, n = ctx.config.ranker_config, ctx.config.negatives, ctx.config.pipeline.num_candidates
    fitted = _fit_only_retriever(ctx, n)
    rows = training_rows(as_train_split(ctx.split.fit), fitted.store, dataclasses.replace(neg, source=source),
                         config.history_length, fitted.generate if source == "sampled" else None)
    baseline = _rating_baselines(ctx)
    model, _ = train_ranker(rows, fitted.store, dataclasses.replace(config, retrieval_weight=-1.0),
                            retrieval=(fitted.tower, fitted.item_ids, fitted.embeddings),
                            rating_baseline=baseline and baseline["fit"],
                            stack_stats=activity_stats(ctx.split.fit) if config.stack else None)
    validation = ctx.split.validation
    engaged = validation.loc[validation["engaged"] == 1].drop_duplicates(["user_id", "item_id"], keep="last")
    users = sorted(engaged["user_id"].astype(str).unique())
    sampled_from = len(users)
    if 0 < config.selection_max_users < len(users):  # a seeded sample of the validation users
        keep = np.random.default_rng(config.seed).choice(len(users), config.selection_max_users, replace=False)
        users = [users[k] for k in np.sort(keep)]
        engaged = engaged.loc[engaged["user_id"].astype(str).isin(set(users))]
    ratings = {(str(u), str(i)): r for u, i, r in zip(engaged["user_id"], engaged["item_id"], engaged["rating"])}
    lists = [items for lo in range(0, len(users), 256) for items in fitted.generate(users[lo:lo + 256])]
    width = max((len(x) for x in lists), default=0)
    flat_u = np.repeat(np.asarray(users, dtype=object), [len(x) for x in lists])
    flat_i = np.concatenate(lists).astype(str).astype(object) if lists else np.zeros(0, object)
    flat_r = np.array([ratings.get((u, i), np.nan) for u, i in zip(flat_u, flat_i)], dtype=np.float64)
    flat_y = np.array([(u, i) in ratings for u, i in zip(flat_u, flat_i)], dtype=bool)
    frame = pd.DataFrame({"user_id": flat_u, "item_id": flat_i, "rating": flat_r, "engaged": flat_y.astype(np.int8)})
    scored = predict_logits(model, make_examples(frame, fitted.store, config.history_length).inputs)
    valid = np.zeros((len(users), width), dtype=bool)
    for r, x in enumerate(lists):
        valid[r, :len(x)] = True

    def pad(values: np.ndarray, fill: Any) -> np.ndarray:
        out = np.full(valid.shape, fill, dtype=np.asarray(values).dtype)
        out[valid] = values
        return out

    # The quality residual's scale γ by validation RMSE of the fit-only ranker on the rated validation
    # engagements (0 = the bias baseline alone; ties → the smaller γ).
    gamma, quality_table = 1.0, None
    if baseline and baseline["fit"] is not None:
        rated = engaged.loc[np.isfinite(engaged["rating"].to_numpy(dtype=np.float64))]
        got = predict_logits(model, make_examples(rated, fitted.store, config.history_length).inputs)
        truth = rated["rating"].to_numpy(dtype=np.float64)
        table = []
        for g in QUALITY_RESIDUAL_SCALES:
            pred = denormalize_quality(sigmoid(got["quality_offset"] + g * (got["quality"] - got["quality_offset"])))
            table.append({"quality_residual_scale": g, "validation_rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
                          "rated": int(len(truth))})
        quality_table = pd.DataFrame(table)
        best = int(np.argmin(quality_table["validation_rmse"].to_numpy()))
        quality_table["chosen"] = np.arange(len(quality_table)) == best
        gamma = float(quality_table["quality_residual_scale"].iloc[best])
    offset = scored["quality_offset"]
    quality_logit = offset + gamma * (scored["quality"] - offset)
    served_quality = sigmoid(quality_logit)
    flags = {}
    if "item_type" in fitted.store.spec.item_categorical:
        types = fitted.store.item_features(flat_i)["item_type"].astype(str)
        flags["clickbait"] = pad(types == "clickbait", False)
    cands = ValidationCandidates(
        user_ids=np.asarray(users, dtype=object), valid=valid, logit=pad(scored["engagement"], 0.0),
        affinity=pad(scored["affinity"], 0.0), quality=pad(served_quality, 0.0),
        engaged=pad(flat_y, False), rating=pad(flat_r, np.nan),
        num_relevant=engaged.groupby(engaged["user_id"].astype(str)).size().reindex(users).to_numpy(), flags=flags)
    if config.stack:
        x = feature_matrix(scored["engagement"], scored["affinity"], quality_logit, scored["stack_extra"])
        cands.stack = np.zeros((*valid.shape, x.shape[1]))
        cands.stack[valid] = x
    grid = config.retrieval_weight_grid if config.retrieval_weight < 0 else (config.retrieval_weight,)
    beta, fusion = select_fusion(cands, grid)
    out: dict[str, Any] = {"retrieval_weight": beta, "fusion_table": fusion, "calibration": None,
                           "quality_residual_scale": gamma, "quality_table": quality_table,
                           "users": len(users), "validation_users": sampled_from,
                           "candidates": int(valid.sum()), "positives": int(flat_y.sum())}
    raw = np.where(valid, sigmoid(cands.fused_logit(beta)), 0.0)
    labels = cands.engaged[valid]
    out["uncalibrated_ece"] = expected_calibration_error(raw[valid], labels)
    engagement = raw
    if config.calibrate:
        cal = fit_calibration(cands, beta)
        engagement = calibrated_engagement(cands, beta, cal)
        out["calibration"] = {"a": cal.a, "b": cal.b}
        out["calibrated_ece"] = expected_calibration_error(engagement[valid], labels)
        out["reliability_bins"] = reliability_bins(engagement[valid], labels)
    out["stacking"] = None
    if config.stack:
        stacked, oof, out["stacking_table"] = select_stacking(cands, beta, config.stack_l2, seed=config.seed)
        oof_p = np.where(valid, sigmoid(oof), 0.0)
        out["stacking_oof_ece"] = expected_calibration_error(oof_p[valid], labels)
        if stacked is not None:
            out["stacking"] = stacked
            engagement = oof_p  # the blend is chosen on out-of-fold stacked values
            out["calibrated_ece"] = out["stacking_oof_ece"]
            out["reliability_bins"] = reliability_bins(oof_p[valid], labels)
    out["engaged_rate"] = float(flat_y.mean()) if len(flat_y) else float("nan")
    out["mean_engagement"] = float(engagement[valid].mean()) if valid.any() else float("nan")
    if config.select_blend:
        out["blend"], out["blend_table"] = select_blend(cands, engagement)
    else:
        out["blend_table"] = sweep_blends(cands, engagement, [ctx.config.pipeline.default_weights])
    out["seconds"] = round(time.perf_counter() - started, 1)
    log.info("validation selection (%d users, %d candidates): β = %g (ndcg@10 %s), calibration %s, stacking %s, "
             "blend %s", len(users), out["candidates"], beta,
             ", ".join(f"{b:g}: {v:.4f}" for b, v in zip(fusion["retrieval_weight"], fusion["ndcg@10"])),
             out["calibration"], None if out.get("stacking_table") is None else
             out["stacking_table"][["engagement", "ndcg@10", "chosen"]].to_dict(orient="records"), out.get("blend"))
    return out


def _rating_baselines(ctx: TrainContext) -> dict[str, Any] | None:
    """The user+item bias rating baseline for the quality head (None when off or the data has no
    ratings): {"reg": its reg (chosen on validation RMSE), "train": fit on split.train, "fit": fit on
    split.fit} as (μ, user ids, b_u, item ids, b_i) tuples (ranking.model.RatingBaseline)."""
    from evaluation.baselines import BiasConfig, fit_bias_baseline, fit_biases, rated_engagements, select_bias_shrinkage

    if not ctx.config.ranker_config.quality_baseline or not len(rated_engagements(ctx.split.train)):
        return None
    if "rating_baselines" not in ctx.state:
        tune = bool(len(rated_engagements(ctx.split.validation))) and bool(len(rated_engagements(ctx.split.fit)))
        biases, selection = fit_bias_baseline(ctx.split, BiasConfig(tune=tune))
        reg = selection.chosen["reg"] if selection is not None else BiasConfig().reg
        regs, shrinkage = (reg, reg), None
        if tune:  # separate user / item penalties iff they win on validation beyond noise (1-SE rule)
            regs, grid, gain = select_bias_shrinkage(ctx.split, reg)
            shrinkage = {**gain, "user_reg": regs[0], "item_reg": regs[1], "table": grid.table,
                         "extensions": grid.extensions}
            log.info("quality offset: user reg %g, item reg %g (shared reg %g; validation MSE gain %.5f ± %.5f → %s)",
                     regs[0], regs[1], reg, gain["mse_gain"], gain["mse_gain_se"],
                     "separate" if gain["adopted"] else "shared")
            if gain["adopted"]:
                biases = fit_biases(rated_engagements(ctx.split.train), *regs)

        def parts(b) -> tuple:
            return (b.mu, b.user_bias.index.astype(str).to_numpy(), b.user_bias.to_numpy(),
                    b.item_bias.index.astype(str).to_numpy(), b.item_bias.to_numpy())
        fit_rated = rated_engagements(ctx.split.fit)
        ctx.state["rating_baselines"] = {"reg": reg, "regs": regs, "shrinkage": shrinkage, "train": parts(biases),
                                         "fit": parts(fit_biases(fit_rated, *regs)) if len(fit_rated) else None}
    return ctx.state["rating_baselines"]


QUALITY_RESIDUAL_SCALES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def _selection_record(selection: dict[str, Any]) -> dict[str, Any]:
    """The selection as JSON-ready manifest data (tables as lists of rows)."""
    rec = {}
    for k, v in selection.items():
        if isinstance(v, pd.DataFrame):
            rec[k] = v.to_dict(orient="records")
        elif k == "blend":
            rec[k] = dataclasses.asdict(v)
        elif k == "stacking":
            rec[k] = v.to_dict() if v is not None else None
        else:
            rec[k] = v
    rec["rules"] = ("quality residual scale γ: lowest validation RMSE of the rated validation engagements "
                    "(ties → smaller γ); β: best validation ndcg@10 of the engagement order over the grid (ties → smaller β); "
                    "calibration: Platt on the validation candidates; stacking: the stacked engagement model "
                    "replaces fusion + Platt iff its out-of-fold (2 user folds) ndcg@10 >= the fused head's; "
                    "blend: best validation ndcg@10 whose "
                    "mean_hit_rating@10 >= the engagement-only blend's (evaluation.selection)")
    return rec


def _version_generator(ctx: TrainContext, n: int):
    """user ids → this version's FAISS top-n (the user's train items excluded): the serving candidates."""
    from retrieval import ItemIndex, UserTower

    tower, index = UserTower.load(ctx.version_dir), ItemIndex.load(layout.index_dir(ctx.version_dir))

    def generate(user_ids):
        ids, _ = retrieve(ctx.features, index, user_ids, tower.embed_ids(ctx.features, user_ids), n)
        return [row[row != ""] for row in ids]
    return generate


def _retriever_config(ctx: TrainContext) -> TwoTowerConfig:
    """The config this version's retriever was trained with (the base version's, when reused)."""
    trained = ctx.manifest.get("retrieval", {}).get("config")
    if ctx.base_dir is not None and trained:
        return build_config(TwoTowerConfig, base=flatten(TwoTowerConfig, trained))
    return ctx.config.retrieval_config


@dataclasses.dataclass
class _FitRetriever:
    """A two-tower trained on split.fit alone: its feature store, candidate generator and parts."""

    store: FeatureStore
    generate: Callable[[list[str]], list[np.ndarray]]
    tower: Any                      # the in-memory user tower layer (ranking.RetrievalParts)
    item_ids: np.ndarray
    embeddings: np.ndarray


def _fit_only_retriever(ctx: TrainContext, n: int) -> _FitRetriever:
    """A two-tower retriever trained like this version's but on split.fit alone (its own feature
    store, so neither vocabulary, history nor popularity has seen the validation window): its
    top-n for a user is what serving would have retrieved just before the window."""
    import tempfile

    from features import SplitConfig
    from retrieval import ItemIndex, UserTower, export_model, load_items, train_two_tower

    fit = ctx.split.fit
    store = fit_feature_store(ctx.dataset, fit)
    config = _retriever_config(ctx)
    epochs = int(ctx.manifest.get("retrieval", {}).get("final_epochs") or config.epochs)
    config = dataclasses.replace(config, epochs=max(1, epochs), refit=False)
    log.info("ranker: training a split.fit-only two-tower (%d epochs) for validation candidates", config.epochs)
    result = train_two_tower(store, Split(fit, fit.iloc[:0], fit.iloc[:0], SplitConfig(val_fraction=0.0)), config)
    with tempfile.TemporaryDirectory(prefix="recsys-fit-retriever-") as tmp:
        export_model(result.model, store, tmp)
        item_ids, embeddings = load_items(tmp)
        tower = UserTower.load(tmp)
        index = ItemIndex.build(item_ids, embeddings, IndexConfig(recall_queries=0))

    def generate(user_ids):
        ids, _ = retrieve(store, index, user_ids, tower.embed_ids(store, user_ids), n)
        return [row[row != ""] for row in ids]
    return _FitRetriever(store, generate, result.model.user_tower, np.asarray(item_ids), np.asarray(embeddings))


def _saved_user_tower(version_dir: pathlib.Path):
    """The version's exported user tower as a frozen Keras layer, for the ranker's retrieval fusion
    when the two-tower was not trained in this run (--base-version): same inputs, same embeddings."""
    from core.tf_env import keras, tf

    loaded = tf.saved_model.load(str(layout.user_tower_dir(version_dir)))
    signature = loaded.signatures["serving_default"]
    specs = dict(signature.structured_input_signature[1])
    history_length = int(loaded.history_length.numpy()) if hasattr(loaded, "history_length") else 0

    class SavedUserTower(keras.layers.Layer):
        def __init__(self) -> None:
            super().__init__(trainable=False, name="saved_user_tower")
            # Tracked: the loaded object (its lookup tables) and, as this layer's frozen weights, the
            # variables the signature reads, so the ranker's SavedModel carries both.
            self.tower = loaded
            self.tower_variables = list(signature.variables)
            self.feature_names = tuple(specs)
            self.history_length = history_length

        def call(self, inputs, training=False):
            args = {k: inputs[k] if spec.dtype == tf.string else tf.cast(inputs[k], spec.dtype)
                    for k, spec in specs.items()}
            return signature(**args)["embedding"]
    return SavedUserTower()


STEPS: list[Step] = [
    Step("retrieval", "train the two-tower model and export it", train_retrieval),
    Step("retrieval", "build the FAISS index", train_index),
    Step("ranking", "train the ranker on the retriever's candidates", train_ranking),
    Step("ranking", "fit the new-user scorer and choose its mixture on simulated new users", train_new_users),
    Step("ranking", "profile served inputs and predictions (drift reference)", train_profile),
]

# What --base-version copies from the base version, byte for byte.
_REUSED_DIRS = (layout.FEATURES_DIR, layout.RETRIEVAL_DIR, layout.INDEX_DIR)


def base_version_dir(config: TrainConfig) -> pathlib.Path | None:
    """The verified --base-version directory, or None; ConfigError if it holds no retriever and index."""
    if not config.run.base_version:
        return None
    base = registry.resolve_version(artifacts_root(config.run.artifacts), config.run.base_version)
    registry.verify_version(base)
    if not (layout.user_tower_dir(base).is_dir() and layout.items_file(base).is_file()
            and layout.index_dir(base).is_dir()):
        raise ConfigError(f"--base-version {config.run.base_version}: {base} holds no trained retriever and index "
                          "to reuse; train one with `recsys train --stages retrieval`")
    return base


def train(config: TrainConfig, loaded: tuple[Dataset, Split] | None = None) -> TrainResult:
    """Trains `config.run.stages` into a new sealed version and promotes it if asked and servable.

    `loaded`: an already loaded (dataset, split) to train on instead of `config.data`'s
    (benches that train on an inner split); config.data is still what the manifest records.
    """
    started = time.perf_counter()
    run = config.run
    root = artifacts_root(run.artifacts)
    base = base_version_dir(config)
    base_manifest = registry.read_manifest(base) if base is not None else {}
    if base is not None and base_manifest.get("data") is not None and loaded is None:
        trained_on = flatten(DataConfig, base_manifest["data"])
        now = flatten(DataConfig, config_to_dict(config.data))
        differ = sorted(k for k in now if k in trained_on and _plain(trained_on[k]) != _plain(now[k]))
        if differ:
            raise ConfigError(f"--base-version {base.name} was trained on other data settings ({', '.join(differ)}); "
                              "its features and retriever only fit its own split: drop those flags")
    steps = [s for s in STEPS if s.stage in run.stages and not (base is not None and s.stage == "retrieval")]
    dataset, split = loaded or load_split(config.data)
    features = (FeatureStore.load(layout.features_dir(base)) if base is not None
                else fit_feature_store(dataset, split.train))
    # An unfinished version is removed again (writing_version), so --new-version can be retried.
    with registry.writing_version(root, run.new_version or None) as version_dir:
        log.info("training version %s", version_dir)
        manifest: dict[str, Any] = {
            "data": config_to_dict(config.data),
            "dataset": dataset.describe(),
            "split": split.stats(),
            "stages": [s for s in run.stages if not (base is not None and s == "retrieval")],
            "run": config_to_dict(run),
        }
        ctx = TrainContext(config, dataset, split, features, version_dir, manifest, base)
        if base is not None:
            for name in _REUSED_DIRS:  # byte-identical copies: their checksums carry over
                if (base / name).is_dir():
                    shutil.copytree(base / name, version_dir / name)
            for key in ("retrieval", "index"):
                if key in base_manifest:
                    manifest[key] = base_manifest[key]
            manifest["base_version"] = base.name
            log.info("reusing features, retriever and index of %s", base)
        else:
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
        manifest = registry.finalize_version(version_dir, manifest)
    if not run.promote:
        return TrainResult(version_dir, manifest, False)
    if not layout.is_servable(version_dir):
        missing = [name for name, present in (("retriever", layout.user_tower_dir(version_dir).is_dir()),
                                              ("index", layout.index_dir(version_dir).is_dir()),
                                              ("ranker", layout.ranking_dir(version_dir).is_dir())) if not present]
        return TrainResult(version_dir, manifest, False,
                           f"serving cannot load it (no {' and no '.join(missing)}); complete it with "
                           f"`recsys train --base-version {version_dir.name}`, then `recsys promote`")
    registry.promote(root, version_dir.name)
    return TrainResult(version_dir, manifest, True)


def _plain(value: Any) -> Any:
    """JSON round-trips turn tuples into lists; compare on lists."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
