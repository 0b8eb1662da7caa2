"""Negatives for the engagement head: logged non-engagements, else drawn from the serving distribution.

The ranker scores the retrieval model's candidates when serving, so its negatives should
look like them: where the log has shown-but-not-engaged impressions (synthetic) those are
the negatives; where it has only positives (MovieLens ratings) they are the candidates a
`CandidateGenerator` (a retrieval model's top-N for the user, minus what the user engaged
with) returns that the user did not engage with — per time window (ranking.train) or
sampled per positive here, mixed with popularity-sampled items so the head sees the tail.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# user_ids [b] → for each user, candidate item ids (best first); the retrieval model's
# top-N with the user's train items excluded is the intended one.
CandidateGenerator = Callable[[Sequence[str]], Sequence[Sequence[str]]]


@dataclasses.dataclass(frozen=True)
class NegativeConfig:
    """Where engagement negatives come from; every field is a CLI flag (prefix --neg-)."""

    # auto: impressions if the log has any, else sampled (hard ones from the retriever's candidates)
    source: Literal["auto", "impressions", "window", "sampled"] = "auto"
    per_positive: int = 4              # sampled negatives per engaged row
    hard_fraction: float = 0.5         # share of sampled negatives drawn from the candidate generator
    popularity_power: float = 0.75     # popularity sampling ∝ (train count + 1)^power (0 = uniform)
    batch_users: int = 1024            # users per candidate-generator call
    window_missed: bool = False        # window: also train on window positives the generator did not retrieve
    seed: int = 42

    def __post_init__(self) -> None:
        if self.source not in ("auto", "impressions", "window", "sampled"):
            raise ValueError(f"--neg-source must be auto, impressions, window or sampled; got {self.source!r}")
        if self.per_positive < 0:
            raise ValueError(f"--neg-per-positive must be >= 0, got {self.per_positive}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"--neg-hard-fraction must be in [0, 1], got {self.hard_fraction}")
        if self.popularity_power < 0 or self.batch_users <= 0:
            raise ValueError("--neg-popularity-power must be >= 0 and --neg-batch-users > 0")


def uses_impressions(interactions: pd.DataFrame, cfg: NegativeConfig) -> bool:
    """Whether `cfg` takes negatives from logged impressions (engaged == 0 rows)."""
    has = bool((interactions["engaged"] == 0).any())
    if cfg.source == "impressions" and not has:
        raise ValueError("--neg-source impressions: the training log has no engaged=0 rows; use auto or sampled")
    return has if cfg.source == "auto" else cfg.source == "impressions"


def sample_negatives(positives: pd.DataFrame, catalogue: Sequence[str], item_counts: Mapping[str, int],
                     cfg: NegativeConfig, candidates: CandidateGenerator | None = None,
                     exclude: pd.DataFrame | None = None) -> pd.DataFrame:
    """Samples `per_positive` negatives for every engaged row of `positives`.

    Of each user's n_u · per_positive negatives, round(hard_fraction · per_positive) · n_u
    are drawn uniformly from the user's generated candidates (without replacement while
    they last), the rest from the catalogue by smoothed popularity. Items the user engaged
    with (in `positives` or `exclude`) are never negatives; a popularity draw that hits one
    is redrawn (up to 10 times, then uniformly among the items the user has not engaged
    with; dropped only if there are none).

    Args:
      positives: interactions (schema of features.schema); only engaged rows are used.
      catalogue: item ids that may be negatives.
      item_counts: item id → train engagement count, for popularity sampling.
      cfg: counts, mix and seed.
      candidates: the hard-negative source; None = popularity only.
      exclude: more (user_id, item_id) rows that must not be negatives.

    Returns:
      Interactions-schema rows (rating NaN, engaged 0), each with the timestamp of the
      positive it was drawn for, sorted by user then timestamp.
    """
    rng = np.random.default_rng(cfg.seed)
    pos = positives.loc[positives["engaged"] == 1, ["user_id", "item_id", "timestamp"]]
    catalogue = np.asarray(list(catalogue), dtype=object)
    if len(pos) == 0 or cfg.per_positive == 0 or len(catalogue) == 0:
        return _frame([], [], [])
    banned = pd.concat([pos[["user_id", "item_id"]]] + ([exclude[["user_id", "item_id"]]] if exclude is not None
                                                         else []))
    banned_keys = set(zip(banned["user_id"], banned["item_id"]))
    pos = pos.sort_values(["user_id", "timestamp"], kind="stable")
    users = pos["user_id"].to_numpy(dtype=object)
    stamps = pos["timestamp"].to_numpy()
    hard_per = int(round(cfg.hard_fraction * cfg.per_positive)) if candidates is not None else 0
    out_u: list[np.ndarray] = []
    out_i: list[np.ndarray] = []
    out_t: list[np.ndarray] = []

    # Hard negatives: the user's generated candidates the user never engaged with.
    if hard_per:
        uniq, starts, counts = np.unique(users, return_index=True, return_counts=True)
        for lo in range(0, len(uniq), cfg.batch_users):
            batch = list(uniq[lo:lo + cfg.batch_users])
            cands = candidates(batch)
            if len(cands) != len(batch):
                raise ValueError(f"candidate generator returned {len(cands)} lists for {len(batch)} users")
            for u, start, n, items in zip(batch, starts[lo:lo + len(batch)], counts[lo:lo + len(batch)], cands):
                pool = np.asarray([i for i in items if i and (u, i) not in banned_keys], dtype=object)
                if len(pool) == 0:
                    continue
                need = n * hard_per
                picked = rng.choice(pool, need, replace=need > len(pool))
                out_u.append(np.full(need, u, dtype=object))
                out_i.append(picked)
                out_t.append(np.repeat(stamps[start:start + n], hard_per))
        hard_rows = sum(len(x) for x in out_i)
    else:
        hard_rows = 0

    # Popularity negatives for the rest (and for users whose generator gave nothing).
    counts_arr = np.array([item_counts.get(str(i), 0) for i in catalogue], dtype=np.float64)
    p = (counts_arr + 1.0) ** cfg.popularity_power
    p /= p.sum()
    easy_per = cfg.per_positive - hard_per
    if easy_per:
        u = np.repeat(users, easy_per)
        t = np.repeat(stamps, easy_per)
        items = catalogue[rng.choice(len(catalogue), len(u), p=p)]
        for _ in range(10):
            clash = np.fromiter(((a, b) in banned_keys for a, b in zip(u, items)), dtype=bool, count=len(u))
            if not clash.any():
                break
            items[clash] = catalogue[rng.choice(len(catalogue), int(clash.sum()), p=p)]
        # The few rows still clashing (users who engaged with most popular items) draw
        # uniformly from what the user has not engaged with.
        for row in np.flatnonzero(clash):
            allowed = [i for i in catalogue if (u[row], i) not in banned_keys]
            if allowed:
                items[row] = allowed[rng.integers(len(allowed))]
        clash = np.fromiter(((a, b) in banned_keys for a, b in zip(u, items)), dtype=bool, count=len(u))
        out_u.append(u[~clash])
        out_i.append(items[~clash])
        out_t.append(t[~clash])
    neg = _frame(out_u, out_i, out_t)
    log.info("sampled %d negatives for %d positives (%d from candidates, %d by popularity)", len(neg), len(pos),
             hard_rows, len(neg) - hard_rows)
    return neg.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _frame(users: list, items: list, stamps: list) -> pd.DataFrame:
    u = np.concatenate(users) if users else np.zeros(0, dtype=object)
    i = np.concatenate(items) if items else np.zeros(0, dtype=object)
    t = np.concatenate(stamps) if stamps else np.zeros(0, dtype=np.int64)
    return pd.DataFrame({"user_id": u.astype(object), "item_id": i.astype(object), "timestamp": t.astype(np.int64),
                         "rating": np.full(len(u), np.nan), "engaged": np.zeros(len(u), dtype=np.int8)})
