"""Runs the offline protocol for several models on one split and tabulates the metrics."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from evaluation.baselines import (
    BiasRecommender,
    EASERecencyRecommender,
    EASERecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    RandomRecommender,
    rank_users,
)
from evaluation.metrics import evaluate_rankings
from evaluation.pipeline import PipelineRecommender
from evaluation.protocol import EvalData, Recommender
from evaluation.two_tower import TwoTowerRecommender

log = logging.getLogger(__name__)

# name -> factory(config=None) -> Recommender. A factory may carry a `config_cls` attribute
# (its frozen config dataclass) so the CLI can turn its fields into --<name>-<field> flags.
# Later stages register themselves with one line each, e.g.
#   MODEL_FACTORIES["two_tower"] = TwoTowerRecommender
MODEL_FACTORIES: dict[str, Callable[..., Recommender]] = {
    "random": RandomRecommender,
    "popularity": PopularityRecommender,
    "ease": EASERecommender,
    "ease_recency": EASERecencyRecommender,
    "itemknn": ItemKNNRecommender,
    "bias": BiasRecommender,
    "two_tower": TwoTowerRecommender,
    "pipeline": PipelineRecommender,
}


def model_config_class(name: str) -> type | None:
    """The config dataclass of registered model `name` (None if it takes no config)."""
    return getattr(_factory(name), "config_cls", None)


def build_model(name: str, config: Any = None) -> Recommender:
    """An unfitted model from the registry; `config` None means the model's defaults."""
    factory = _factory(name)
    return factory() if config is None else factory(config)


def _factory(name: str) -> Callable[..., Recommender]:
    try:
        return MODEL_FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODEL_FACTORIES))}") from None


def evaluate_models(data: EvalData, models: Sequence[Recommender], ks: Sequence[int] = (10, 100),
                    batch_size: int = 1024) -> pd.DataFrame:
    """Fits and scores each model on `data` with the same users, catalogue and judgements.

    Args:
      data: the split (see evaluation.protocol.build_eval_data).
      models: unfitted Recommenders; each is fit on data's train part here.
      ks: metric cut-offs; each model ranks max(ks) items per test user.
      batch_size: users scored per `recommend` call (bounds the [batch, I] score memory).

    Returns:
      One row per model (index "model", in the given order), one column per metric of
      evaluate_rankings, plus "fit_seconds" and "score_seconds". `attrs["selection"]` holds
      {model: Selection.as_dict()} for every model that chose hyper-parameters on the
      validation carve (a `selection` attribute set by fit); write_report records it.
    """
    if not models:
        raise ValueError("no models to evaluate")
    names = [getattr(m, "name", type(m).__name__) for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique (they label the report rows), got {names}")
    k = max(int(v) for v in ks)
    rows, selections = [], {}
    for i, (name, model) in enumerate(zip(names, models), 1):
        log.info("[%d/%d] %s: fitting", i, len(models), name)
        t0 = time.perf_counter()
        model.fit(data)
        fit_s = time.perf_counter() - t0
        log.info("[%d/%d] %s: fit in %.2fs; ranking %d users x top-%d", i, len(models), name, fit_s,
                 len(data.test_users), k)
        t0 = time.perf_counter()
        ranked = rank_users(model, data.test_users, k, batch_size)
        score_s = time.perf_counter() - t0
        metrics = evaluate_rankings(ranked, data, ks)
        log.info("[%d/%d] %s: scored in %.2fs; %s", i, len(models), name, score_s,
                 ", ".join(f"{key} {metrics[key]:.4f}" for key in (f"ndcg@{min(ks)}", f"recall@{k}") if key in metrics))
        rows.append({"model": name, **metrics, "fit_seconds": fit_s, "score_seconds": score_s})
        if (sel := getattr(model, "selection", None)) is not None:
            selections[name] = sel.as_dict()
    df = pd.DataFrame(rows).set_index("model")
    df["users"] = df["users"].astype(np.int64)
    if selections:
        df.attrs["selection"] = selections
    return df
