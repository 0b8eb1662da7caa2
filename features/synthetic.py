"""Seeded synthetic interactions with planted structure, for tests and benchmarks.

The generative story (everything drawn from one `np.random.Generator(seed)`):

* users and items have latent factors in R^d; items belong to `num_categories` clusters
  (the item's `category` feature), users to `num_segments` segments (their `segment`
  feature) that share a preferred category, so side features carry signal;
* item popularity is power-law (Zipf exponent `popularity_exponent`): impressions are
  drawn by popularity, so the log looks like a real feed;
* each impression is engaged with probability sigmoid(u·v/sqrt(d) + engagement bias of the
  item's type + popularity term) -- rows with engaged=0 are the shown-but-not-engaged
  impressions;
* engaged rows get a 1-5 rating driven by a separate *quality* factor per item (plus the
  item type's quality bias and noise), not by the engagement score. Item type
  "clickbait" is engaging but low quality; "niche" is the opposite. A model that learns
  only engagement cannot predict quality.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd

from features.schema import Dataset, FeatureSpec

log = logging.getLogger(__name__)

SYNTHETIC_SPEC = FeatureSpec(
    user_categorical=("segment",),
    user_numeric=("activity",),
    item_categorical=("category", "item_type"),
)  # items also carry `true_quality`, for analysis only: it is the label, never a feature
ITEM_TYPES = ("regular", "clickbait", "niche")
# (engagement logit bias, quality bias in rating points) per item type.
_TYPE_EFFECTS = {"regular": (0.0, 0.0), "clickbait": (1.5, -1.5), "niche": (-1.0, 1.2)}
RATING_NOISE = 0.5   # sd of an engaged row's rating before rounding to 1..5
TASTE_SHARE = 0.5    # share of impressions that follow the user's taste (the rest follow popularity)
TASTE_DRAWS = 4      # a taste impression shows the best (by affinity) of this many popularity draws


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic log. `num_interactions` counts impressions (all rows)."""

    num_users: int = 1000
    num_items: int = 500
    num_interactions: int = 50_000
    dim: int = 8
    num_categories: int = 10
    num_segments: int = 10
    popularity_exponent: float = 0.8
    clickbait_fraction: float = 0.1
    niche_fraction: float = 0.1
    seed: int = 0


def generate_synthetic(cfg: SyntheticConfig = SyntheticConfig(), chunk_rows: int = 2_000_000) -> Dataset:
    """Generates the dataset; memory is O(rows) and work is vectorised in chunks."""
    chunks = list(synthetic_chunks(cfg, chunk_rows))
    interactions = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    users_df, items_df = synthetic_tables(cfg)
    log.info("synthetic: %d rows, %d users, %d items, engaged %.1f%%", len(interactions), cfg.num_users,
             cfg.num_items, 100 * interactions["engaged"].mean())
    return Dataset("synthetic", interactions, users_df, items_df, SYNTHETIC_SPEC,
                   provenance={"source": "synthetic", **dataclasses.asdict(cfg)})


