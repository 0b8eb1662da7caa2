"""Trains the two-tower model: epochs chosen on the validation carve, then (by default) a refit on train.

Protocol: train on `split.fit` and score `split.validation` after every epoch (full
catalogue, the user's fit items excluded); stop after `patience` epochs without
improvement of `config.monitor`. With `config.refit` a fresh model is then trained on all
of `split.train` for the best epoch count (the validation rows are each user's most recent
train history, which matters most for a temporal test); otherwise the best epoch's weights
are kept.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.tf_data import indexed_batches
from core.tf_env import keras, set_seed, tf
from features import FeatureStore, Split
from retrieval.two_tower import HISTORY, TwoTowerConfig, TwoTowerModel, embed_in_batches, history_strings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """A trained model and how it was chosen.

    Attributes:
      model: the final model (refit on train, or the best epoch on fit).
      history: one dict per selection epoch: loss, val_recall_at_100, val_ndcg_at_10.
      best_epoch: 1-based epoch with the best validation `config.monitor` (0 if no validation).
      epochs_run: epochs of the selection run; final_epochs: epochs of the final model.
      validation: the validation metrics at best_epoch.
      trained_on: "train" (refit) or "fit" (best selection weights kept).
    """

    model: TwoTowerModel
    config: TwoTowerConfig
    history: list[dict]
    best_epoch: int
    epochs_run: int
    final_epochs: int
    validation: dict
    trained_on: str
    training_seconds: float

    def summary(self) -> dict:
        """The manifest's view of the run."""
        return {"best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "final_epochs": self.final_epochs,
                "trained_on": self.trained_on, "validation": self.validation, "history": self.history,
                "training_seconds": round(self.training_seconds, 2)}


def engaged_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """The positives the retrieval model learns from: engaged rows only, in time order
    (stable, so ties keep their source order, like FeatureStore.seen)."""
    return df.loc[df["engaged"] == 1, ["user_id", "item_id", "timestamp"]].sort_values("timestamp", kind="stable")


def causal_histories(pairs: pd.DataFrame, length: int) -> np.ndarray:
    """[len(pairs)] for each engaged pair, the user's previous `length` items ("|"-joined,
    oldest first) — never the pair's own item or a later one, so training sees what
    serving will: the history before the moment of the recommendation."""
    n = len(pairs)
    out = np.empty(n, dtype=object)
    if n == 0:
        return out
    # Vectorised over users (one pass over the rows, not one pandas selection per user): rows grouped
    # by user in their original order; each row's history is the slice of its group before it.
    codes = pd.factorize(pairs["user_id"].to_numpy())[0]
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    pos = np.arange(n)
    lo = np.maximum(group_start, pos - length).tolist()
    items = pairs["item_id"].to_numpy()[order].astype(str).tolist()
    out[order] = history_strings(items[a:b] for a, b in zip(lo, pos.tolist()))
    return out


def last_items(seen: pd.DataFrame, user_ids: Sequence[str], length: int) -> np.ndarray:
    """[len(user_ids)] each user's last `length` engaged items of `seen` ("|"-joined, oldest first)."""
    pairs = engaged_pairs(seen) if "engaged" in seen.columns else seen
    pairs = pairs.drop_duplicates(["user_id", "item_id"], keep="last")
    by_user = pairs.groupby("user_id", sort=False)["item_id"].agg(lambda s: tuple(s)[-length:])
    return history_strings(by_user.get(u, ()) for u in user_ids)


def make_dataset(features: FeatureStore, pairs: pd.DataFrame, config: TwoTowerConfig,
                 counts_from: pd.DataFrame | None = None) -> tf.data.Dataset:
    """A shuffled, batched tf.data pipeline of {"user", "item", "log_q"} dicts.

    log_q is log(count(item) / total) over `counts_from` (default `pairs`): the probability
    that the item is a batch's candidate, for logQ correction.
    """
    if len(pairs) == 0:
        raise ValueError("no engaged interactions to train the two-tower model on")
    source = pairs if counts_from is None else counts_from
    counts = source["item_id"].value_counts()
    q = pairs["item_id"].map(counts).fillna(1).to_numpy(dtype=np.float64) / max(1, int(counts.sum()))
    users = features.user_features(pairs["user_id"].to_numpy())
    if config.history_length:
        users[HISTORY] = causal_histories(pairs, config.history_length)
    users = {k: _tf_values(v) for k, v in users.items()}
    items = {k: _tf_values(v) for k, v in features.item_features(pairs["item_id"].to_numpy()).items()}
    return indexed_batches({"user": users, "item": items, "log_q": np.log(q).astype(np.float32)},
                           config.batch_size, seed=config.seed)


