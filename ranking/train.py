"""Training the ranker: example rows per head, both heads fit at once, diagnostics.

Each example row carries labels and per-head loss weights:
  engagement head — label `engaged`, weight `w_engagement` (0 = the row does not train it);
  quality head — the normalised rating, weight `w_quality` × (a rating was observed), so
    rows without a rating (negatives, unrated engagements) never train quality.

Where the engagement rows come from (NegativeConfig.source, see `training_rows`):
  window (auto's choice with a retriever and a validation carve) — the serving
    distribution one time window earlier: a WindowRetriever that knows only `split.fit`
    (a two-tower trained without the validation window) retrieves each window user's
    top-N; label = engaged in the window; on data with impressions also the window's
    logged shown-but-not-engaged rows outside the list. Rows carry the candidate context
    (ranking.context) and the user's fit items as history; a seeded share of the window
    users is held out (early stopping, calibration, blend selection: workflows.train);
  impressions — the log's shown-but-not-engaged rows (no context);
  sampled — every train engagement against negatives sampled per positive, half from the
    serving retriever's top-N and half by popularity (no context; the pre-issue-12 default).
"""
from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from core.tf_env import keras, set_seed, tf
from features import MULTI_VALUE_SEP, FeatureStore, Split, SplitConfig
from ranking.context import CONTEXT_PREFIX, CandidateContext, neutral_context
from ranking.model import (
    HEADS,
    RankerConfig,
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


def make_examples(rows: pd.DataFrame, features: FeatureStore, history_length: int = 0, context: bool = False,
                  rating_scale: tuple[float, float] = (1.0, 5.0)) -> Examples:
    """Looks up the raw features of every (user, item) row and derives labels and weights.

    The user's history is the row's `history` column when present (training rows built
    as of an earlier time), else FeatureStore.history with the row's own item left out
    (model.user_inputs), as it is for every served candidate. With `context`, the rows'
    CONTEXT_PREFIX columns (ranking.context) are inputs too; rows without them (quality
    rows) get zeros, which only the engagement head reads.
    """
    rows = rows.reset_index(drop=True)
    users, items = rows["user_id"].to_numpy(), rows["item_id"].to_numpy()
    if history_length > 0 and "history" in rows.columns:
        user = user_inputs(features, users, 0)
        user["history"] = np.array([_truncate(h, history_length) for h in rows["history"]], dtype=object)
    else:
        user = user_inputs(features, users, history_length, leave_out=items)
    inputs = ranker_inputs(user, features.item_features(items))
    if context:
        ctx = neutral_context(len(rows))
        for k in ctx:
            if k in rows.columns:
                ctx[k] = np.nan_to_num(rows[k].to_numpy(np.float32))
        inputs.update(ctx)
    rating = rows["rating"].to_numpy(dtype=np.float64)
    observed = np.isfinite(rating) & (rows["engaged"].to_numpy() == 1)
    quality = np.where(observed, np.clip(normalize_rating(np.where(observed, rating, rating_scale[0]), rating_scale),
                                         0.0, 1.0), 0.0)
    w_e = rows["w_engagement"].to_numpy(np.float32) if "w_engagement" in rows.columns else np.ones(len(rows), np.float32)
    w_q = rows["w_quality"].to_numpy(np.float32) if "w_quality" in rows.columns else np.ones(len(rows), np.float32)
    return Examples(rows, inputs, rows["engaged"].to_numpy().astype(np.float32), quality.astype(np.float32),
                    w_e, (observed * w_q).astype(np.float32))


def _truncate(history: str, length: int) -> str:
    parts = [p for p in str(history).split(MULTI_VALUE_SEP) if p] if isinstance(history, str) else []
    return MULTI_VALUE_SEP.join(parts[-length:])


def training_rows(split: Split | pd.DataFrame, features: FeatureStore, neg: NegativeConfig, history_length: int = 0,
                  candidates: CandidateGenerator | WindowRetriever | None = None, holdout_share: float = 0.2,
                  seed: int = 42) -> pd.DataFrame:
    """The ranker's example rows for `split` (see the module docstring for the sources).

    Args:
      split: a Split, of which the train part (and its fit/validation carve) is all that
        is read; or a bare training log (interactions schema), read as a train part with
        no validation carve — so "auto" means impressions, else sampled, never window.
      features: fit on split.train (vocabularies, popularity, seen items).
      neg: where engagement negatives come from.
      history_length: the ranker's history feature length (0 = none).
      candidates: for "window", a WindowRetriever trained WITHOUT split.validation (else the
        window's positives leak into which items are retrieved); for "sampled", the
        serving retriever's CandidateGenerator. None = popularity-sampled negatives instead.
      holdout_share, seed: for "window", the share of window users held out for calibration.

    Returns:
      Interactions-schema rows plus `history` (the user's items as of the row, joined
      with MULTI_VALUE_SEP), `w_engagement` and `w_quality`.
    """
    split = as_train_split(split)
    train = split.train
    source = resolve_negative_source(split, neg, have_retriever=isinstance(candidates, WindowRetriever))
    if source == "impressions":
        log.info("ranker negatives: %d logged shown-not-engaged impressions", int((train["engaged"] == 0).sum()))
        rows = train.reset_index(drop=True).assign(w_engagement=1.0, w_quality=1.0)
        return _with_history(rows, train, history_length)
    if source == "sampled":
        positives = train.loc[train["engaged"] == 1]
        negatives = sample_negatives(positives, features.catalogue, features.item_counts, neg, candidates)
        rows = pd.concat([positives, negatives], ignore_index=True).assign(w_engagement=1.0, w_quality=1.0)
        return _with_history(rows, train, history_length)
    return _window_rows(split, features, neg, history_length, candidates, holdout_share, seed)


def as_train_split(data: Split | pd.DataFrame) -> Split:
    """`data` itself if a Split, else a Split whose train part is the log `data` (no validation, no test)."""
    if isinstance(data, Split):
        return data
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"training_rows takes a Split or an interactions DataFrame, got {type(data).__name__}")
    empty = data.iloc[:0]
    return Split(train=data, validation=empty, test=empty, config=SplitConfig(val_fraction=0.0))