def synthetic_chunks(cfg: SyntheticConfig = SyntheticConfig(), chunk_rows: int = 2_000_000) -> Iterator[pd.DataFrame]:
    """The interactions of `generate_synthetic(cfg, chunk_rows)` as consecutive frames of <= chunk_rows
    rows (the same draws: concatenated, they are its interactions), so a large log can be written to
    disk without holding it whole (bench/scale.py)."""
    if min(cfg.num_users, cfg.num_items, cfg.num_interactions, cfg.dim) <= 0:
        raise ValueError(f"synthetic sizes must be positive, got {cfg}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    rng = np.random.default_rng(cfg.seed)
    d = cfg.dim
    t = _draw_truth(rng, cfg)
    user_vec, item_vec = t.user_vec, t.item_vec
    eng_bias, qual_bias, quality_factor, pop, activity = t.engagement_bias, t.quality_bias, t.quality_factor, \
        t.popularity, t.activity
    uid, iid = _user_ids(cfg), _item_ids(cfg)
    remaining = cfg.num_interactions
    while remaining > 0:
        n = min(chunk_rows, remaining)
        remaining -= n
        u = rng.choice(cfg.num_users, n, p=activity)
        # Half the impressions follow popularity, half follow the user's taste (a feed mixes both).
        i = rng.choice(cfg.num_items, n, p=pop)
        taste = rng.random(n) < TASTE_SHARE
        cand = rng.choice(cfg.num_items, (int(taste.sum()), TASTE_DRAWS), p=pop)
        aff = np.einsum("nd,nkd->nk", user_vec[u[taste]], item_vec[cand])
        i[taste] = cand[np.arange(len(cand)), aff.argmax(1)]
        logit = (np.einsum("nd,nd->n", user_vec[u], item_vec[i]) / np.sqrt(d) - 1.0
                 + eng_bias[i] + 0.3 * np.log(pop[i] * cfg.num_items))
        e = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        q = 3.0 + 0.9 * quality_factor[i] + qual_bias[i] + RATING_NOISE * rng.normal(size=n)
        r = np.where(e, np.clip(np.rint(q), 1, 5), np.nan)
        yield pd.DataFrame({"user_id": uid[u], "item_id": iid[i], "timestamp": rng.integers(1_600_000_000, 1_700_000_000, n),
                            "rating": r, "engaged": e.astype("int8")})


def synthetic_tables(cfg: SyntheticConfig = SyntheticConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(users, items) side tables of `generate_synthetic(cfg)`, indexed by id; items carry `true_quality`
    (for analysis only: it is the label, never a feature)."""
    t = synthetic_truth(cfg)
    users_df = pd.DataFrame({
        "user_id": _user_ids(cfg), "segment": [f"s{s}" for s in t.user_segment],
        "activity": np.log(t.activity * cfg.num_users),
    }).set_index("user_id")
    items_df = pd.DataFrame({
        "item_id": _item_ids(cfg), "category": [f"c{c}" for c in t.item_category],
        "item_type": [ITEM_TYPES[k] for k in t.item_type],
        "true_quality": t.true_quality,
    }).set_index("item_id")
    return users_df, items_df


def _user_ids(cfg: SyntheticConfig) -> np.ndarray:
    return np.array([f"u{k}" for k in range(cfg.num_users)], dtype=object)


def _item_ids(cfg: SyntheticConfig) -> np.ndarray:
    return np.array([f"i{k}" for k in range(cfg.num_items)], dtype=object)


@dataclasses.dataclass(frozen=True)
class SyntheticTruth:
    """The generator's hidden ground truth (users u{i}, items i{j} by index): what simulated users of
    bench/experiments.py answer with. Never a model input."""

    user_vec: np.ndarray         # [users, dim] latent taste
    item_vec: np.ndarray         # [items, dim] latent position
    user_segment: np.ndarray     # [users] segment index
    item_category: np.ndarray    # [items] category index
    item_type: np.ndarray        # [items] index into ITEM_TYPES
    engagement_bias: np.ndarray  # [items] the item type's engagement logit bias
    quality_bias: np.ndarray     # [items] the item type's quality bias (rating points)
    quality_factor: np.ndarray   # [items] standard-normal quality factor
    popularity: np.ndarray       # [items] impression probability (sums to 1)
    activity: np.ndarray         # [users] request probability (sums to 1)

    @property
    def true_quality(self) -> np.ndarray:
        """[items] expected rating before noise and rounding: 3 + 0.9 · quality factor + type bias."""
        return 3.0 + 0.9 * self.quality_factor + self.quality_bias

    def rating_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """([items] E[rating], [items] Var[rating]) of an engaged row: rating = clip(rint(N(true_quality,
        RATING_NOISE²)), 1, 5). The mean is the Bayes rating prediction (ratings carry no user effect), the
        variance the irreducible squared error."""
        from scipy.special import ndtr

        mu = self.true_quality[:, None]
        levels = np.arange(1, 6, dtype=np.float64)
        upper = np.where(levels < 5, levels + 0.5, np.inf)
        lower = np.where(levels > 1, levels - 0.5, -np.inf)
        prob = ndtr((upper - mu) / RATING_NOISE) - ndtr((lower - mu) / RATING_NOISE)
        mean = prob @ levels
        return mean, prob @ levels ** 2 - mean ** 2

    def impression_probability(self, users: np.ndarray) -> np.ndarray:
        """[len(users), items] P(one feed row of the user shows item i): TASTE_SHARE · P(i wins the user's
        best-of-TASTE_DRAWS popularity draws by affinity) + (1 − TASTE_SHARE) · pop_i. Rows sum to 1."""
        pop = self.popularity
        aff = self.user_vec[np.asarray(users)] @ self.item_vec.T  # the generator's argmax key
        order = np.argsort(aff, axis=1, kind="stable")
        p_sorted = pop[order]
        below = np.cumsum(p_sorted, axis=1) - p_sorted  # popularity mass of the items ranked below
        win = np.empty_like(p_sorted)
        np.put_along_axis(win, order, (below + p_sorted) ** TASTE_DRAWS - below ** TASTE_DRAWS, axis=1)
        return TASTE_SHARE * win + (1.0 - TASTE_SHARE) * pop[None, :]

    def engagement_logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The generator's engagement logit of (user index, item index) pairs (broadcasting)."""
        d = self.user_vec.shape[1]
        affinity = np.einsum("...d,...d->...", self.user_vec[users], self.item_vec[items]) / np.sqrt(d)
        return affinity - 1.0 + self.engagement_bias[items] + 0.3 * np.log(self.popularity[items] * len(self.popularity))


def _draw_truth(rng: np.random.Generator, cfg: SyntheticConfig) -> SyntheticTruth:
    """The latent draws, in the generator's order (generate_synthetic continues with the same rng)."""
    d = cfg.dim
    # Category centroids; items sit near their category's centroid.
    centroids = rng.normal(size=(cfg.num_categories, d))
    item_cat = rng.integers(0, cfg.num_categories, cfg.num_items)
    item_vec = centroids[item_cat] + 0.5 * rng.normal(size=(cfg.num_items, d))
    segment_cat = rng.integers(0, cfg.num_categories, cfg.num_segments)  # each segment's favourite
    user_seg = rng.integers(0, cfg.num_segments, cfg.num_users)
    user_vec = centroids[segment_cat[user_seg]] + 0.7 * rng.normal(size=(cfg.num_users, d))

    types = rng.choice(len(ITEM_TYPES), cfg.num_items,
                       p=[1 - cfg.clickbait_fraction - cfg.niche_fraction, cfg.clickbait_fraction, cfg.niche_fraction])
    eng_bias = np.array([_TYPE_EFFECTS[ITEM_TYPES[t]][0] for t in types])
    qual_bias = np.array([_TYPE_EFFECTS[ITEM_TYPES[t]][1] for t in types])
    quality_factor = rng.normal(size=cfg.num_items)  # independent of item_vec

    # Power-law popularity over a random permutation of items.
    ranks = rng.permutation(cfg.num_items) + 1
    pop = ranks.astype(float) ** -cfg.popularity_exponent
    pop /= pop.sum()
    activity = rng.lognormal(0.0, 1.0, cfg.num_users)
    activity /= activity.sum()
    return SyntheticTruth(user_vec, item_vec, user_seg, item_cat, types, eng_bias, qual_bias, quality_factor, pop,
                          activity)


def synthetic_truth(cfg: SyntheticConfig = SyntheticConfig()) -> SyntheticTruth:
    """The hidden factors `generate_synthetic(cfg)` draws its data from (same seed, same draws)."""
    if min(cfg.num_users, cfg.num_items, cfg.num_interactions, cfg.dim) <= 0:
        raise ValueError(f"synthetic sizes must be positive, got {cfg}")
    return _draw_truth(np.random.default_rng(cfg.seed), cfg)
