"""Item co-occurrence for users the model does not know: P(j | i) fit on train, top-K per item, sparse.

A user who is not in the model's vocabulary but has logged a few engagements (the EVENTS
source) is scored from those events with train-split statistics only, no model call:

  profile_j(h) = Σ_m d^m · P(j | h_m) / Σ_m d^m        h = the user's events, newest first, m = 0, 1, …
  engagement_j  = (1 − w) · reach_j + w · profile_j(h)

where P(j | i) = (train users who engaged with both i and j) / (train users who engaged with i)
(each item's `neighbors` largest kept, the rest 0; P(i | i) = 0), reach_j is the share of
train users who engaged with j (the popularity prior the fallback serves), d is the recency
decay and w the mixture weight. Both terms are probabilities of engaging with j — unconditioned
and conditioned on the events — so the mixture is a shrinkage of the conditional estimate
towards the prior and needs no rescaling; w = 0 is exactly the popularity fallback. w and d are
chosen per training run on simulated new users (evaluation.selection.select_new_user_mixture);
the pipeline blends `engagement` with the quality prior using the request's blend weights
(pipeline.RecommendPipeline, source EVENTS).

Size: the matrix keeps at most `neighbors` entries per item (O(I·K) memory on disk and in
the server), but fitting it forms the sparse co-occurrence XᵀX, whose non-zeros grow with
Σ_u |items of u|²; `max_pairs` bounds that and fitting fails with a clear error past it.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from core.errors import ArtifactError

DEFAULT_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_DECAY_GRID: tuple[float, ...] = (1.0, 0.9, 0.7, 0.5)


@dataclasses.dataclass(frozen=True)
class NewUserConfig:
    """The new-user (EVENTS) scorer fit at training time; every field is a `--newuser-*` flag.

    enabled: fit and save it (off = unknown users with events use the model's OOV path).
    neighbors: P(j | i) entries kept per item (the sparse top-K).
    max_pairs: refuse to fit when Σ_u |train items of u|² exceeds this (the co-occurrence size).
    simulated_share / min_simulated / max_simulated: train users held out of the fit to act as new
      users when choosing (w, d): this share of the eligible users, at least min_simulated (else
      w = 0) and at most max_simulated (the choice costs simulated users × catalogue per grid point).
    first_events: events a simulated new user has logged; the rest of their train items are relevant.
    weight_grid / decay_grid: the (w, d) candidates; w = 0 (the fallback) always takes part.
    k: the cut-off of the NDCG that chooses (w, d).
    seed: which users are simulated.
    """

    enabled: bool = True
    neighbors: int = 200
    max_pairs: int = 200_000_000
    simulated_share: float = 0.1
    min_simulated: int = 20
    max_simulated: int = 2_000
    first_events: int = 5
    weight_grid: tuple[float, ...] = DEFAULT_WEIGHT_GRID
    decay_grid: tuple[float, ...] = DEFAULT_DECAY_GRID
    k: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ValueError(f"--newuser-neighbors must be >= 1, got {self.neighbors}")
        if self.max_pairs < 1:
            raise ValueError(f"--newuser-max-pairs must be >= 1, got {self.max_pairs}")
        if not 0.0 < self.simulated_share < 1.0:
            raise ValueError(f"--newuser-simulated-share must be in (0, 1), got {self.simulated_share}")
        if self.min_simulated < 1:
            raise ValueError(f"--newuser-min-simulated must be >= 1, got {self.min_simulated}")
        if self.max_simulated < self.min_simulated:
            raise ValueError(f"--newuser-max-simulated must be >= --newuser-min-simulated ({self.min_simulated}), "
                             f"got {self.max_simulated}")
        if self.first_events < 1:
            raise ValueError(f"--newuser-first-events must be >= 1, got {self.first_events}")
        if self.k < 1:
            raise ValueError(f"--newuser-k must be >= 1, got {self.k}")
        if not self.weight_grid or any(not 0.0 <= w <= 1.0 for w in self.weight_grid):
            raise ValueError(f"--newuser-weight-grid must be values in [0, 1], got {list(self.weight_grid)}")
        if not self.decay_grid or any(not 0.0 < d <= 1.0 for d in self.decay_grid):
            raise ValueError(f"--newuser-decay-grid must be values in (0, 1], got {list(self.decay_grid)}")


def engagement_matrix(histories: Mapping[str, Sequence[str]], users: Sequence[str],
                      item_ids: Sequence[str]) -> sp.csr_matrix:
    """[len(users), I] binary CSR: 1 where the user's history holds the item (items outside `item_ids` dropped)."""
    col = {str(i): c for c, i in enumerate(item_ids)}
    indptr = [0]
    indices: list[int] = []
    for u in users:
        cols = sorted({col[i] for i in histories.get(u, ()) if i in col})
        indices.extend(cols)
        indptr.append(len(indices))
    return sp.csr_matrix((np.ones(len(indices)), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
                         shape=(len(users), len(item_ids)))


def conditional_neighbors(x: sp.csr_matrix, neighbors: int, max_pairs: int = NewUserConfig.max_pairs
                          ) -> sp.csr_matrix:
    """[I, I] CSR of P(j | i) = |users with i and j| / |users with i|, row i keeping its `neighbors` largest.

    x: [U, I] binary engagements. Ties within a row keep the lower column. Raises ValueError when
    the co-occurrence would exceed `max_pairs` user-item pairs (Σ_u |x_u|²).
    """
    x = x.tocsr().astype(np.float64)
    x.data[:] = 1.0
    per_user = np.diff(x.indptr).astype(np.int64)
    pairs = int((per_user ** 2).sum())
    if pairs > max_pairs:
        raise ValueError(f"the item co-occurrence would visit {pairs:,} user-item pairs, more than "
                         f"--newuser-max-pairs {max_pairs:,}; raise it or turn the new-user scorer off "
                         "(--no-newuser-enabled)")
    co = (x.T @ x).tocsr()
    co.setdiag(0.0)
    co.eliminate_zeros()
    counts = np.asarray(x.sum(axis=0)).ravel()
    n = co.shape[0]
    rows, cols, vals = [], [], []
    for i in range(n):
        a, b = co.indptr[i], co.indptr[i + 1]
        if a == b:
            continue
        c, v = co.indices[a:b], co.data[a:b] / counts[i]
        if len(c) > neighbors:
            keep = np.lexsort((c, -v))[:neighbors]
            c, v = c[keep], v[keep]
        rows.append(np.full(len(c), i))
        cols.append(c)
        vals.append(v)
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float64)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    out.sort_indices()
    return out


def profile(cond: sp.csr_matrix, columns: Sequence[int], decay: float) -> np.ndarray:
    """[I] Σ_m decay^m · cond[columns[m]] / Σ_m decay^m over the known columns (newest first; -1 = unknown, skipped).

    Zeros when no column is known."""
    cols = [int(c) for c in columns if c >= 0]
    if not cols:
        return np.zeros(cond.shape[1])
    w = np.power(float(decay), np.arange(len(cols), dtype=np.float64))
    out = np.asarray(cond[cols].T @ w, dtype=np.float64).ravel()
    return out / w.sum()


def mixed_engagement(reach: np.ndarray, prof: np.ndarray, weight: float) -> np.ndarray:
    """(1 − weight) · reach + weight · profile: the new user's engagement estimate per item."""
    return (1.0 - weight) * reach + weight * prof


@dataclasses.dataclass(frozen=True)
class ItemCooccurrence:
    """A version's new-user scorer: P(j | i) top-K over the catalogue and the chosen (w, d).

    item_ids: [I] the catalogue, row/column j of `cond`.
    cond: [I, I] CSR of P(j | i) (conditional_neighbors).
    weight, decay: the mixture weight w and recency decay d (module docstring).
    """

    item_ids: np.ndarray
    cond: sp.csr_matrix
    weight: float
    decay: float

    def columns(self, items: Sequence[str]) -> list[int]:
        index = self._index
        return [index.get(str(i), -1) for i in items]

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {str(i): c for c, i in enumerate(self.item_ids)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def knows_any(self, recent: Sequence[str]) -> bool:
        """Whether at least one of the events is a catalogue item (else there is nothing to condition on)."""
        index = self._index
        return any(str(i) in index for i in recent)

    def engagement(self, reach: np.ndarray, recent: Sequence[str]) -> np.ndarray:
        """[I] the mixture for a user whose events are `recent` (newest first), in item_ids order."""
        return mixed_engagement(reach, profile(self.cond, self.columns(recent), self.decay), self.weight)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        c = self.cond.tocsr()
        with open(path, "wb") as f:
            np.savez(f, item_ids=np.asarray(self.item_ids).astype(str), indptr=c.indptr, indices=c.indices,
                     data=c.data.astype(np.float32), weight=np.float64(self.weight), decay=np.float64(self.decay))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemCooccurrence:
        try:
            with np.load(path, allow_pickle=False) as z:
                ids = z["item_ids"].astype(object)
                n = len(ids)
                cond = sp.csr_matrix((z["data"].astype(np.float64), z["indices"], z["indptr"]), shape=(n, n))
                weight, decay = float(z["weight"]), float(z["decay"])
        except (OSError, KeyError, ValueError) as e:
            raise ArtifactError(f"cannot read the new-user scorer {path}: {e}") from e
        if not (0.0 <= weight <= 1.0 and 0.0 < decay <= 1.0):
            raise ArtifactError(f"{path}: weight {weight} / decay {decay} out of range")
        return cls(ids, cond, weight, decay)


__all__ = ["DEFAULT_DECAY_GRID", "DEFAULT_WEIGHT_GRID", "ItemCooccurrence", "NewUserConfig", "conditional_neighbors",
           "engagement_matrix", "mixed_engagement", "profile"]
