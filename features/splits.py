"""Train / validation / test splits: temporal by default, never leaking test into train.

Definitions (ties in time are broken by the row's position in the source, so a split is
a pure function of the data and config):

* `user_temporal`: for each user, rows are sorted by time; the last
  ceil(test_fraction · n) rows are test. Of the remaining rows, the last
  ceil(val_fraction · n_remaining) are validation. Users with fewer than
  `min_user_interactions` rows stay wholly in train.
* `global_time`: rows with timestamp < cutoff are train, the rest test; the cut-off is
  `cutoff_timestamp` or, if 0, the (1 - test_fraction) quantile of timestamps. Validation
  is the last val_fraction of train by time (same rule, applied to train's rows).
* `user_random`: per-user stratified random split (Microsoft Recommenders'
  `python_stratified_split` protocol, 75/25), only for comparing with published numbers.

`train` is everything before test (it includes validation); `fit` is train minus
validation. Models select hyper-parameters (epochs) by training on `fit` and scoring
`validation`; the evaluation protocol then scores `test` with `train` items excluded.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pandas as pd

from core.errors import DataError

SplitStrategy = Literal["user_temporal", "global_time", "user_random"]


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How to split. See the module docstring for the exact rules."""

    strategy: SplitStrategy = "user_temporal"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    cutoff_timestamp: int = 0
    min_user_interactions: int = 3
    seed: int = 42  # only used by user_random


@dataclasses.dataclass
class Split:
    """The three disjoint parts of one dataset's interactions."""

    train: pd.DataFrame       # everything before test (= fit ∪ validation)
    validation: pd.DataFrame  # the tail of train, for model selection
    test: pd.DataFrame
    config: SplitConfig

    @property
    def fit(self) -> pd.DataFrame:
        """Train minus validation: what a model trains on while validation picks its epochs."""
        return self.train.loc[~self.train.index.isin(self.validation.index)]

    def stats(self) -> dict:
        def part(df: pd.DataFrame) -> dict:
            return {"rows": int(len(df)), "engaged": int(df["engaged"].sum()), "users": int(df["user_id"].nunique()),
                    "items": int(df["item_id"].nunique()),
                    "timestamp_min": int(df["timestamp"].min()) if len(df) else None,
                    "timestamp_max": int(df["timestamp"].max()) if len(df) else None}
        test_items = set(self.test["item_id"])
        cold = len(test_items - set(self.train["item_id"]))
        return {"config": dataclasses.asdict(self.config), "train": part(self.train), "validation": part(self.validation),
                "test": part(self.test), "test_items_unseen_in_train": cold,
                "test_users_unseen_in_train": len(set(self.test["user_id"]) - set(self.train["user_id"]))}


def split_interactions(interactions: pd.DataFrame, cfg: SplitConfig = SplitConfig()) -> Split:
    """Splits interactions (schema of features.schema) per `cfg`.

    The parts keep a 0..n-1 index into the input's row order, so they can be told apart.
    """
    if not 0.0 < cfg.test_fraction < 1.0:
        raise DataError(f"--test-fraction must be in (0, 1), got {cfg.test_fraction}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    df = interactions.reset_index(drop=True)
    if cfg.strategy == "user_temporal":
        train_mask = _user_tail_mask(df, cfg.test_fraction, cfg.min_user_interactions, by_time=True) == 0
    elif cfg.strategy == "global_time":
        cutoff = cfg.cutoff_timestamp or int(np.quantile(df["timestamp"].to_numpy(), 1.0 - cfg.test_fraction))
        train_mask = (df["timestamp"] < cutoff).to_numpy()
        if train_mask.all() or not train_mask.any():
            raise DataError(f"--cutoff-timestamp {cutoff} leaves an empty train or test part")
    elif cfg.strategy == "user_random":
        train_mask = _user_tail_mask(df, cfg.test_fraction, cfg.min_user_interactions, by_time=False,
                                     rng=np.random.default_rng(cfg.seed)) == 0
    else:
        raise DataError(f"--strategy must be one of user_temporal, global_time, user_random; got {cfg.strategy!r}")
    train = df.loc[train_mask]
    test = df.loc[~train_mask]
    if cfg.val_fraction > 0:
        if cfg.strategy == "global_time":
            vcut = int(np.quantile(train["timestamp"].to_numpy(), 1.0 - cfg.val_fraction))
            validation = train.loc[train["timestamp"] >= vcut]
        else:
            rng = np.random.default_rng(cfg.seed + 1) if cfg.strategy == "user_random" else None
            vmask = _user_tail_mask(train, cfg.val_fraction, cfg.min_user_interactions, by_time=rng is None, rng=rng)
            validation = train.loc[vmask == 1]
    else:
        validation = train.iloc[:0]
    return Split(train=train, validation=validation, test=test, config=cfg)


def _user_tail_mask(df: pd.DataFrame, fraction: float, min_rows: int, by_time: bool,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """1 for each user's held-out rows (the last `fraction` by time, or a random `fraction`)."""
    n = len(df)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    users = pd.factorize(df["user_id"], sort=True)[0]
    pos = np.arange(n)
    key2 = df["timestamp"].to_numpy() if by_time else rng.random(n)
    order = np.lexsort((pos, key2, users))  # by user, then time (or random), then source order
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - starts[sorted_users]          # position within the user's history
    size = counts[sorted_users]
    held = np.ceil(fraction * size).astype(np.int64)
    out_sorted = ((rank >= size - held) & (size >= min_rows)).astype(np.int8)
    out = np.empty(n, dtype=np.int8)
    out[order] = out_sorted
    return out
