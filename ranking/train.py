"""Training the ranker: examples from the log (+ negatives), both heads fit at once, diagnostics.

Labels per example row: `engaged` for the engagement head; the normalised rating for the
quality head where a rating was observed, with a 0/1 mask so unrated rows (negatives,
unrated engagements) do not train quality at all.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from features import FeatureStore
from ranking.model import HEADS, RankerConfig, WideDeepRanker, build_ranker, normalize_rating, ranker_inputs, \
    user_inputs
from ranking.negatives import CandidateGenerator, NegativeConfig, sample_negatives, uses_impressions
from recsys.tf_env import keras, set_seed, tf

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Examples:
    """Training or evaluation rows for the ranker.

    Attributes:
      rows: the interactions-schema rows (user_id, item_id, timestamp, rating, engaged).
      inputs: the ranker's input dict (see model.ranker_inputs), each value [n].
      engaged: [n] float32 engagement labels in {0, 1}.
      quality: [n] float32 normalised ratings in [0, 1] (0 where unobserved).
      quality_mask: [n] float32, 1 where a rating was observed.
    """

    rows: pd.DataFrame
    inputs: dict[str, np.ndarray]
    engaged: np.ndarray
    quality: np.ndarray
    quality_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.engaged)


def make_examples(rows: pd.DataFrame, features: FeatureStore, history_length: int = 0) -> Examples:
    """Looks up the raw features of every (user, item) row and derives the labels.

    Each row's own item is left out of its user's history (model.user_inputs), as it is
    for every served candidate.
    """
    rows = rows.reset_index(drop=True)
    items = rows["item_id"].to_numpy()
    inputs = ranker_inputs(user_inputs(features, rows["user_id"].to_numpy(), history_length, leave_out=items),
                           features.item_features(items))
    rating = rows["rating"].to_numpy(dtype=np.float64)
    observed = np.isfinite(rating) & (rows["engaged"].to_numpy() == 1)
    quality = np.where(observed, np.clip(normalize_rating(np.where(observed, rating, 1.0)), 0.0, 1.0), 0.0)
    return Examples(rows, inputs, rows["engaged"].to_numpy().astype(np.float32), quality.astype(np.float32),
                    observed.astype(np.float32))


def training_rows(interactions: pd.DataFrame, features: FeatureStore, neg: NegativeConfig,
                  candidates: CandidateGenerator | None = None) -> pd.DataFrame:
    """The log's rows plus, when it has no impressions, sampled negatives (see negatives.py)."""
    if uses_impressions(interactions, neg):
        log.info("ranker negatives: %d logged shown-not-engaged impressions", int((interactions["engaged"] == 0).sum()))
        return interactions.reset_index(drop=True)
    positives = interactions.loc[interactions["engaged"] == 1]
    negatives = sample_negatives(positives, features.catalogue, features.item_counts, neg, candidates)
    return pd.concat([positives, negatives], ignore_index=True)


