"""The offline protocol: full-catalogue top-k per test user, train items excluded.

Every model (baselines, two-tower through FAISS, the full pipeline) implements
`Recommender`; `EvalData` is built once per split so all of them are scored on exactly
the same users, catalogue and relevance judgements.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features import Dataset, FeatureStore, Split


@dataclasses.dataclass
class EvalData:
    """One split, indexed for fast evaluation.

    Attributes:
      item_ids: [I] the catalogue (every recommendable item id); column j of every matrix.
      user_ids: [U] every user in train or test; row u of every matrix.
      train: [U, I] CSR, 1 where the user engaged with the item in train (= the items
        excluded from that user's ranking).
      test_gain: [U, I] CSR graded gains of the test split: the rating where observed,
        else 1, for engaged test rows (non-engaged impressions are not relevant).
      test_binary: [U, I] CSR, 1 where test_gain > 0.
      test_users: [n] rows of users with at least one relevant test item, ascending; the
        users every metric averages over.
    """

    dataset: Dataset
    split: Split
    features: FeatureStore
    item_ids: np.ndarray
    user_ids: np.ndarray
    train: sp.csr_matrix
    test_gain: sp.csr_matrix
    test_binary: sp.csr_matrix
    test_users: np.ndarray

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def build_eval_data(dataset: Dataset, split: Split, features: FeatureStore) -> EvalData:
    """Indexes `split` against the catalogue of `features` (fit on train only)."""
    item_ids = np.asarray(features.catalogue, dtype=object)
    item_index = pd.Index(item_ids)
    user_ids = np.asarray(sorted(set(split.train["user_id"]) | set(split.test["user_id"])), dtype=object)
    user_index = pd.Index(user_ids)

    def matrix(df: pd.DataFrame, values: np.ndarray) -> sp.csr_matrix:
        rows = user_index.get_indexer(df["user_id"])
        cols = item_index.get_indexer(df["item_id"])
        keep = cols >= 0  # items outside the catalogue cannot be recommended by anyone
        m = sp.coo_matrix((values[keep], (rows[keep], cols[keep])), shape=(len(user_ids), len(item_ids))).tocsr()
        m.sum_duplicates()
        return m

    tr = split.train.loc[split.train["engaged"] == 1]
    train = matrix(tr, np.ones(len(tr)))
    train.data[:] = 1.0
    te = split.test.loc[split.test["engaged"] == 1].drop_duplicates(["user_id", "item_id"], keep="last")
    gain = te["rating"].fillna(1.0).to_numpy(dtype=np.float64)
    test_gain = matrix(te, gain)
    test_binary = test_gain.copy()
    test_binary.data = (test_binary.data > 0).astype(np.float64)
    test_users = np.flatnonzero(np.diff(test_binary.indptr) > 0)
    return EvalData(dataset, split, features, item_ids, user_ids, train, test_gain, test_binary, test_users)


class Recommender(Protocol):
    """A model the protocol can score. `name` labels its row in the report."""

    name: str

    def fit(self, data: EvalData) -> None:
        """Trains on `data.train` (or `data.split`) only; never reads test."""

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        """[len(user_rows), k] catalogue column indices, best first, excluding each user's
        train items; -1 pads rows with fewer than k candidates."""


def top_k_excluding(scores: np.ndarray, exclude: sp.spmatrix | sp.sparray, k: int) -> np.ndarray:
    """Top-k columns of `scores` [b, I] after removing `exclude` [b, I] nonzeros.

    This is where a model's scores become a ranking, so it is where ties are decided:
    equal scores are ordered by lower column index (a stable, documented order), so
    results are reproducible across runs, batch sizes and platforms. Non-finite scores
    (NaN, ±inf) mean "not a candidate" and are never returned, like excluded columns.

    Args:
      scores: [b, I] higher is better.
      exclude: [b, I] sparse; nonzero (row, column) pairs are never returned.
      k: how many columns to return per row, >= 0.

    Returns:
      [b, k] int64 column indices, best first; rows with fewer than k candidates are
      padded with -1 at the end.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [users, items], got shape {scores.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    b, n = scores.shape
    if exclude.shape != scores.shape:
        raise ValueError(f"exclude has shape {exclude.shape}, scores {scores.shape}; they must match")
    scores[~np.isfinite(scores)] = -np.inf
    coo = sp.coo_matrix(exclude)
    scores[coo.row, coo.col] = -np.inf
    k_eff = min(k, n)
    out = np.full((b, k), -1, dtype=np.int64)
    if b == 0 or k_eff == 0:
        return out
    # The k-th best score per row; everything strictly above it is in, and the ties at
    # it are filled in by ascending column until the row holds k_eff columns.
    kth = -np.partition(-scores, k_eff - 1, axis=1)[:, k_eff - 1]
    chosen = scores > kth[:, None]
    need = k_eff - chosen.sum(axis=1)
    tie_r, tie_c = np.nonzero((scores == kth[:, None]) & np.isfinite(kth)[:, None])  # row-major: ascending column
    keep = _rank_within_rows(tie_r, b) < need[tie_r]
    chosen[tie_r[keep], tie_c[keep]] = True
    rows, cols = np.nonzero(chosen)
    pos = _rank_within_rows(rows, b)
    top_cols = np.full((b, k_eff), -1, dtype=np.int64)
    top_scores = np.full((b, k_eff), -np.inf)
    top_cols[rows, pos] = cols
    top_scores[rows, pos] = scores[rows, cols]
    # Columns are ascending within each row, so a stable sort by score keeps ties by column;
    # empty slots (-inf) sort last.
    order = np.argsort(-top_scores, axis=1, kind="stable")
    out[:, :k_eff] = np.take_along_axis(top_cols, order, axis=1)
    return out


def _rank_within_rows(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """For row indices sorted ascending, each entry's 0-based position within its row."""
    counts = np.bincount(rows, minlength=num_rows)
    starts = np.cumsum(counts) - counts
    return np.arange(len(rows)) - starts[rows]