def resolve_negative_source(split: Split, neg: NegativeConfig, have_retriever: bool = False) -> str:
    """The concrete source "auto" stands for: window (serving-shaped) when there is a retriever and a
    validation carve with engagements, else impressions if logged, else sampled."""
    if neg.source == "auto":
        if have_retriever and (split.validation["engaged"] == 1).any():
            return "window"
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


@dataclasses.dataclass
class WindowRetriever:
    """A retriever trained WITHOUT split.validation, for serving-shaped window examples.

    Attributes:
      search: user_ids [b] → (item ids [b, N] object, "" padded; scores [b, N]): each user's
        top-N with their fit items excluded, best first — what serving would have retrieved
        just before the window.
      pair_scores: (user_ids [n], item_ids [n]) → [n] the retriever's score of each pair
        (for logged impressions outside the top-N).
      context: CandidateContext of this retriever's item vectors and stats fit on split.fit.
    """

    search: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
    pair_scores: Callable[[Sequence[str], Sequence[str]], np.ndarray]
    context: CandidateContext


def holdout_users(users: Sequence[str], share: float, seed: int) -> set[str]:
    """A seeded random `share` of `users` (at least one, at most all but one when there are two or more)."""
    users = sorted(set(map(str, users)))
    if not users:
        return set()
    n = min(max(1, int(round(share * len(users)))), max(1, len(users) - 1))
    rng = np.random.default_rng(seed)
    return set(np.asarray(users, dtype=object)[rng.permutation(len(users))[:n]])