def _dataset(ex: Examples, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    x = {k: (tf.constant(v.astype(str)) if v.dtype == object else tf.constant(v)) for k, v in ex.inputs.items()}
    y = {"engagement": ex.engaged, "quality": ex.quality}
    w = {"engagement": np.ones_like(ex.engaged), "quality": ex.quality_mask}
    ds = tf.data.Dataset.from_tensor_slices((x, y, w))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(ex), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(2)


def train_ranker(rows: pd.DataFrame, features: FeatureStore, config: RankerConfig = RankerConfig(),
                 validation: Examples | None = None) -> tuple[WideDeepRanker, dict]:
    """Trains a fresh ranker on `rows` (training_rows output: engaged and non-engaged rows).

    Returns:
      (model, info): info holds the per-epoch Keras history, example counts and seconds.
    """
    set_seed(config.seed)
    started = time.perf_counter()
    ex = make_examples(rows, features, config.history_length)
    if len(ex) == 0:
        raise ValueError("no training rows for the ranker")
    if ex.engaged.min() == ex.engaged.max():
        raise ValueError(f"ranker training rows are all engaged={int(ex.engaged[0])}; the engagement head needs "
                         "both labels (check the negative sampling flags)")
    model = build_ranker(features, config)
    history = model.fit(_dataset(ex, config.batch_size, config.seed), epochs=config.epochs,
                        validation_data=_dataset(validation, 4 * config.batch_size, None) if validation else None,
                        verbose=2 if config.progress else 0)
    info = {
        "examples": len(ex), "engaged": int(ex.engaged.sum()), "rated": int(ex.quality_mask.sum()),
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    return model, info


def predict(model: keras.Model, inputs: Mapping[str, np.ndarray], batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Calls the in-memory model in batches: (engagement [n], quality [n]) float32."""
    n = len(next(iter(inputs.values())))
    outs = {h: [] for h in HEADS}
    call = _graph_call(model)
    for lo in range(0, n, batch_size):
        batch = {k: (tf.constant(v[lo:lo + batch_size].astype(str)) if v.dtype == object else
                     tf.constant(v[lo:lo + batch_size])) for k, v in inputs.items()}
        res = call(batch)
        for h in HEADS:
            outs[h].append(np.asarray(res[h]).reshape(-1))
    return tuple(np.concatenate(outs[h]) if outs[h] else np.zeros(0, np.float32) for h in HEADS)  # type: ignore[return-value]


def _graph_call(model: keras.Model):
    """model.call traced as one tf.function (cached on the model): the same graph the
    SavedModel signature runs, so in-memory and exported scores are bit-identical."""
    fn = _GRAPH_CALLS.get(model)
    if fn is None:
        fn = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
        _GRAPH_CALLS[model] = fn
    return fn


# Traced calls per live model (a cache, not state: dropping it changes nothing but speed).
_GRAPH_CALLS: "weakref.WeakKeyDictionary[keras.Model, Any]" = weakref.WeakKeyDictionary()


def head_metrics(engagement: np.ndarray, engaged: np.ndarray, quality: np.ndarray,
                 rating: np.ndarray) -> dict[str, float]:
    """Per-head diagnostics.

    engagement_auc: ROC AUC of the engagement head against `engaged` (Mann-Whitney U with
      average ranks for ties; NaN when one class is absent).
    quality_rmse / quality_mae: errors of the quality head in rating units (1 + 4q) against
      the observed ratings (rows with NaN rating are skipped).
    """
    engagement = np.asarray(engagement, dtype=np.float64)
    y = np.asarray(engaged).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos and n_neg:
        ranks = stats.rankdata(engagement)
        auc = (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    else:
        auc = float("nan")
    rating = np.asarray(rating, dtype=np.float64)
    rated = np.isfinite(rating)
    err = 1.0 + 4.0 * np.asarray(quality, dtype=np.float64)[rated] - rating[rated]
    return {
        "engagement_auc": float(auc), "engagement_positives": n_pos, "engagement_negatives": n_neg,
        "quality_rmse": float(np.sqrt(np.mean(err ** 2))) if rated.any() else float("nan"),
        "quality_mae": float(np.mean(np.abs(err))) if rated.any() else float("nan"),
        "quality_rated": int(rated.sum()),
    }


def evaluation_rows(test: pd.DataFrame, features: FeatureStore, neg: NegativeConfig, seen: pd.DataFrame,
                    candidates: CandidateGenerator | None = None) -> pd.DataFrame:
    """Held-out rows for head diagnostics: the test log, plus sampled negatives if it has no impressions.

    Negatives are drawn the same way as for training (so AUC is measured on the serving
    distribution) and never include anything the user engaged with in `seen` or `test`.
    """
    if (test["engaged"] == 0).any() and neg.source != "sampled":
        return test.reset_index(drop=True)
    positives = test.loc[test["engaged"] == 1]
    negatives = sample_negatives(positives, features.catalogue, features.item_counts,
                                 dataclasses.replace(neg, seed=neg.seed + 1, per_positive=max(1, neg.per_positive)),
                                 candidates, exclude=seen.loc[seen["engaged"] == 1])
    return pd.concat([positives, negatives], ignore_index=True)


def diagnose(model_or_scorer, rows: pd.DataFrame, features: FeatureStore) -> dict[str, float]:
    """head_metrics of a model (in-memory Keras or an exported Ranker) on `rows`."""
    config = model_or_scorer.config
    history_length = config["history_length"] if isinstance(config, dict) else config.history_length
    ex = make_examples(rows, features, history_length)
    if hasattr(model_or_scorer, "score_inputs"):
        e, q = model_or_scorer.score_inputs(ex.inputs)
    else:
        e, q = predict(model_or_scorer, ex.inputs)
    rating = np.where(ex.quality_mask > 0, rows.reset_index(drop=True)["rating"].to_numpy(dtype=np.float64), np.nan)
    return head_metrics(e, ex.engaged, q, rating)


__all__: Sequence[str] = ("Examples", "make_examples", "training_rows", "train_ranker", "predict", "head_metrics",
                          "evaluation_rows", "diagnose")