def _tf_values(v: np.ndarray) -> np.ndarray:
    return v if v.dtype == object else v.astype(np.float32)  # strings: indexed_batches encodes them once


# The metrics of a held-out ranking, injected: evaluation (a layer above retrieval) owns their
# definitions, retrieval owns the model that produces the scores. Called as
#   validator(scores [n, I] float (a ScoreRows: slice it by users), exclude [n, I] sparse, relevance [n, I] CSR)
# with exclude = each user's earlier engaged items (never ranked) and relevance = the held-out
# engaged items (binary gain); returns {"recall_at_100": ..., "ndcg_at_10": ...} (the keys
# TwoTowerConfig.monitor names). `evaluation.retrieval_validator()` builds the one `recsys train` uses.
Validator = Callable[[np.ndarray, sp.csr_matrix, sp.csr_matrix], dict]


class RetrievalEvaluator:
    """Scores a model on held-out pairs: full catalogue, each user's `seen` items excluded.

    The model's scores are computed here; the metrics are `validator`'s (see `Validator`).

    With `max_users` > 0 and more held-out users than that, a seeded sample of `max_users` of them
    (`seed`) is scored instead: the work is users × catalogue, which grows with both at scale.

    Attributes:
      user_ids: [n] the users with engaged held-out rows (or the sample of them), sorted.
      held_out_users: how many users had engaged held-out rows (before sampling).
      exclude: [n, I] CSR, 1 at each user's engaged `seen` items (columns of features.catalogue).
      relevance: [n, I] CSR, 1 at each user's engaged held-out items in the catalogue.
    """

    def __init__(self, features: FeatureStore, seen: pd.DataFrame, heldout: pd.DataFrame, history_length: int,
                 validator: Validator, max_users: int = 0, seed: int = 0) -> None:
        self.features = features
        self.validator = validator
        self.catalogue = np.asarray(features.catalogue, dtype=object)
        col = pd.Index(self.catalogue)
        heldout = engaged_pairs(heldout)
        self.user_ids = np.asarray(sorted(heldout["user_id"].unique()), dtype=object)
        self.held_out_users = len(self.user_ids)
        if 0 < max_users < len(self.user_ids):  # a seeded sample: scoring is users × catalogue
            keep = np.random.default_rng(seed).choice(len(self.user_ids), max_users, replace=False)
            self.user_ids = self.user_ids[np.sort(keep)]
            heldout = heldout.loc[heldout["user_id"].isin(pd.Index(self.user_ids))]
        row = pd.Index(self.user_ids)
        seen = engaged_pairs(seen)
        seen = seen.loc[seen["user_id"].isin(row)]
        self.exclude = _binary_matrix(row.get_indexer(seen["user_id"]), col.get_indexer(seen["item_id"]),
                                      (len(row), len(col)))
        self.relevance = _binary_matrix(row.get_indexer(heldout["user_id"]), col.get_indexer(heldout["item_id"]),
                                        (len(row), len(col)))
        self.user_features = features.user_features(self.user_ids)
        if history_length:
            self.user_features[HISTORY] = last_items(seen, self.user_ids, history_length)
        self.item_features = features.item_features(self.catalogue)

    def scores(self, model: TwoTowerModel) -> ScoreRows:
        """[n, I] float32 inner products of every held-out user with every catalogue item, computed
        a block of users at a time when sliced (never [n, I] at once: 200k users × 50k items is 40 GB)."""
        items = embed_in_batches(model.item_tower, self.item_features)
        users = embed_in_batches(model.user_tower, self.user_features)
        return ScoreRows(users, items)

    def evaluate(self, model: TwoTowerModel) -> dict:
        return self.validator(self.scores(model), self.exclude, self.relevance)


