"""The one data schema every source produces and every stage consumes (DESIGN.md §3).

Interactions are a DataFrame with exactly these columns:

  user_id    str      raw user id
  item_id    str      raw item id
  timestamp  int64    seconds (or any monotone clock); splits are temporal on it
  rating     float64  the quality label when observed, NaN when not (e.g. a non-click)
  engaged    int8     1 = the user engaged (the engagement label), 0 = shown, not engaged

Users and items are DataFrames indexed by their (string) id. Their feature columns are
named in a `FeatureSpec`. Multi-valued categorical features (genres) are stored as one
string joined with `MULTI_VALUE_SEP`, so the same value travels through CSV, Parquet,
Redis and a SavedModel signature unchanged; `split_multi` is the one place it is split.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from core.errors import DataError

INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp", "rating", "engaged")
INTERACTION_DTYPES: dict[str, str] = {
    "user_id": "object",
    "item_id": "object",
    "timestamp": "int64",
    "rating": "float64",
    "engaged": "int8",
}
MULTI_VALUE_SEP = "|"


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Names the side-feature columns of the users and items tables, by kind.

    categorical: one token per row (occupation); numeric: a float (age);
    multi: several tokens joined by MULTI_VALUE_SEP (genres); text: free text (title).
    """

    user_categorical: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()
    item_categorical: tuple[str, ...] = ()
    item_numeric: tuple[str, ...] = ()
    item_multi: tuple[str, ...] = ()
    item_text: tuple[str, ...] = ()

    @property
    def user_columns(self) -> tuple[str, ...]:
        return self.user_categorical + self.user_numeric

    @property
    def item_columns(self) -> tuple[str, ...]:
        return self.item_categorical + self.item_numeric + self.item_multi + self.item_text


@dataclasses.dataclass
class Dataset:
    """Interactions plus optional user and item feature tables, validated on creation."""

    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    spec: FeatureSpec = dataclasses.field(default_factory=FeatureSpec)
    # Where the data came from (source name, path, checksum), for manifests.
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.interactions = validate_interactions(self.interactions, where=self.name)
        if self.users is None or len(self.users) == 0:
            self.users = pd.DataFrame(index=pd.Index(sorted(self.interactions["user_id"].unique()), name="user_id"))
        if self.items is None or len(self.items) == 0:
            self.items = pd.DataFrame(index=pd.Index(sorted(self.interactions["item_id"].unique()), name="item_id"))
        self.users = _validate_side_table(self.users, "user_id", self.spec.user_columns, self.name)
        self.items = _validate_side_table(self.items, "item_id", self.spec.item_columns, self.name)

    @property
    def num_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def num_items(self) -> int:
        return int(self.interactions["item_id"].nunique())

    def describe(self) -> dict:
        """Counts a person wants to see first: sizes, density, label coverage, time span."""
        df = self.interactions
        engaged = df["engaged"] == 1
        per_user = df.groupby("user_id").size()
        return {
            "name": self.name,
            "interactions": int(len(df)),
            "engaged": int(engaged.sum()),
            "impressions_not_engaged": int((~engaged).sum()),
            "users": self.num_users,
            "items": self.num_items,
            "catalogue_items": int(len(self.items)),
            "density": float(len(df) / max(1, self.num_users * self.num_items)),
            "rated": int(df["rating"].notna().sum()),
            "rating_mean": float(df["rating"].mean()) if df["rating"].notna().any() else None,
            "interactions_per_user_median": float(per_user.median()),
            "interactions_per_user_min": int(per_user.min()),
            "timestamp_min": int(df["timestamp"].min()),
            "timestamp_max": int(df["timestamp"].max()),
            "user_features": list(self.spec.user_columns),
            "item_features": list(self.spec.item_columns),
        }


def validate_interactions(df: pd.DataFrame, where: str = "interactions") -> pd.DataFrame:
    """Checks columns and types, coerces to the schema, and returns a clean copy.

    Raises DataError naming every missing column or the first ill-typed one.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing required column(s) {missing}; have {list(df.columns)}")
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for col in ("user_id", "item_id"):
        values = df[col].to_numpy()
        if pd.isna(values).any():
            raise DataError(f"{where}: column '{col}' has {int(pd.isna(values).sum())} empty value(s)")
        out[col] = df[col].astype(str).to_numpy()
    out["timestamp"] = _coerce_numeric(df["timestamp"], "timestamp", where, integer=True)
    if "rating" in df.columns:
        out["rating"] = _coerce_numeric(df["rating"], "rating", where, allow_nan=True)
    else:
        out["rating"] = np.nan
    if "engaged" in df.columns:
        engaged = _coerce_numeric(df["engaged"], "engaged", where)
        if not np.isin(engaged, (0, 1)).all():
            raise DataError(f"{where}: column 'engaged' must be 0 or 1")
        out["engaged"] = engaged.astype("int8")
    else:
        out["engaged"] = np.ones(len(df), dtype="int8")
    return out


def _coerce_numeric(series: pd.Series, col: str, where: str, integer: bool = False, allow_nan: bool = False) -> np.ndarray:
    if integer and pd.api.types.is_datetime64_any_dtype(series):
        return (series.astype("int64") // 10**9).to_numpy()
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & (series.notna() if allow_nan else True)
    if bad.any():
        first = series[bad].iloc[0]
        raise DataError(f"{where}: column '{col}' has {int(bad.sum())} non-numeric value(s), e.g. {first!r}")
    return values.to_numpy(dtype="int64" if integer else "float64")


def _validate_side_table(df: pd.DataFrame, id_col: str, columns: tuple[str, ...], where: str) -> pd.DataFrame:
    if df.index.name != id_col:
        if id_col not in df.columns:
            raise DataError(f"{where}: {id_col.split('_')[0]}s table needs an '{id_col}' column")
        df = df.set_index(id_col)
    df = df.copy()
    df.index = df.index.astype(str)
    df.index.name = id_col
    if df.index.duplicated().any():
        raise DataError(f"{where}: duplicate {id_col} values, e.g. {df.index[df.index.duplicated()][0]!r}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{where}: feature column(s) {missing} named in the feature spec are missing")
    return df


def split_multi(value: str) -> list[str]:
    """Splits a multi-valued categorical cell ('Action|Comedy') into tokens."""
    return [t for t in str(value).split(MULTI_VALUE_SEP) if t] if isinstance(value, str) else []
