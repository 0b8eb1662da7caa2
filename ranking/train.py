"""Training the ranker: example rows per head, both heads fit at once, diagnostics.

Each example row carries labels and per-head loss weights:
  engagement head — label `engaged`, weight `w_engagement` (0 = the row does not train it);
  quality head — the normalised rating, weight `w_quality` × (a rating was observed), so
    rows without a rating (negatives, unrated engagements) never train quality.

Where the engagement negatives come from (NegativeConfig.source, see `training_rows`):
  impressions — the log's shown-but-not-engaged rows (synthetic data);
  sampled — every train engagement (its history: the user's engagements before it)
    against negatives sampled per positive, half from the serving retriever's top-N for
    the user and half by popularity (MovieLens default: on ML-100k it beats "window" by
    0.045 NDCG@10, bench/RESULTS.md — 80k positives instead of 5k);
  window — the serving distribution, reproduced one time window earlier: a candidate
    generator that knows only `split.fit` (the retrieval model trained without the
    validation window) retrieves each user's top-N; a candidate is positive iff the user
    engaged with it in the window. The user's history is their fit items only.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from core.tf_data import indexed_batches
from core.tf_env import keras, set_seed, tf
from features import MULTI_VALUE_SEP, FeatureStore, Split, SplitConfig
from ranking.model import (
    HEADS,
    RankerConfig,
    RetrievalParts,
    WideDeepRanker,
    build_ranker,
    normalize_rating,
    ranker_inputs,
    user_inputs,
)
from ranking.negatives import CandidateGenerator, NegativeConfig, sample_negatives, uses_impressions

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Examples:
    """Training or evaluation rows for the ranker.

    Attributes:
      rows: the example rows (user_id, item_id, timestamp, rating, engaged[, history,
        w_engagement, w_quality]).
      inputs: the ranker's input dict (see model.ranker_inputs), each value [n].
      engaged: [n] float32 engagement labels in {0, 1}.
      quality: [n] float32 normalised ratings in [0, 1] (0 where unobserved).
      engagement_mask: [n] float32 loss weight of the engagement head.
      quality_mask: [n] float32 loss weight of the quality head (0 where no rating).
    """

    rows: pd.DataFrame
    inputs: dict[str, np.ndarray]
    engaged: np.ndarray
    quality: np.ndarray
    engagement_mask: np.ndarray
    quality_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.engaged)


def make_examples(rows: pd.DataFrame, features: FeatureStore, history_length: int = 0) -> Examples:
    """Looks up the raw features of every (user, item) row and derives labels and weights.

    The user's history is the row's `history` column when present (training rows built
    as of an earlier time), else FeatureStore.history with the row's own item left out
    (model.user_inputs), as it is for every served candidate.
    """
    rows = rows.reset_index(drop=True)
    users, items = rows["user_id"].to_numpy(), rows["item_id"].to_numpy()
    if history_length > 0 and "history" in rows.columns:
        user = user_inputs(features, users, 0)
        user["history"] = np.array([_truncate(h, history_length) for h in rows["history"]], dtype=object)
    else:
        user = user_inputs(features, users, history_length, leave_out=items)
    inputs = ranker_inputs(user, features.item_features(items))
    rating = rows["rating"].to_numpy(dtype=np.float64)
    observed = np.isfinite(rating) & (rows["engaged"].to_numpy() == 1)
    quality = np.where(observed, np.clip(normalize_rating(np.where(observed, rating, 1.0)), 0.0, 1.0), 0.0)
    w_e = rows["w_engagement"].to_numpy(np.float32) if "w_engagement" in rows.columns else np.ones(len(rows), np.float32)
    w_q = rows["w_quality"].to_numpy(np.float32) if "w_quality" in rows.columns else np.ones(len(rows), np.float32)
    return Examples(rows, inputs, rows["engaged"].to_numpy().astype(np.float32), quality.astype(np.float32),
                    w_e, (observed * w_q).astype(np.float32))


def _truncate(history: str, length: int) -> str:
    parts = [p for p in str(history).split(MULTI_VALUE_SEP) if p] if isinstance(history, str) else []
    return MULTI_VALUE_SEP.join(parts[-length:])


def training_rows(split: Split | pd.DataFrame, features: FeatureStore, neg: NegativeConfig, history_length: int = 0,
                  candidates: CandidateGenerator | None = None) -> pd.DataFrame:
    """The ranker's example rows for `split` (see the module docstring for the sources).

    Args:
      split: a Split, of which the train part (and its fit/validation carve) is all that
        is read; or a bare training log (interactions schema), read as a train part with
        no validation carve — so "auto" means impressions, else sampled, never window.
      features: fit on split.train (vocabularies, popularity, seen items).
      neg: where engagement negatives come from.
      history_length: the ranker's history feature length (0 = none).
      candidates: for "window", a generator trained WITHOUT split.validation (else the
        window's positives leak into which items are retrieved); for "sampled", the
        serving retriever. None = popularity-sampled negatives instead.

    Returns:
      Interactions-schema rows plus `history` (the user's items as of the row, joined
      with MULTI_VALUE_SEP), `w_engagement` and `w_quality`.
    """
    split = as_train_split(split)
    train = split.train
    source = resolve_negative_source(split, neg)
    if source == "impressions":
        log.info("ranker negatives: %d logged shown-not-engaged impressions", int((train["engaged"] == 0).sum()))
        rows = train.reset_index(drop=True).assign(w_engagement=1.0, w_quality=1.0)
        return _with_history(rows, train, history_length)
    if source == "sampled":
        positives = train.loc[train["engaged"] == 1]
        negatives = sample_negatives(positives, features.catalogue, features.item_counts, neg, candidates)
        rows = pd.concat([positives, negatives], ignore_index=True).assign(w_engagement=1.0, w_quality=1.0)
        return _with_history(rows, train, history_length)
    return _window_rows(split, features, neg, history_length, candidates)


def as_train_split(data: Split | pd.DataFrame) -> Split:
    """`data` itself if a Split, else a Split whose train part is the log `data` (no validation, no test)."""
    if isinstance(data, Split):
        return data
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"training_rows takes a Split or an interactions DataFrame, got {type(data).__name__}")
    empty = data.iloc[:0]
    return Split(train=data, validation=empty, test=empty, config=SplitConfig(val_fraction=0.0))


def resolve_negative_source(split: Split, neg: NegativeConfig) -> str:
    """The concrete source "auto" stands for: impressions if logged, else sampled."""
    if neg.source == "auto":
        return "impressions" if uses_impressions(split.train, neg) else "sampled"
    if neg.source == "impressions":
        uses_impressions(split.train, neg)  # raises when the log has none
    if neg.source == "window" and not (split.validation["engaged"] == 1).any():
        raise ValueError("--neg-source window needs a validation carve with engagements; set --val-fraction > 0")
    return neg.source


def _with_history(rows: pd.DataFrame, train: pd.DataFrame, history_length: int) -> pd.DataFrame:
    """Adds each row's history: its user's `history_length` latest train engagements strictly
    before the row's timestamp (next-item prediction, as when serving: all of a served
    user's train items precede the request, and the candidate is never among them)."""
    if history_length <= 0:
        return rows
    engaged = train.loc[train["engaged"] == 1, ["user_id", "item_id", "timestamp"]].sort_values(
        ["user_id", "timestamp"], kind="stable")
    seqs = {u: (g["timestamp"].to_numpy(), g["item_id"].to_numpy(dtype=object))
            for u, g in engaged.groupby("user_id", sort=False)}
    out = np.empty(len(rows), dtype=object)
    out[:] = ""
    users = rows["user_id"].to_numpy()
    stamps = rows["timestamp"].to_numpy()
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        seq = seqs.get(users[idx[0]])
        if seq is None:
            continue
        ts, items = seq
        ends = np.searchsorted(ts, stamps[idx], side="left")
        for r, end in zip(idx, ends):
            out[r] = MULTI_VALUE_SEP.join(items[max(0, end - history_length):end])
    return rows.assign(history=out)


def _window_rows(split: Split, features: FeatureStore, neg: NegativeConfig, history_length: int,
                 candidates: CandidateGenerator | None) -> pd.DataFrame:
    fit, window = split.fit, split.validation
    fit_engaged = fit.loc[fit["engaged"] == 1].sort_values("timestamp", kind="stable")
    fit_seen = {u: tuple(g) for u, g in fit_engaged.drop_duplicates(["user_id", "item_id"], keep="last")
                .groupby("user_id", sort=False)["item_id"]}
    pos = window.loc[window["engaged"] == 1].drop_duplicates(["user_id", "item_id"], keep="last")
    users = sorted(pos["user_id"].unique())
    positives = {u: dict(zip(g["item_id"], zip(g["rating"], g["timestamp"]))) for u, g in pos.groupby("user_id")}
    rows_u, rows_i, rows_r, rows_t, rows_e = [], [], [], [], []
    retrieved = 0
    if candidates is not None:
        for lo in range(0, len(users), neg.batch_users):
            batch = users[lo:lo + neg.batch_users]
            lists = candidates(batch)
            if len(lists) != len(batch):
                raise ValueError(f"candidate generator returned {len(lists)} lists for {len(batch)} users")
            for u, items in zip(batch, lists):
                seen = set(fit_seen.get(u, ()))
                got = positives[u]
                t_default = min(t for _, t in got.values())
                for item in items:
                    item = str(item)
                    if not item or item in seen:
                        continue
                    hit = got.get(item)
                    rows_u.append(u)
                    rows_i.append(item)
                    rows_r.append(hit[0] if hit else np.nan)
                    rows_t.append(hit[1] if hit else t_default)
                    rows_e.append(1 if hit else 0)
                    retrieved += hit is not None
    cand = pd.DataFrame({"user_id": rows_u, "item_id": rows_i, "timestamp": np.asarray(rows_t, dtype=np.int64),
                         "rating": np.asarray(rows_r, dtype=np.float64), "engaged": np.asarray(rows_e, dtype=np.int8)})
    # Window positives the generator missed are left out by default: the ranker only ever
    # sees candidates, and "not retrievable" items as positives teach it to favour oddities.
    # Without a generator they are all there is, against popularity-sampled negatives.
    have = set(zip(cand["user_id"], cand["item_id"]))
    missed = pos.loc[[(u, i) not in have for u, i in zip(pos["user_id"], pos["item_id"])]]
    if candidates is not None and not neg.window_missed:
        missed = missed.iloc[:0]
    parts = [cand, missed[["user_id", "item_id", "timestamp", "rating", "engaged"]]]
    if candidates is None:
        banned = pd.concat([fit_engaged[["user_id", "item_id"]], pos[["user_id", "item_id"]]])
        parts.append(sample_negatives(pos, features.catalogue, features.item_counts,
                                      dataclasses.replace(neg, hard_fraction=0.0), None, exclude=banned))
    engagement = pd.concat(parts, ignore_index=True).assign(w_engagement=1.0, w_quality=0.0)
    if history_length > 0:
        engagement["history"] = [MULTI_VALUE_SEP.join(fit_seen.get(u, ())[-history_length:])
                                 for u in engagement["user_id"]]
    log.info("ranker window examples: %d users, %d candidates (%d engaged in the window), %d window positives not "
             "retrieved, %d popularity negatives", len(users), len(cand), retrieved, len(missed),
             len(engagement) - len(cand) - len(missed))
    # The quality head learns from every rated train engagement.
    train = split.train
    rated = train.loc[(train["engaged"] == 1) & train["rating"].notna()].reset_index(drop=True)
    quality = _with_history(rated.assign(w_engagement=0.0, w_quality=1.0), train, history_length)
    return pd.concat([engagement, quality], ignore_index=True)


def _dataset(ex: Examples, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    y = {"engagement": ex.engaged, "quality": ex.quality}
    w = {"engagement": ex.engagement_mask, "quality": ex.quality_mask}
    return indexed_batches((dict(ex.inputs), y, w), batch_size, seed=shuffle_seed, prefetch=2)


def train_ranker(rows: pd.DataFrame, features: FeatureStore, config: RankerConfig = RankerConfig(),
                 validation: Examples | None = None, retrieval: RetrievalParts | None = None,
                 rating_baseline: tuple | None = None, stack_stats=None) -> tuple[WideDeepRanker, dict]:
    """Trains a fresh ranker on `rows` (training_rows output: engaged and non-engaged rows).

    `retrieval`: the trained two-tower's parts for the serving-time fusion of
    config.retrieval_weight (model.RetrievalAffinity); None = the ranker alone.
    `rating_baseline`: (μ, user ids, b_u, item ids, b_i) fit on the same training data; the
    quality head then learns a residual on it (model.RatingBaseline).
    `stack_stats`: ranking.stacking.ActivityStats of the same training data, for the stacked
    engagement model's graph features (model.StackInputs; needs `retrieval`).

    Returns:
      (model, info): info holds the per-epoch Keras history, example counts and seconds.
    """
    set_seed(config.seed)
    started = time.perf_counter()
    ex = make_examples(rows, features, config.history_length)
    if len(ex) == 0:
        raise ValueError("no training rows for the ranker")
    trains_e = ex.engagement_mask > 0
    if not trains_e.any() or ex.engaged[trains_e].min() == ex.engaged[trains_e].max():
        raise ValueError("the ranker's engagement rows need both labels (engaged 0 and 1); check the negative "
                         "sampling flags")
    model = build_ranker(features, config, retrieval, rating_baseline, stack_stats)
    history = model.fit(_dataset(ex, config.batch_size, config.seed), epochs=config.epochs,
                        validation_data=_dataset(validation, 4 * config.batch_size, None) if validation else None,
                        verbose=2 if config.progress else 0)
    info = {
        "examples": len(ex), "engagement_examples": int(trains_e.sum()),
        "engaged": int(ex.engaged[trains_e].sum()), "rated": int((ex.quality_mask > 0).sum()),
        "retrieval_fusion": model.affinity is not None,
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


def predict_logits(model: WideDeepRanker, inputs: Mapping[str, np.ndarray],
                   batch_size: int = 8192) -> dict[str, np.ndarray]:
    """The in-memory model's head logits before fusion and calibration, in batches:
    {"engagement": [n], "quality": [n], "affinity": [n], "quality_offset": [n], "stack_extra": [n, 7]}
    float64 (affinity: the retriever's score s of each pair, 0 without a retrieval model;
    quality_offset: the bias baseline's logit inside "quality", 0 without one; stack_extra: the
    stacked engagement model's graph features, ranking.stacking.EXTRA_FEATURES, 0 without them)."""
    from ranking.stacking import EXTRA_FEATURES

    n = len(next(iter(inputs.values())))
    # Eager, not traced: autograph converting `logits` also converts the (tf_keras) layers it calls,
    # which failed on the MovieLens two-tower inside RetrievalAffinity; this runs once per training.
    fn = functools.partial(model.logits, training=False)
    outs: dict[str, list[np.ndarray]] = {"engagement": [], "quality": [], "affinity": [], "quality_offset": [],
                                         "stack_extra": []}
    for lo in range(0, n, batch_size):
        batch = {k: (tf.constant(v[lo:lo + batch_size].astype(str)) if v.dtype == object else
                     tf.constant(v[lo:lo + batch_size])) for k, v in inputs.items()}
        res = fn(batch)
        for key in outs:
            value = res.get(key)
            shape = (min(batch_size, n - lo), len(EXTRA_FEATURES)) if key == "stack_extra" else (min(batch_size, n - lo),)
            outs[key].append(np.zeros(shape) if value is None else np.asarray(value, dtype=np.float64).reshape(shape))
    return {k: np.concatenate(v) if v else np.zeros((0, len(EXTRA_FEATURES)) if k == "stack_extra" else 0)
            for k, v in outs.items()}


def _graph_call(model: keras.Model):
    """model.call traced as one tf.function (cached on the model): the same graph the
    SavedModel signature runs, so in-memory and exported scores are bit-identical."""
    fn = _GRAPH_CALLS.get(model)
    if fn is None:
        fn = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
        _GRAPH_CALLS[model] = fn
    return fn


# Traced calls per live model (a cache, not state: dropping it changes nothing but speed).
_GRAPH_CALLS: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


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


__all__: Sequence[str] = ("Examples", "make_examples", "training_rows", "train_ranker", "predict", "predict_logits",
                          "head_metrics",
                          "evaluation_rows", "diagnose")
