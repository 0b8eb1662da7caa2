"""Retrain on new data, gate the candidate against the serving version, promote or keep serving.

`retrain(RetrainConfig)` is what `recsys retrain` runs (and bench/staleness.py, the same way):

  1. lock      an exclusive flock on <root>/.retrain.lock (core.registry.exclusive_lock): a second
               retrain (or `recsys versions gc`) exits at once with a message naming the holder.
               Leftovers of a crashed run under <root>/.staging are removed (we hold the lock).
  2. data      the base source (DataConfig) plus the exported event table (--events: engagements,
               ratings and impressions as interaction rows, features.read_event_interactions), both
               cut at --cutoff (timestamp < cutoff). The held-out window is the most recent part:
               [holdout_start, cutoff) with holdout_start = cutoff − --holdout-days, or (0) the
               --test-fraction quantile of the timestamps; the split is global_time at holdout_start,
               so the candidate never sees the window (its validation carve is the tail before it).
  3. train     workflows.train.train — the one training implementation — into a private staging
               root (<root>/.staging/run-*/), not promoted. --warm-start initialises the two-tower from
               the serving version (retrieval.warm: known ids keep their rows, new ids start fresh).
  4. evaluate  candidate and serving version on the SAME EvalData (the window, history = everything
               before it) with evaluation.pipeline.gate_metrics — `recsys evaluate`'s code: ndcg@10,
               mean_hit_rating@10, engagement_ece of the served candidates. The serving version was
               trained on less data: each user's engagements after its own training are merged into the
               history and excluded, exactly as the live server does with streamed events.
  5. gate      serving checks (serving.hotswap.load_checked: checksums, index ↔ items ↔ features
               consistency, load, warm-up — what `recsys serve` and the hot swap run) AND
               ndcg@10 ≥ serving − tol, mean_hit_rating@10 ≥ serving − tol, engagement_ece ≤ serving + tol.
               A metric not measurable on the data (no ratings: NaN) is recorded and not gated.
  6. publish   the lineage (parent, data window, warm start, gate table, decision, reasons) is added to
               the sealed manifest, and the version directory is renamed into <root>/ in one step
               (core.registry.publish_version): a crash before that leaves no visible version.
  7. decide    pass → CURRENT (registry.promote, atomic) — or, when an experiment runs (its file beside
               the registry, core/experiment.py), the version becomes its canary arm (default ramp, the
               experiment's guardrails; CURRENT left alone; `on_pass` replaces this); fail → CURRENT untouched, the
               reasons are in the manifest and in <root>/retrain-log.jsonl.

Reruns with the same inputs (data, cut-off, serving version, config and seeds) train the same
models and make the same decision.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from core import registry
from core.config import config_to_dict, section
from core.errors import ArtifactError, ArtifactMismatchError, DataError, RecsysError
from features import Dataset, read_event_interactions, split_interactions
from pipeline import PipelineConfig
from ranking import RankerConfig
from ranking.negatives import NegativeConfig
from retrieval import IndexConfig, TwoTowerConfig
from workflows.data import DataConfig, load_dataset
from workflows.index import artifacts_root
from workflows.train import RunConfig, TrainConfig, train

log = logging.getLogger(__name__)

RETRAIN_LOG = "retrain-log.jsonl"
DAY = 86_400


@dataclasses.dataclass(frozen=True)
class RetrainOptions:
    """What to retrain on, how to gate it, and what to do with the result."""

    artifacts: str = ""            # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    events: str = ""               # exported event table (`recsys events export --output`) added to the base source
    cutoff: int = 0                # use rows with timestamp < cutoff, base source and events alike (0 = all)
    holdout_days: float = 0.0      # held-out window = the last N days before the cut-off (0 = --test-fraction of rows)
    holdout_start: int = 0         # or: the held-out window starts at this timestamp (overrides --holdout-days)
    warm_start: bool = False       # initialise the two-tower from the serving version (known ids keep their rows)
    new_version: str = ""          # name of the candidate ("" = v<UTC time>-<random>)
    promote: bool = True           # on a pass, point CURRENT at the candidate (off: record the decision only)
    epochs: int = 0                # override every stage's maximum epochs (0 = each stage's own)
    ndcg_tolerance: float = 0.005  # pass needs candidate ndcg@10 >= serving - this
    rating_tolerance: float = 0.05  # pass needs candidate mean_hit_rating@10 >= serving - this (rating units)
    ece_tolerance: float = 0.01    # pass needs candidate engagement_ece <= serving + this
    warmup_users: int = 4          # users the serving checks' warm-up scores

    def __post_init__(self) -> None:
        if self.cutoff < 0:
            raise ValueError(f"--cutoff must be >= 0 (0 = all data), got {self.cutoff}")
        if self.holdout_start < 0 or (self.cutoff and self.holdout_start >= self.cutoff):
            raise ValueError(f"--holdout-start must be >= 0 and before --cutoff, got {self.holdout_start}")
        if not self.holdout_days >= 0:
            raise ValueError(f"--holdout-days must be >= 0 (0 = --test-fraction of the rows), got {self.holdout_days}")
        if self.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {self.epochs}")
        for name in ("ndcg_tolerance", "rating_tolerance", "ece_tolerance"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number")
        if self.warmup_users < 1:
            raise ValueError(f"--warmup-users must be >= 1 (the serving checks score them), got {self.warmup_users}")


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """`recsys retrain`: the data, the gate, and the training sections of `recsys train`."""

    retrain: RetrainOptions = section(RetrainOptions, title="retrain and gate")
    data: DataConfig = section(DataConfig)
    retrieval: TwoTowerConfig = section(TwoTowerConfig, prefix="retrieval_", title="two-tower retrieval model")
    index: IndexConfig = section(IndexConfig, prefix="index_", title="FAISS index")
    ranking: RankerConfig = section(RankerConfig, prefix="ranking_", title="wide & deep ranker")
    negatives: NegativeConfig = section(NegativeConfig, prefix="neg_", title="ranker negatives")
    pipeline: PipelineConfig = section(PipelineConfig, prefix="pipeline_", title="serving pipeline defaults")


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    version: str                   # the candidate's name (published under the root)
    version_dir: pathlib.Path
    decision: str                  # "promoted", "canary" (an experiment runs), "passed" (--no-promote), "refused"
    passed: bool
    reasons: list[str]
    gate: list[dict[str, Any]]     # one row per check
    parent: str                    # the serving version it was compared with ("" = none)
    manifest: dict[str, Any]


# -- data ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Window:
    start: int          # first timestamp used
    holdout_start: int  # the held-out window is [holdout_start, cutoff)
    cutoff: int         # exclusive end (max timestamp + 1 when --cutoff 0)


def assemble(config: RetrainConfig) -> tuple[Dataset, dict[str, Any]]:
    """The base source plus the event table, cut at --cutoff, as one Dataset; and a description."""
    opts = config.retrain
    base = load_dataset(config.data)
    rows = base.interactions
    parts, described = [rows], {"base_source": config.data.source.source, "base_rows": int(len(rows))}
    if opts.events:
        events = read_event_interactions(opts.events, flag="--events")
        parts.append(events)
        described.update({"events": str(opts.events), "event_rows": int(len(events)),
                          "event_engaged": int(events["engaged"].sum())})
    interactions = pd.concat(parts, ignore_index=True)
    if opts.cutoff:
        interactions = interactions.loc[interactions["timestamp"] < opts.cutoff]
        if opts.events:
            described["event_rows_used"] = int((events["timestamp"] < opts.cutoff).sum())
    if interactions.empty:
        raise DataError(f"--cutoff {opts.cutoff}: no interactions before it (the data starts at "
                        f"{int(pd.concat(parts)['timestamp'].min())})")
    interactions = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    users, items = base.users, base.items
    new_users = pd.Index(pd.unique(interactions["user_id"])).difference(users.index)
    new_items = pd.Index(pd.unique(interactions["item_id"])).difference(items.index)
    if len(new_users):  # ids only the event log knows: no side features (the stores fill defaults)
        users = users.reindex(users.index.append(new_users))
        users.index.name = "user_id"
    if len(new_items):
        items = items.reindex(items.index.append(new_items))
        items.index.name = "item_id"
    described.update({"new_users_from_events": int(len(new_users)), "new_items_from_events": int(len(new_items))})
    dataset = Dataset(base.name + ("+events" if opts.events else ""), interactions, users, items, base.spec,
                      {**base.provenance, **({"events": str(opts.events)} if opts.events else {})})
    return dataset, described


def holdout_window(interactions: pd.DataFrame, config: RetrainConfig) -> Window:
    opts = config.retrain
    ts = interactions["timestamp"].to_numpy()
    cutoff = opts.cutoff or int(ts.max()) + 1
    if opts.holdout_start:
        start = int(opts.holdout_start)
    elif opts.holdout_days:
        start = int(cutoff - opts.holdout_days * DAY)
    else:
        start = int(np.quantile(ts, 1.0 - config.data.split.test_fraction))
    if not (ts < start).any() or not (ts >= start).any():
        raise DataError(f"the held-out window [{start}, {cutoff}) leaves no training rows or no held-out rows; "
                        "change --holdout-days / --test-fraction or --cutoff")
    return Window(int(ts.min()), start, cutoff)


def _train_config(config: RetrainConfig, staging: pathlib.Path, name: str, window: Window,
                  warm_from: pathlib.Path | None) -> TrainConfig:
    split = dataclasses.replace(config.data.split, strategy="global_time", cutoff_timestamp=window.holdout_start)
    return TrainConfig(
        data=dataclasses.replace(config.data, split=split),
        run=RunConfig(artifacts=str(staging), new_version=name, promote=False, epochs=config.retrain.epochs,
                      warm_start=str(warm_from) if warm_from is not None else ""),
        retrieval=config.retrieval, index=config.index, ranking=config.ranking, negatives=config.negatives,
        pipeline=config.pipeline)


# -- evaluation and gate ------------------------------------------------------------------------
def streamed_since(train: pd.DataFrame, seen: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Each user's engaged train items the serving version did not train on, newest first: the
    history the live server would hold for them in its event list."""
    engaged = train.loc[train["engaged"] == 1].sort_values("timestamp", kind="stable")
    engaged = engaged.drop_duplicates(["user_id", "item_id"], keep="last")
    out: dict[str, tuple[str, ...]] = {}
    for user, items in engaged.groupby(engaged["user_id"].astype(str), sort=False)["item_id"]:
        old = set(seen.get(user, ()))
        new = [str(i) for i in items if str(i) not in old]
        if new:
            out[user] = tuple(reversed(new))
    return out


