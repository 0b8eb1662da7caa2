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

from evaluation.metrics import evaluate_ranked
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


@dataclasses.dataclass(frozen=True)
class RetrievalValidator:
    """The two-tower's epoch-selection metrics by this package's protocol and definitions.

    `retrieval.train_two_tower(features, split, config, validator)` calls it after every
    epoch with the model's scores of the validation users; retrieval cannot import
    evaluation (it sits below it), so the metrics are injected rather than re-implemented.

    Called as validator(scores, exclude, relevance):
      scores: [n, I] the model's score of every catalogue item per user, higher is better.
      exclude: [n, I] sparse; nonzero at each user's earlier (fit) items, which are never
        ranked (top_k_excluding; ties by lower column).
      relevance: [n, I] CSR; nonzero at the user's engaged held-out items (binary gain).

    Returns:
      {"recall_at_{k_recall}": mean Recall@k_recall, "ndcg_at_{k_ndcg}": mean binary NDCG@k_ndcg},
      as in `evaluate_ranked`: over the full catalogue, means over users with at least one
      relevant item; 0.0 when no user has one.
    """

    k_recall: int = 100
    k_ndcg: int = 10
    batch_users: int = 1024  # users ranked per top_k_excluding call (bounds its float64 copy)

    def __post_init__(self) -> None:
        if min(self.k_recall, self.k_ndcg, self.batch_users) < 1:
            raise ValueError(f"k_recall, k_ndcg and batch_users must be >= 1, got {self}")

    def __call__(self, scores: np.ndarray, exclude: sp.spmatrix | sp.sparray,
                 relevance: sp.csr_matrix) -> dict[str, float]:
        n, num_items = scores.shape
        k = max(self.k_recall, self.k_ndcg)
        exclude = sp.csr_matrix(exclude)
        ranked = np.full((n, k), -1, dtype=np.int64)
        for lo in range(0, n, self.batch_users):
            hi = min(n, lo + self.batch_users)
            ranked[lo:hi] = top_k_excluding(scores[lo:hi], exclude[lo:hi], k)
        m = evaluate_ranked(ranked, relevance, max(num_items, 1), ks=(self.k_recall, self.k_ndcg))

        def value(key: str) -> float:
            return 0.0 if np.isnan(m[key]) else float(m[key])

        return {f"recall_at_{self.k_recall}": value(f"recall@{self.k_recall}"),
                f"ndcg_at_{self.k_ndcg}": value(f"ndcg@{self.k_ndcg}")}


def retrieval_validator(k_recall: int = 100, k_ndcg: int = 10) -> RetrievalValidator:
    """The validator `retrieval.train_two_tower` selects epochs with (keys recall_at_100, ndcg_at_10)."""
    return RetrievalValidator(k_recall, k_ndcg)


def _rank_within_rows(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """For row indices sorted ascending, each entry's 0-based position within its row."""
    counts = np.bincount(rows, minlength=num_rows)
    starts = np.cumsum(counts) - counts
    return np.arange(len(rows)) - starts[rows]
