"""Candidate context: the per-(user, candidate) features the retriever lacks, one function for training and serving.

For each candidate of a user, given the retriever's score and rank of it:
  retrieval_score  — the retriever's inner-product score of the pair;
  retrieval_rank   — log(1 + its 0-based position in the retriever's top-N; N if outside it);
  retrieval_gap    — score minus the best score in the user's list (≤ 0 for listed items);
  retrieval_z      — (score − mean) / std over the user's listed candidates (0 if fewer than 2)
                     — the within-list view: pooled over users, the raw score says little;
  history_max_sim / history_mean_sim — max / mean cosine of the candidate's retriever item
                     embedding with those of the user's last `history_k` engaged items (0 without history);
  item_popularity  — log(1 + the item's engagements in the stats data);
  item_recent      — log(1 + its engagements among the most recent `recent_share` of them);
  item_trend       — log((recent + 1) / (recent_share · all + 1)): above 0 = rising;
  user_activity    — log(1 + the number of distinct items the user engaged with).
Training computes them with a retriever and stats fit before the labelled window
(CandidateContext fit on split.fit); serving with the served version's retriever and
stats fit on train. `features` is the one implementation both call. Pure numpy, no TF.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

CONTEXT_PREFIX = "c__"
CONTEXT_FEATURES: tuple[str, ...] = ("retrieval_score", "retrieval_rank", "retrieval_gap", "retrieval_z",
                                     "history_max_sim", "history_mean_sim",
                                     "item_popularity", "item_recent", "item_trend", "user_activity")
CONTEXT_FILE = "context.npz"


@dataclasses.dataclass
class CandidateContext:
    """What `features` needs: a retriever's item vectors and item popularity stats.

    Attributes:
      item_ids: [m] item ids.
      embeddings: [m, d] float32 item embeddings, unit-normalised (so dot = cosine).
      popularity / recent / trend: [m] float32 item statistics (see the module docstring).
      num_candidates: N, the retriever's list length (the rank given to items outside it).
      history_k: how many of the user's latest items the similarity features read.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    popularity: np.ndarray
    recent: np.ndarray
    trend: np.ndarray
    num_candidates: int
    history_k: int = 10

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids).astype(str)
        self._row = {item: r for r, item in enumerate(self.item_ids)}

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """[n] rows of `item_ids` in the tables; -1 for unknown items."""
        return np.fromiter((self._row.get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def features(self, histories: Sequence[Sequence[str]], activity: np.ndarray, owner: np.ndarray,
                 item_ids: Sequence[str], scores: np.ndarray, ranks: np.ndarray) -> dict[str, np.ndarray]:
        """The context features of n (user, candidate) rows.

        Args:
          histories: b users' engaged item ids, oldest first (only the last history_k are read).
          activity: [b] number of distinct items each user engaged with.
          owner: [n] index into the b users of each row.
          item_ids: [n] candidate ids.
          scores: [n] retriever scores of the pairs.
          ranks: [n] 0-based positions in the retriever's list (>= num_candidates or < 0 = not in it).

        Returns:
          CONTEXT_PREFIX + name → [n] float32, for every name in CONTEXT_FEATURES.
        """
        owner = np.asarray(owner, dtype=np.int64)
        n = len(owner)
        rows = self.rows(item_ids)
        known = rows >= 0
        safe = np.where(known, rows, 0)
        emb = np.where(known[:, None], self.embeddings[safe], 0.0).astype(np.float32)
        max_sim = np.zeros(n, np.float32)
        mean_sim = np.zeros(n, np.float32)
        gap = np.zeros(n, np.float64)
        zscore = np.zeros(n, np.float64)
        raw_ranks = np.asarray(ranks, dtype=np.float64)
        sc = np.nan_to_num(np.asarray(scores, dtype=np.float64), neginf=0.0, posinf=0.0)
        listed_all = (raw_ranks >= 0) & (raw_ranks < self.num_candidates)
        order = np.argsort(owner, kind="stable")
        bounds = np.flatnonzero(np.r_[True, owner[order][1:] != owner[order][:-1], True]) if n else np.zeros(1, int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            idx = order[lo:hi]
            listed = sc[idx][listed_all[idx]]
            if len(listed):
                gap[idx] = sc[idx] - listed.max()
                if len(listed) > 1 and listed.std() > 0:
                    zscore[idx] = (sc[idx] - listed.mean()) / listed.std()
            hist = list(histories[owner[idx[0]]])[-self.history_k:] if self.history_k > 0 else []
            h_rows = self.rows(hist)
            h_rows = h_rows[h_rows >= 0]
            if len(h_rows) == 0:
                continue
            sims = emb[idx] @ self.embeddings[h_rows].T  # [c, h]
            max_sim[idx] = sims.max(axis=1)
            mean_sim[idx] = sims.mean(axis=1)
        ranks = np.asarray(ranks, dtype=np.float64)
        ranks = np.where((ranks < 0) | (ranks >= self.num_candidates), self.num_candidates, ranks)
        act = np.asarray(activity, dtype=np.float64)
        out = {
            "retrieval_score": np.nan_to_num(np.asarray(scores, dtype=np.float32), neginf=0.0, posinf=0.0),
            "retrieval_rank": np.log1p(ranks),
            "retrieval_gap": gap,
            "retrieval_z": zscore,
            "history_max_sim": max_sim,
            "history_mean_sim": mean_sim,
            "item_popularity": np.where(known, self.popularity[safe], 0.0),
            "item_recent": np.where(known, self.recent[safe], 0.0),
            "item_trend": np.where(known, self.trend[safe], 0.0),
            "user_activity": np.log1p(act[owner]) if n else np.zeros(0),
        }
        return {CONTEXT_PREFIX + k: np.asarray(out[k], dtype=np.float32) for k in CONTEXT_FEATURES}

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(directory) / CONTEXT_FILE
        np.savez(path, item_ids=self.item_ids, embeddings=self.embeddings, popularity=self.popularity,
                 recent=self.recent, trend=self.trend,
                 meta=np.array(json.dumps({"num_candidates": self.num_candidates, "history_k": self.history_k})))
        return path

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> CandidateContext:
        with np.load(pathlib.Path(directory) / CONTEXT_FILE, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["item_ids"], z["embeddings"], z["popularity"], z["recent"], z["trend"],
                       int(meta["num_candidates"]), int(meta["history_k"]))


def fit_candidate_context(interactions: pd.DataFrame, item_ids: Sequence[str], embeddings: np.ndarray,
                          num_candidates: int, history_k: int = 10, recent_share: float = 0.1) -> CandidateContext:
    """CandidateContext from a retriever's item vectors and the engaged rows of `interactions`.

    `interactions` must hold only data from before what the features will be used to
    predict (split.fit for training rows, split.train for serving). The "recent" rows are
    the latest `recent_share` of its engaged rows by timestamp (ties by row order).
    """
    if not 0 < recent_share < 1:
        raise ValueError(f"recent_share must be in (0, 1), got {recent_share}")
    emb = np.asarray(embeddings, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    ids = np.asarray(item_ids).astype(str)
    engaged = interactions.loc[interactions["engaged"] == 1].sort_values("timestamp", kind="stable")
    n_recent = int(np.ceil(recent_share * len(engaged)))
    all_counts = engaged["item_id"].astype(str).value_counts()
    recent_counts = engaged["item_id"].astype(str).iloc[len(engaged) - n_recent:].value_counts()
    total = all_counts.reindex(ids).fillna(0).to_numpy(np.float64)
    recent = recent_counts.reindex(ids).fillna(0).to_numpy(np.float64)
    return CandidateContext(ids, emb, np.log1p(total).astype(np.float32), np.log1p(recent).astype(np.float32),
                            np.log((recent + 1.0) / (recent_share * total + 1.0)).astype(np.float32),
                            int(num_candidates), history_k)


def neutral_context(n: int) -> dict[str, np.ndarray]:
    """All-zero context for n rows: for scoring the quality head alone (it does not read the context)."""
    return {CONTEXT_PREFIX + k: np.zeros(n, np.float32) for k in CONTEXT_FEATURES}


__all__ = ["CONTEXT_FEATURES", "CONTEXT_PREFIX", "CandidateContext", "fit_candidate_context", "neutral_context"]