def evaluate_version(pipeline, data, recent: dict | None = None) -> dict[str, float]:
    """evaluation.pipeline.gate_metrics of a loaded pipeline on `data` (the window)."""
    from evaluation.pipeline import PipelineEvalConfig, PipelineRecommender, gate_metrics

    rec = PipelineRecommender(PipelineEvalConfig(diagnostics=False, verify=False), pipeline=pipeline, recent=recent)
    return gate_metrics(rec, data)


def gate_table(candidate: dict[str, float], serving: dict[str, float] | None, opts: RetrainOptions
               ) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per metric check: metric, candidate, serving, rule, tolerance, passed; plus failure reasons."""
    rules = (("ndcg@10", "higher", opts.ndcg_tolerance), ("mean_hit_rating@10", "higher", opts.rating_tolerance),
             ("engagement_ece", "lower", opts.ece_tolerance))
    rows, reasons = [], []
    for metric, better, tol in rules:
        c = float(candidate.get(metric, float("nan")))
        s = float(serving.get(metric, float("nan"))) if serving is not None else float("nan")
        if serving is None:
            ok, note = True, "no serving version to compare with"
        elif math.isnan(c) or math.isnan(s):
            ok, note = True, "not measurable on this data (NaN): not gated"
        elif better == "higher":
            ok, note = c >= s - tol, f"candidate >= serving - {tol:g}"
        else:
            ok, note = c <= s + tol, f"candidate <= serving + {tol:g}"
        rows.append({"check": metric, "candidate": c, "serving": s, "rule": note, "tolerance": tol, "passed": bool(ok)})
        if not ok:
            reasons.append(f"{metric}: candidate {c:.4f} vs serving {s:.4f} (rule: {note})")
    return rows, reasons


# -- the workflow -------------------------------------------------------------------------------
OnPass = Callable[[pathlib.Path, str, dict[str, Any]], str]


def retrain(config: RetrainConfig, on_pass: OnPass | None = None) -> RetrainResult:
    """Runs steps 1–7 of the module docstring. `on_pass(root, version, manifest) -> decision` replaces the
    promotion on a pass (the experiments hook: start a canary arm); None = promote (or leave for an
    experiment when an experiments config exists)."""
    root = artifacts_root(config.retrain.artifacts)
    with registry.exclusive_lock(root, what="retrain (or versions gc)"):
        cleared = registry.clear_staging(root)
        if cleared:
            log.warning("removed %d leftover staging run(s) of an interrupted retrain: %s", len(cleared), cleared)
        staging = registry.staging_root(root)
        try:
            return _retrain_locked(config, root, staging, on_pass)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _retrain_locked(config: RetrainConfig, root: pathlib.Path, staging: pathlib.Path,
                    on_pass: OnPass | None) -> RetrainResult:
    from evaluation import build_eval_data
    from features import FeatureStore
    from serving.hotswap import load_checked

    started = time.perf_counter()
    opts = config.retrain
    try:
        parent = registry.current_version(root)
        parent_dir = registry.resolve_version(root, parent)
    except ArtifactError:
        parent, parent_dir = "", None
    if opts.warm_start and parent_dir is None:
        raise RecsysError(f"--warm-start: no serving version under {root} (no CURRENT) to start from; "
                          "drop --warm-start for the first version")
    dataset, described = assemble(config)
    window = holdout_window(dataset.interactions, config)
    name = opts.new_version or registry.new_version_name()
    if (root / name).exists():
        raise ArtifactError(f"version directory {root / name} already exists; versions are never overwritten")
    train_config = _train_config(config, staging, name, window, parent_dir if opts.warm_start else None)
    split = split_interactions(dataset.interactions, train_config.data.split)
    log.info("retrain %s: %d rows [%d, %d); held-out window [%d, %d): train %d, held out %d; serving %s",
             name, len(dataset.interactions), window.start, window.cutoff, window.holdout_start, window.cutoff,
             len(split.train), len(split.test), parent or "(none)")
    t0 = time.perf_counter()
    trained = train(train_config, loaded=(dataset, split))
    train_seconds = time.perf_counter() - t0
    candidate_dir = trained.version_dir

    # Serving checks: exactly what `recsys serve` / the hot swap run before a version serves.
    checks: dict[str, Any] = {"check": "serving checks (verify, consistency, load, warm-up)"}
    try:
        candidate_pipeline = load_checked(candidate_dir, verify=True, warmup_users=opts.warmup_users)
        checks.update(passed=True)
    except RecsysError as e:
        candidate_pipeline = None
        checks.update(passed=False, error=str(e))
    features = FeatureStore.load(candidate_dir / "features")
    data = build_eval_data(dataset, split, features)
    candidate_metrics: dict[str, float] = {}
    if candidate_pipeline is not None:
        candidate_metrics = evaluate_version(candidate_pipeline, data)
    serving_metrics: dict[str, float] | None = None
    serving_error = ""
    if parent_dir is not None:
        try:
            serving_pipeline = load_checked(parent_dir, verify=True, warmup_users=0)
            recent = streamed_since(split.train, serving_pipeline.features.seen)
            serving_metrics = evaluate_version(serving_pipeline, data, recent)
        except ArtifactMismatchError as e:
            serving_error = (f"the serving version {parent} cannot be compared on this window: its training data is "
                             f"not a part of this run's data before the window ({e}); retrain with the base source "
                             "and events it was trained on, or a held-out window after its training data")
        except RecsysError as e:
            serving_error = f"the serving version {parent} could not be evaluated on this window: {e}"
    rows, reasons = gate_table(candidate_metrics, serving_metrics, opts)
    if not checks["passed"]:
        reasons.insert(0, f"serving checks failed: {checks['error']}")
    if serving_error:
        reasons.append(serving_error + " (nothing to compare with: refused)")
    passed = not reasons
    gate = [{"check": "serving_checks", "candidate": None, "serving": None, "rule": checks["check"],
             "tolerance": None, "passed": bool(checks["passed"])}, *rows]

    experiments = registry.experiment_file(root)
    if not passed:
        decision = "refused"
    elif on_pass is not None or experiments is not None or not opts.promote:
        decision = "passed"
    else:
        decision = "promoted"
    lineage = {
        "parent": parent or None,
        "data_window": {"start": window.start, "holdout_start": window.holdout_start, "cutoff": window.cutoff,
                        "train_rows": int(len(split.train)), "holdout_rows": int(len(split.test)),
                        "holdout_users": int(len(data.test_users)), **described},
        "warm_start": trained.manifest.get("retrieval", {}).get("warm_start") if opts.warm_start else None,
        "gate": {"table": gate, "candidate": candidate_metrics, "serving": serving_metrics,
                 "tolerances": {"ndcg@10": opts.ndcg_tolerance, "mean_hit_rating@10": opts.rating_tolerance,
                                "engagement_ece": opts.ece_tolerance},
                 "definition": "candidate and serving scored on the held-out window [holdout_start, cutoff) by "
                               "evaluation.pipeline.gate_metrics; the serving version's later engagements are "
                               "merged into its users' histories as streamed events"},
        "decision": decision, "reasons": reasons,
        "config": config_to_dict(config.retrain),
        "train_seconds": round(train_seconds, 1),
    }
    manifest = registry.amend_manifest(candidate_dir, {"lineage": lineage})
    published = registry.publish_version(candidate_dir, root)
    if decision == "promoted":
        registry.promote(root, name)
    elif passed and on_pass is not None:
        decision = on_pass(root, name, manifest)
    elif passed and experiments is not None and opts.promote:
        decision, reasons = _start_canary(experiments, name)
    elif passed and experiments is not None:
        reasons = ["--no-promote: gate passed; the running experiment and CURRENT left alone"]
    elif passed:
        reasons = ["--no-promote: gate passed, CURRENT left alone"]
    if decision != lineage["decision"] or reasons != lineage["reasons"]:
        lineage.update(decision=decision, reasons=reasons)
        manifest = registry.amend_manifest(published, {"lineage": lineage})
    _append_log(root, {"version": name, "parent": parent or None, "decision": decision, "reasons": reasons,
                       "candidate": {k: candidate_metrics.get(k) for k in ("ndcg@10", "mean_hit_rating@10",
                                                                           "engagement_ece")},
                       "serving": None if serving_metrics is None else
                       {k: serving_metrics.get(k) for k in ("ndcg@10", "mean_hit_rating@10", "engagement_ece")},
                       "window": dataclasses.asdict(window), "seconds": round(time.perf_counter() - started, 1)})
    log.info("retrain %s: %s%s", name, decision, f" ({'; '.join(reasons)})" if reasons else "")
    return RetrainResult(name, published, decision, passed, reasons, gate, parent, manifest)


def _start_canary(path: pathlib.Path, version: str) -> tuple[str, list[str]]:
    """A passed candidate while an experiment runs: it becomes the experiment's canary arm (core.experiment
    .with_canary: the default ramp, the experiment's guardrails; servers pick the file up on their next poll
    and roll it back on a breach). CURRENT is left alone. ("canary", reasons) or ("passed", why not)."""
    import time as _time

    from core.experiment import ExperimentConfigError, read_experiment, with_canary, write_experiment

    try:
        experiment = read_experiment(path)
        if experiment is None:  # removed since the check: nothing runs, so nothing to canary into
            return "passed", [f"experiment file {path} vanished during the retrain: CURRENT left alone"]
        updated = with_canary(experiment, version, _time.time())
    except ExperimentConfigError as e:
        return "passed", [f"gate passed, but the canary could not be started ({e}): CURRENT left alone"]
    write_experiment(path, updated)
    return "canary", [f"experiment {updated.name!r}: canary arm {updated.canary.arm!r} with {version}, ramp "
                      f"{[list(s) for s in updated.canary.schedule]} from now; CURRENT left alone"]


def _append_log(root: pathlib.Path, record: dict[str, Any]) -> None:
    import datetime as dt

    record = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **record}
    with open(root / RETRAIN_LOG, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def gc(root: str | pathlib.Path, keep: int, dry_run: bool = False) -> dict[str, list[str]]:
    """`recsys versions gc`: core.registry.gc_versions under the retrain lock (never while a retrain runs);
    also removes an interrupted retrain's staging leftovers."""
    root = artifacts_root(str(root))
    with registry.exclusive_lock(root, what="retrain (or versions gc)"):
        if not dry_run:
            registry.clear_staging(root)  # an interrupted retrain's leftovers (we hold the lock: no live run's)
        return registry.gc_versions(root, keep, dry_run)


__all__ = ["RetrainConfig", "RetrainOptions", "RetrainResult", "retrain", "gc", "gate_table", "streamed_since"]