def _window_rows(split: Split, features: FeatureStore, neg: NegativeConfig, history_length: int,
                 retriever: WindowRetriever | None, holdout_share: float = 0.2, seed: int = 42) -> pd.DataFrame:
    """Serving-shaped engagement rows from the validation window, plus quality rows from train.

    For each user with a validation-window engagement: the retriever's top-N (it never saw
    the window), label = engaged in the window; on data with impressions also the window's
    logged shown-but-not-engaged rows outside that list (rank = N). Each row carries the
    context features (ranking.context) computed as of the end of split.fit, and its
    history is the user's fit items. A seeded `holdout_share` of those users is held out
    (`holdout` = True, w_engagement = 0): calibration and blend selection use them only.
    """
    fit, window = split.fit, split.validation
    fit_engaged = fit.loc[fit["engaged"] == 1].sort_values("timestamp", kind="stable")
    fit_seen = {u: tuple(g) for u, g in fit_engaged.drop_duplicates(["user_id", "item_id"], keep="last")
                .groupby("user_id", sort=False)["item_id"]}
    pos = window.loc[window["engaged"] == 1].drop_duplicates(["user_id", "item_id"], keep="last")
    users = sorted(pos["user_id"].unique())
    positives = {u: dict(zip(g["item_id"], zip(g["rating"], g["timestamp"]))) for u, g in pos.groupby("user_id")}
    shown = window.loc[window["engaged"] == 0].drop_duplicates(["user_id", "item_id"], keep="last")
    engaged_window = set(zip(pos["user_id"], pos["item_id"]))
    shown = shown.loc[[(u, i) not in engaged_window for u, i in zip(shown["user_id"], shown["item_id"])]]
    shown_by_user = {u: dict(zip(g["item_id"], g["timestamp"])) for u, g in shown.groupby("user_id")}
    if retriever is None:
        raise ValueError("window examples need a retriever trained on split.fit (a version with a retrieval stage)")
    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "timestamp", "rating", "engaged",
                                             "retrieval_score", "retrieval_rank")}
    retrieved = 0
    for lo in range(0, len(users), neg.batch_users):
        batch = users[lo:lo + neg.batch_users]
        ids, scores = retriever.search(batch)
        if len(ids) != len(batch):
            raise ValueError(f"window retriever returned {len(ids)} lists for {len(batch)} users")
        extra_u, extra_i, extra_t = [], [], []
        for u, row_ids, row_scores in zip(batch, ids, scores):
            seen = set(fit_seen.get(u, ()))
            got = positives[u]
            t_default = min(t for _, t in got.values())
            listed = set()
            for rank, (item, score) in enumerate(zip(row_ids, row_scores)):
                item = str(item)
                if not item or item in seen:
                    continue
                listed.add(item)
                hit = got.get(item)
                cols["user_id"].append(u)
                cols["item_id"].append(item)
                cols["rating"].append(hit[0] if hit else np.nan)
                cols["timestamp"].append(hit[1] if hit else t_default)
                cols["engaged"].append(1 if hit else 0)
                cols["retrieval_score"].append(float(score))
                cols["retrieval_rank"].append(rank)
                retrieved += hit is not None
            for item, t in shown_by_user.get(u, {}).items():
                if item not in listed and item not in seen:
                    extra_u.append(u)
                    extra_i.append(str(item))
                    extra_t.append(t)
        if extra_u:
            sc = retriever.pair_scores(extra_u, extra_i)
            cols["user_id"].extend(extra_u)
            cols["item_id"].extend(extra_i)
            cols["timestamp"].extend(extra_t)
            cols["rating"].extend([np.nan] * len(extra_u))
            cols["engaged"].extend([0] * len(extra_u))
            cols["retrieval_score"].extend(float(x) for x in sc)
            cols["retrieval_rank"].extend([-1] * len(extra_u))
    cand = pd.DataFrame({"user_id": np.asarray(cols["user_id"], dtype=object),
                         "item_id": np.asarray(cols["item_id"], dtype=object),
                         "timestamp": np.asarray(cols["timestamp"], dtype=np.int64),
                         "rating": np.asarray(cols["rating"], dtype=np.float64),
                         "engaged": np.asarray(cols["engaged"], dtype=np.int8)})
    order_users = list(dict.fromkeys(cand["user_id"]))
    hists = [fit_seen.get(u, ()) for u in order_users]
    owner = pd.Index(order_users).get_indexer(cand["user_id"]) if len(cand) else np.zeros(0, np.int64)
    ctx = retriever.context.features(hists, np.array([len(h) for h in hists]), owner, cand["item_id"].to_numpy(),
                                     np.asarray(cols["retrieval_score"], np.float32),
                                     np.asarray(cols["retrieval_rank"], np.float64))
    cand = cand.assign(**ctx, retrieval_rank=np.asarray(cols["retrieval_rank"], dtype=np.int64))
    held = holdout_users(users, holdout_share, seed)
    is_held = cand["user_id"].isin(held).to_numpy()
    cand = cand.assign(w_engagement=np.where(is_held, 0.0, 1.0), w_quality=0.0, holdout=is_held)
    if history_length > 0:
        cand["history"] = [MULTI_VALUE_SEP.join(fit_seen.get(u, ())[-history_length:]) for u in cand["user_id"]]
    log.info("ranker window examples: %d users (%d held out), %d rows, %d engaged in the window and retrieved of "
             "%d window engagements, %d logged impressions outside the lists", len(users), len(held), len(cand),
             retrieved, len(pos), int((np.asarray(cols["retrieval_rank"]) < 0).sum()))
    # The quality head learns from every rated train engagement.
    train = split.train
    rated = train.loc[(train["engaged"] == 1) & train["rating"].notna()].reset_index(drop=True)
    quality = _with_history(rated.assign(w_engagement=0.0, w_quality=1.0, holdout=False), train, history_length)
    return pd.concat([cand, quality], ignore_index=True)


