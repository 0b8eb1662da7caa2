"""Vocabularies, popularity and side-feature lookup, all fit on the training split only.

These are the statistics that training, Beam and serving must agree on, so they are
fit once (`fit_feature_store`), saved beside the model (`FeatureStore.save`) and loaded
by every consumer (`FeatureStore.load`). Index 0 of every vocabulary is the OOV bucket,
the same convention as `tf.keras.layers.StringLookup(num_oov_indices=1, mask_token=None)`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from core.errors import ArtifactError, InvalidRequestError
from features.history import merge_history
from features.schema import Dataset, FeatureSpec, split_multi

OOV_TOKEN = "[OOV]"
# m of the per-item rating prior: each item's mean train rating is shrunk towards the global
# mean as if it had m more ratings at that mean (a Bayesian average); an item with m ratings
# sits halfway between its own mean and the global one.
RATING_PRIOR_STRENGTH = 10.0
_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize_text(text: str) -> list[str]:
    """Lower-cased alphanumeric word tokens; the one tokenizer for titles everywhere."""
    return _TOKEN_RE.findall(str(text).lower())


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Token → index with index 0 reserved for out-of-vocabulary tokens."""

    tokens: tuple[str, ...]  # without the OOV token; index i+1 is tokens[i]

    @classmethod
    def fit(cls, values: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Most frequent first, ties broken by token, so the order is deterministic."""
        counts = Counter(values)
        ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(tuple(ranked[:max_size] if max_size else ranked))

    def __len__(self) -> int:
        """Size including the OOV bucket."""
        return len(self.tokens) + 1

    def lookup(self, values: Sequence[str]) -> np.ndarray:
        """[n] int64 indices; unknown tokens map to 0."""
        index = self._index
        return np.fromiter((index.get(v, 0) for v in values), dtype=np.int64, count=len(values))

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_cache")
        if cached is None:
            cached = {t: i + 1 for i, t in enumerate(self.tokens)}
            object.__setattr__(self, "_cache", cached)
        return cached


@dataclasses.dataclass(frozen=True)
class RatingPrior:
    """Each train item's Bayesian-average rating, in the data's rating units (fit on train only).

    prior(i) = (Σ ratings of i + strength · global_mean) / (count(i) + strength), where the sums
    run over i's train rows with an observed rating and global_mean is the mean of all of them;
    an item without ratings gets global_mean. Serving's fallback normalises it to [0, 1] like
    the ranker's quality head (pipeline.RecommendPipeline).

    Attributes:
      global_mean: mean observed train rating.
      strength: m, the pseudo-ratings at global_mean added to every item (RATING_PRIOR_STRENGTH).
      items: item_id → prior(i) for the items with at least one rating.
    """

    global_mean: float
    strength: float
    items: dict[str, float]

    def of(self, item_ids: Sequence[str]) -> np.ndarray:
        """[n] float64 priors (global_mean for items without train ratings)."""
        return np.array([self.items.get(str(i), self.global_mean) for i in item_ids], dtype=np.float64)

    @classmethod
    def fit(cls, train: pd.DataFrame, strength: float = RATING_PRIOR_STRENGTH) -> RatingPrior | None:
        """From `train` rows' observed ratings; None if no row has one (no quality signal)."""
        if not np.isfinite(strength) or strength < 0:
            raise ValueError(f"the rating prior strength must be finite and >= 0, got {strength}")
        if "rating" not in train.columns:
            return None
        rated = train.loc[train["rating"].notna(), ["item_id", "rating"]]
        if len(rated) == 0:
            return None
        mean = float(rated["rating"].astype("float64").mean())
        g = rated.astype({"item_id": str, "rating": "float64"}).groupby("item_id", sort=True)["rating"]
        sums, counts = g.sum(), g.count()
        prior = (sums + strength * mean) / (counts + strength)
        return cls(mean, float(strength), {str(k): float(v) for k, v in prior.items()})

    def to_dict(self) -> dict:
        return {"global_mean": self.global_mean, "strength": self.strength, "items": self.items}

    @classmethod
    def from_dict(cls, d: dict) -> RatingPrior:
        return cls(float(d["global_mean"]), float(d["strength"]), {str(k): float(v) for k, v in d["items"].items()})


@dataclasses.dataclass
class FeatureStore:
    """Everything fit on train that later stages need to turn raw ids into model inputs.

    Attributes:
      spec: which side-feature columns exist.
      vocabularies: name → Vocabulary for user_id, item_id, each categorical column, each
        multi-valued column (its tokens) and each text column (its word tokens).
      item_counts: item_id → number of engaged train interactions (popularity, logQ).
      users, items: the side-feature tables (raw values), indexed by id.
      numeric_stats: column → (mean, std) over train users/items, for normalisation.
      seen: user_id → the item ids the user engaged with in train, oldest first (each once,
        at its latest engagement): never recommended to that user again (serving, Beam
        and offline evaluation exclude them), and the user's recent history feature.
      rating_prior: each item's Bayesian-average train rating (RatingPrior), the quality
        prior of serving's fallback; None when train has no ratings or the store was saved
        before it existed.
    """

    spec: FeatureSpec
    vocabularies: dict[str, Vocabulary]
    item_counts: dict[str, int]
    users: pd.DataFrame
    items: pd.DataFrame
    numeric_stats: dict[str, tuple[float, float]]
    seen: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    rating_prior: RatingPrior | None = None

    # -- raw feature rows, the inputs of every exported model's signature -----------------
    def user_features(self, user_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw user features for `user_ids` (unknown users get "" / the train mean)."""
        return self._side_features(self.users, user_ids, self.spec.user_categorical, self.spec.user_numeric, (), (),
                                   "user_id")

    def item_features(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw item features for `item_ids` (unknown items get "" / the train mean)."""
        return self._side_features(self.items, item_ids, self.spec.item_categorical, self.spec.item_numeric,
                                   self.spec.item_multi, self.spec.item_text, "item_id")

    def _side_features(self, table, ids, categorical, numeric, multi, text, id_name) -> dict[str, np.ndarray]:
        # A row gather from per-column arrays built once per table (no pandas per call): the
        # values are exactly what `table.reindex(ids)` + fillna/astype would give.
        columns = self._columns(table, (*categorical, *multi, *text), numeric)
        ids = np.asarray([str(i) for i in ids], dtype=object)
        row = columns.row
        missing = columns.missing
        rows = np.fromiter((row.get(i, missing) for i in ids), dtype=np.intp, count=len(ids))
        out: dict[str, np.ndarray] = {id_name: ids}
        for col, values in columns.values.items():
            out[col] = values[rows]
        return out

    def _columns(self, table: pd.DataFrame, strings: tuple[str, ...], numeric: tuple[str, ...]) -> _Columns:
        """The gather arrays of `table`, built on first use and rebuilt if the table object is replaced."""
        cache = self.__dict__.setdefault("_column_cache", {})
        key = (strings, numeric)
        found = cache.get(key)
        if found is None or found.table is not table:
            found = cache[key] = _Columns.build(table, strings, numeric, self.numeric_stats)
        return found

    def popularity(self, item_ids: Sequence[str]) -> np.ndarray:
        """[n] train engagement counts (0 for items unseen in train)."""
        return np.array([self.item_counts.get(str(i), 0) for i in item_ids], dtype=np.int64)

    def seen_items(self, user_ids: Sequence[str],
                   recent: Sequence[Sequence[str]] | None = None) -> list[frozenset[str]]:
        """Each user's train-engaged item ids (empty for users unseen in train), plus `recent[i]`'s
        streamed engagements if given (all of them, known to the model or not): never recommended."""
        if recent is None:
            return [frozenset(self.seen.get(str(u), ())) for u in user_ids]
        _check_recent(user_ids, recent)
        return [frozenset(self.seen.get(str(u), ())) | frozenset(map(str, r)) if len(r)
                else frozenset(self.seen.get(str(u), ())) for u, r in zip(user_ids, recent)]

    def history(self, user_ids: Sequence[str], length: int,
                recent: Sequence[Sequence[str]] | None = None) -> list[tuple[str, ...]]:
        """Each user's `length` most recent engaged item ids, oldest first (() if unknown and no recent).

        Without `recent`: the train engagements (FeatureStore.seen). With it, `recent[i]` (user
        i's streamed engagements, newest first) is merged in by features.merge_history, keeping
        only items of the item vocabulary; an empty `recent[i]` gives exactly the train history.
        """
        if recent is None:
            return [self.seen.get(str(u), ())[-length:] if length > 0 else () for u in user_ids]
        _check_recent(user_ids, recent)
        known = self.vocabularies["item_id"]._index
        return [merge_history(self.seen.get(str(u), ()), r, length, known) if len(r)
                else (self.seen.get(str(u), ())[-length:] if length > 0 else ()) for u, r in zip(user_ids, recent)]

    def knows_item(self, item_id: str) -> bool:
        """Whether `item_id` is in the item vocabulary (the models have an embedding for it)."""
        return str(item_id) in self.vocabularies["item_id"]._index

    @property
    def catalogue(self) -> list[str]:
        """Every item id the system may recommend: the items table's ids, in table order."""
        return list(self.items.index)

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | pathlib.Path) -> None:
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "spec": dataclasses.asdict(self.spec),
            "vocabularies": {k: list(v.tokens) for k, v in self.vocabularies.items()},
            "item_counts": self.item_counts,
            "numeric_stats": {k: list(v) for k, v in self.numeric_stats.items()},
        }
        if self.rating_prior is not None:
            meta["rating_prior"] = self.rating_prior.to_dict()
        (d / "features.json").write_text(json.dumps(meta))
        self.users.to_parquet(d / "users.parquet")
        self.items.to_parquet(d / "items.parquet")
        pairs = [(u, i) for u, items in self.seen.items() for i in items]
        pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs]},
                     dtype=object).to_parquet(d / "seen.parquet")

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> FeatureStore:
        d = pathlib.Path(directory)
        try:
            meta = json.loads((d / "features.json").read_text())
            users = pd.read_parquet(d / "users.parquet")
            items = pd.read_parquet(d / "items.parquet")
            seen = _seen_from_pairs(pd.read_parquet(d / "seen.parquet")) if (d / "seen.parquet").exists() else {}
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot load feature store from {d}: {e}") from e
        spec = FeatureSpec(**{k: tuple(v) for k, v in meta["spec"].items()})
        prior = RatingPrior.from_dict(meta["rating_prior"]) if meta.get("rating_prior") else None  # older stores: none
        return cls(spec, {k: Vocabulary(tuple(v)) for k, v in meta["vocabularies"].items()},
                   {k: int(v) for k, v in meta["item_counts"].items()}, users, items,
                   {k: (float(v[0]), float(v[1])) for k, v in meta["numeric_stats"].items()}, seen, prior)


