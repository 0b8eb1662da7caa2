"""Simulated users with known preferences, for online experiments (bench/experiments.py, the A/A check).

The users and items are the synthetic generator's (features.synthetic: users u{i}, items i{j}) and
answer from its hidden truth (`SyntheticTruth`), never from a model:

  P(engage with the item at position p) = examine(p) · σ(generator logit(u, i) + quality_sensitivity · (q_i − 3))
  examine(p) = 1 / log2(p + 1)                                    (position bias)
  an engaged item is rated with probability `rate_probability`:
  rating = clip(round(q_i + N(0, rating_noise²)), 1, 5)             (q_i = the item's true quality)

`quality_sensitivity` > 0 makes users reward quality (the generator's own engagement ignores it),
so a blend that weighs the quality head more is truly better for them: more engagements and
higher ratings. Everything is seeded.

`simulate_events` is the fast offline path: a fixed policy (each list = k items drawn by
popularity, Gumbel top-k) serves every arm, users are assigned with the server's own
`core.experiment` bucketing, and the rows come out in the exported event table's columns, so
`evaluation.experiments.analyze` runs on them exactly as on a real export (an A/A test).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from core.experiment import Arm, Experiment
from features.synthetic import SyntheticTruth


@dataclasses.dataclass(frozen=True)
class UserModel:
    quality_sensitivity: float = 1.0
    rate_probability: float = 0.5
    rating_noise: float = 0.5


class SimulatedUsers:
    """Answers served lists from the synthetic truth (see the module docstring)."""

    def __init__(self, truth: SyntheticTruth, model: UserModel = UserModel(), seed: int = 0) -> None:
        self.truth = truth
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.quality = truth.true_quality

    def respond(self, user: int, items: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(engaged [k] bool, rating [k] float, NaN = not rated) for one served list of item indices."""
        items = np.asarray(items, dtype=np.int64)
        engaged, rating = self.respond_many(np.full((1, len(items)), user), items[None, :])
        return engaged[0], rating[0]

    def respond_many(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised: users and items [lists, k] of indices → (engaged, rating) of that shape."""
        m = self.model
        k = items.shape[1]
        examine = 1.0 / np.log2(np.arange(2, k + 2))
        logit = self.truth.engagement_logit(users, items) + m.quality_sensitivity * (self.quality[items] - 3.0)
        p = examine[None, :] / (1.0 + np.exp(-logit))
        engaged = self.rng.random(items.shape) < p
        rated = engaged & (self.rng.random(items.shape) < m.rate_probability)
        value = np.clip(np.rint(self.quality[items] + m.rating_noise * self.rng.normal(size=items.shape)), 1, 5)
        return engaged, np.where(rated, value, np.nan)


def user_index(user_id: str) -> int:
    """u{i} → i (the synthetic generator's ids)."""
    return int(user_id[1:])


def item_index(item_id: str) -> int:
    """i{j} → j."""
    return int(item_id[1:])


def events_frame(users: Sequence[str], request_ids: Sequence[str], arms: Sequence[str], lists: Sequence[Sequence[str]],
                 engaged: np.ndarray, ratings: np.ndarray, timestamp: int = 1_767_225_600) -> pd.DataFrame:
    """Rows in the exported table's columns: every list's impressions, then the engagement / rating events
    (an engaged item with a rating is one RATING event, else one ENGAGEMENT event). Lists have equal length k."""
    n, k = engaged.shape
    users_a, reqs_a, arms_a = (np.asarray(x, dtype=object) for x in (users, request_ids, arms))
    items = np.asarray(lists, dtype=object).reshape(n, k)
    pos = np.tile(np.arange(1, k + 1), n)
    row = np.repeat(np.arange(n), k)
    imp = pd.DataFrame({"user_id": users_a[row], "item_id": items.ravel(), "timestamp": timestamp, "rating": np.nan,
                        "engaged": 0, "event_id": [f"{r}:{p}" for r, p in zip(reqs_a[row], pos)],
                        "type": "impression", "position": pos, "request_id": reqs_a[row], "arm": arms_a[row]})
    hit = engaged.ravel()
    r = ratings.ravel()[hit]
    eng = pd.DataFrame({"user_id": users_a[row[hit]], "item_id": items.ravel()[hit], "timestamp": timestamp,
                        "rating": r, "engaged": 1, "event_id": [f"{q}:e{p}" for q, p in zip(reqs_a[row[hit]], pos[hit])],
                        "type": np.where(np.isfinite(r), "rating", "engagement"), "position": pos[hit],
                        "request_id": reqs_a[row[hit]], "arm": arms_a[row[hit]]})
    return pd.concat([imp, eng], ignore_index=True)


def simulate_events(truth: SyntheticTruth, experiment: Experiment, sessions: int, k: int = 10, seed: int = 0,
                    user_model: UserModel = UserModel(), boost: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The offline path: `sessions` lists served by one popularity policy to users drawn by activity, each
    user in the arm `experiment.assign` gives them; returns the exported table's rows (see the docstring).

    `boost` {arm: x} multiplies that arm's engagement probability odds by e^x (a known true effect, to
    check power); None = every arm identical (A/A)."""
    rng = np.random.default_rng(seed)
    users = rng.choice(len(truth.activity), sessions, p=truth.activity)
    keys = np.log(truth.popularity)[None, :] + rng.gumbel(size=(sessions, len(truth.popularity)))
    top = np.argpartition(-keys, k, axis=1)[:, :k]
    lists = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
    user_ids = [f"u{u}" for u in users]
    assigned = {u: experiment.assign(u) for u in set(user_ids)}
    arms = [assigned[u] for u in user_ids]
    sim = SimulatedUsers(truth, user_model, seed + 1)
    engaged, ratings = sim.respond_many(np.repeat(users[:, None], k, axis=1), lists)
    if boost:
        extra = np.array([boost.get(a, 0.0) for a in arms])[:, None]
        # Extra engagements with probability 1 − e^−x on top: a true effect of the arm.
        engaged |= rng.random(engaged.shape) < (1 - np.exp(-np.maximum(extra, 0))) * engaged.mean()
    return events_frame(user_ids, [f"s{seed}-{n}" for n in range(sessions)], arms,
                        [[f"i{j}" for j in row] for row in lists], engaged, ratings)


def aa_experiment(salt: str, shares: Sequence[float] = (0.5, 0.5)) -> Experiment:
    """An experiment with arms A (control) and B on the same version, for A/A and SRM checks."""
    return Experiment(name="aa", salt=salt, control="A",
                      arms=tuple(Arm(name, share) for name, share in zip("AB", shares)))