class ScoreRows:
    """users @ items.T [n, I], computed on demand: `rows[lo:hi]` is the dense block of users lo..hi,
    `np.asarray(rows)` the whole matrix (small problems only). What a `Validator` receives as scores."""

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        self.users, self.items = np.asarray(users), np.asarray(items)
        self.shape = (len(self.users), len(self.items))
        self.dtype = np.result_type(self.users.dtype, self.items.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return self.users[rows] @ self.items.T

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.users @ self.items.T
        return out if dtype is None else out.astype(dtype)


def _binary_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """[shape] CSR with 1.0 at each (row, col) pair whose col >= 0 (items outside the catalogue are dropped)."""
    keep = cols >= 0
    m = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class _SelectEpochs(keras.callbacks.Callback):
    """Validation metrics each epoch into the Keras logs; early stopping keeping the best weights."""

    def __init__(self, evaluator: RetrievalEvaluator, monitor: str, patience: int) -> None:
        super().__init__()
        self.evaluator, self.monitor, self.patience = evaluator, monitor, patience
        self.history: list[dict] = []
        self.best, self.best_epoch, self.best_weights, self.best_metrics = -np.inf, 0, None, {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = self.evaluator.evaluate(self.model)
        if self.monitor not in metrics:
            raise ValueError(f"the validator returned {sorted(metrics)}, not the monitored {self.monitor!r}; build it "
                             "with evaluation.retrieval_validator() or pass a matching --retrieval-monitor")
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in metrics.items()})
        self.history.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)),
                             **{f"val_{k}": round(v, 6) for k, v in metrics.items()}})
        log.info("epoch %d: validation %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if metrics[self.monitor] > self.best:
            self.best, self.best_epoch, self.best_metrics = metrics[self.monitor], epoch + 1, metrics
            self.best_weights = self.model.get_weights()
        elif epoch + 1 - self.best_epoch >= max(1, self.patience):
            log.info("early stopping: no %s improvement for %d epochs (best %.4f at epoch %d)", self.monitor,
                     epoch + 1 - self.best_epoch, self.best, self.best_epoch)
            self.model.stop_training = True


def build_model(features: FeatureStore, config: TwoTowerConfig) -> TwoTowerModel:
    """A compiled, seeded, untrained model."""
    set_seed(config.seed)
    model = TwoTowerModel(features, config)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
    return model


def train_two_tower(features: FeatureStore, split: Split, config: TwoTowerConfig = TwoTowerConfig(),
                    validator: Validator | None = None,
                    init: Callable[[TwoTowerModel, FeatureStore], object] | None = None) -> TrainResult:
    """Selects the epoch count on split.fit → split.validation, then builds the final model.

    `validator` computes the validation metrics from the model's scores (see `Validator`;
    `evaluation.retrieval_validator()`); it is required when split.validation has engaged
    rows. With no validation rows, trains on split.train for config.epochs with no selection.
    """
    started = time.perf_counter()
    # A live progress bar on a terminal, one line per epoch in a log or a pipe.
    verbose = (1 if sys.stdout.isatty() else 2) if config.progress else 0
    history: list[dict] = []
    best_epoch, epochs_run, validation = 0, 0, {}
    have_validation = len(engaged_pairs(split.validation)) > 0
    if have_validation and validator is None:
        raise ValueError("train_two_tower needs a validator to select epochs on split.validation: pass "
                         "evaluation.retrieval_validator(), or a split without validation rows")
    model = None
    if have_validation:
        fit = engaged_pairs(split.fit)
        model = build_model(features, config)
        if init is not None:
            init(model, features)
        select = _SelectEpochs(RetrievalEvaluator(features, split.fit, split.validation, config.history_length,
                                                  validator, config.eval_max_users, config.seed),
                               config.monitor, config.patience)
        log.info("two-tower: selecting epochs on %d fit pairs, validating on %d users%s", len(fit),
                 len(select.evaluator.user_ids),
                 f" (a seeded sample of {select.evaluator.held_out_users}, --retrieval-eval-max-users)"
                 if len(select.evaluator.user_ids) < select.evaluator.held_out_users else "")
        model.fit(make_dataset(features, fit, config), epochs=config.epochs, callbacks=[select], verbose=verbose)
        history, best_epoch, epochs_run, validation = (select.history, select.best_epoch, len(select.history),
                                                       select.best_metrics)
        if select.best_weights is not None:
            model.set_weights(select.best_weights)
    if have_validation and not config.refit:
        final_epochs, trained_on = best_epoch, "fit"
    else:
        final_epochs = best_epoch if have_validation else config.epochs
        trained_on = "train"
        train = engaged_pairs(split.train)
        log.info("two-tower: training the final model on %d train pairs for %d epochs", len(train), final_epochs)
        model = build_model(features, config)
        if init is not None:
            init(model, features)
        model.fit(make_dataset(features, train, config), epochs=final_epochs, verbose=verbose)
    return TrainResult(model, config, history, best_epoch, epochs_run, final_epochs, validation, trained_on,
                       time.perf_counter() - started)