@dataclasses.dataclass(frozen=True)
class _Columns:
    """A side-feature table as arrays: `values[col][row[id]]`, with a last row of defaults.

    The last row (index `missing`) holds what an unknown id gets: "" for string columns and
    the train mean for numeric ones, the same values `reindex` + `fillna` produce.
    """

    table: pd.DataFrame
    row: dict[str, int]
    missing: int
    values: dict[str, np.ndarray]

    @classmethod
    def build(cls, table: pd.DataFrame, strings: Sequence[str], numeric: Sequence[str],
              stats: dict[str, tuple[float, float]]) -> _Columns:
        values: dict[str, np.ndarray] = {}
        for col in strings:
            known = table[col].fillna("").astype(str).to_numpy(dtype=object)
            values[col] = np.append(known, np.array([""], dtype=object))
        for col in numeric:
            mean = stats.get(col, (0.0, 1.0))[0]
            known = table[col].astype("float64").fillna(mean).to_numpy(dtype=np.float32)
            # float64 mean → float32, as `fillna(mean)` on the reindexed float64 column then astype does.
            values[col] = np.append(known, np.array([mean], dtype=np.float64).astype(np.float32))
        row = {k: r for r, k in enumerate(table.index)}
        return cls(table, row, len(table), values)


def _check_recent(user_ids: Sequence[str], recent: Sequence[Sequence[str]]) -> None:
    if len(recent) != len(user_ids):
        raise InvalidRequestError(f"recent has {len(recent)} entries for {len(user_ids)} users")
    for r in recent:
        if isinstance(r, (str, bytes)):
            raise InvalidRequestError(f"recent[i] must be a sequence of item ids, got the string {r!r}")