def _dataset(ex: Examples, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    x = {k: (tf.constant(v.astype(str)) if v.dtype == object else tf.constant(v)) for k, v in ex.inputs.items()}
    y = {"engagement": ex.engaged, "quality": ex.quality}
    w = {"engagement": ex.engagement_mask, "quality": ex.quality_mask}
    ds = tf.data.Dataset.from_tensor_slices((x, y, w))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(ex), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(2)


def train_ranker(rows: pd.DataFrame, features: FeatureStore, config: RankerConfig = RankerConfig(),
                 validation: Examples | None = None, rating_scale: tuple[float, float] = (1.0, 5.0)
                 ) -> tuple[WideDeepRanker, dict]:
    """Trains a fresh ranker on `rows` (training_rows output: engaged and non-engaged rows).

    With config.context, the rows must carry the context columns (window rows); rows
    without them train a ranker without context inputs (config.context set False, logged).

    Returns:
      (model, info): info holds the per-epoch Keras history, example counts and seconds.
    """
    set_seed(config.seed)
    started = time.perf_counter()
    if config.context and not any(c.startswith(CONTEXT_PREFIX) for c in rows.columns):
        log.warning("ranker: these training rows carry no candidate context (not window rows); training without it")
        config = dataclasses.replace(config, context=False)
    ex = make_examples(rows, features, config.history_length, config.context, rating_scale)
    if len(ex) == 0:
        raise ValueError("no training rows for the ranker")
    trains_e = ex.engagement_mask > 0
    if not trains_e.any() or ex.engaged[trains_e].min() == ex.engaged[trains_e].max():
        raise ValueError("the ranker's engagement rows need both labels (engaged 0 and 1); check the negative "
                         "sampling flags")
    stats = None
    if config.context:
        stats = {k: (float(np.mean(v[trains_e])), float(np.std(v[trains_e]))) for k, v in ex.inputs.items()
                 if k.startswith(CONTEXT_PREFIX)}
    model = build_ranker(features, config, stats)
    # Window rows: the held-out users' candidates pick the epoch count (best engagement loss on
    # them, weights restored) — per run, on validation; never a dataset constant.
    callbacks = []
    if validation is None and "holdout" in rows.columns and config.context:
        held = rows.loc[rows["holdout"].fillna(False).astype(bool)]
        if len(held) and held["engaged"].nunique() == 2:
            validation = make_examples(held.assign(w_engagement=1.0, w_quality=0.0), features, config.history_length,
                                       config.context, rating_scale)
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_engagement_loss", patience=1,
                                                           restore_best_weights=True))
    history = model.fit(_dataset(ex, config.batch_size, config.seed), epochs=config.epochs,
                        validation_data=_dataset(validation, 4 * config.batch_size, None) if validation else None,
                        callbacks=callbacks, verbose=2 if config.progress else 0)
    quality_epochs = 0
    stopped = len(history.history.get("loss", []))
    best = (int(np.argmin(history.history["val_engagement_loss"])) + 1 if "val_engagement_loss" in history.history
            else stopped)
    if callbacks and best < config.epochs and (ex.quality_mask > 0).any() and config.quality_weight > 0:
        # The engagement side stopped early; the quality head (which the held-out loss does not
        # see) trains its remaining epochs alone: every other layer frozen, quality rows only.
        quality_epochs = config.epochs - best
        for layer in model._flatten_layers(include_self=False, recursive=False):
            layer.trainable = layer is model.towers["quality"]
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss={"engagement": keras.losses.BinaryCrossentropy(), "quality": keras.losses.MeanSquaredError()},
                      loss_weights={"engagement": 0.0, "quality": 1.0})
        q_rows = ex.quality_mask > 0
        q_ex = Examples(ex.rows.loc[q_rows].reset_index(drop=True), {k: v[q_rows] for k, v in ex.inputs.items()},
                        ex.engaged[q_rows], ex.quality[q_rows], np.zeros(int(q_rows.sum()), np.float32),
                        ex.quality_mask[q_rows])
        q_hist = model.fit(_dataset(q_ex, config.batch_size, config.seed + 1), epochs=quality_epochs,
                           verbose=2 if config.progress else 0)
        history.history["quality_only_loss"] = q_hist.history.get("quality_loss", [])
        for layer in model._flatten_layers(include_self=False, recursive=False):
            layer.trainable = True
    info = {
        "examples": len(ex), "engagement_examples": int(trains_e.sum()),
        "quality_only_epochs": quality_epochs,
        "engaged": int(ex.engaged[trains_e].sum()), "rated": int((ex.quality_mask > 0).sum()),
        "context": bool(config.context), "context_stats": stats or {},
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "epochs_selected": best,
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
    context = config.get("context", False) if isinstance(config, dict) else config.context
    ex = make_examples(rows, features, history_length, context)
    if hasattr(model_or_scorer, "score_inputs"):
        e, q = model_or_scorer.score_inputs(ex.inputs)
    else:
        e, q = predict(model_or_scorer, ex.inputs)
    rating = np.where(ex.quality_mask > 0, rows.reset_index(drop=True)["rating"].to_numpy(dtype=np.float64), np.nan)
    return head_metrics(e, ex.engaged, q, rating)


__all__: Sequence[str] = ("Examples", "WindowRetriever", "holdout_users", "make_examples", "training_rows",
                          "train_ranker", "predict", "head_metrics", "evaluation_rows", "diagnose")