def _seen_from_pairs(pairs: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """(user_id, item_id) rows in time order → user_id → item ids, each once at its last position."""
    if len(pairs) == 0:
        return {}
    pairs = pairs.astype({"user_id": str, "item_id": str}).drop_duplicates(["user_id", "item_id"], keep="last")
    return {str(u): tuple(items) for u, items in pairs.groupby("user_id", sort=False)["item_id"]}


def fit_feature_store(dataset: Dataset, train: pd.DataFrame, min_count: int = 1) -> FeatureStore:
    """Fits vocabularies, popularity, the per-item rating prior and normalisation on `train` rows only.

    user_id/item_id vocabularies contain only ids seen in train (others go to OOV);
    side-feature vocabularies are fit on the features of train users/items.
    """
    spec = dataset.spec
    train_users = dataset.users.reindex(pd.unique(train["user_id"]))
    train_items = dataset.items.reindex(pd.unique(train["item_id"]))
    vocabs = {
        "user_id": Vocabulary.fit(train["user_id"], min_count),
        "item_id": Vocabulary.fit(train["item_id"], min_count),
    }
    for col in (*spec.user_categorical,):
        vocabs[col] = Vocabulary.fit(train_users[col].dropna().astype(str))
    for col in spec.item_categorical:
        vocabs[col] = Vocabulary.fit(train_items[col].dropna().astype(str))
    for col in spec.item_multi:
        vocabs[col] = Vocabulary.fit(t for v in train_items[col].dropna() for t in split_multi(v))
    for col in spec.item_text:
        vocabs[col] = Vocabulary.fit((t for v in train_items[col].dropna() for t in tokenize_text(v)), min_count=2)
    stats = {}
    for table, cols in ((train_users, spec.user_numeric), (train_items, spec.item_numeric)):
        for col in cols:
            values = table[col].astype("float64")
            stats[col] = (float(values.mean()), float(values.std(ddof=0) or 1.0))
    counts = train.loc[train["engaged"] == 1, "item_id"].value_counts()
    engaged = train.loc[train["engaged"] == 1, ["user_id", "item_id", "timestamp"]]
    engaged = engaged.sort_values("timestamp", kind="stable")[["user_id", "item_id"]]
    return FeatureStore(spec, vocabs, {str(k): int(v) for k, v in counts.items()},
                        dataset.users.copy(), dataset.items.copy(), stats, _seen_from_pairs(engaged),
                        RatingPrior.fit(train))
