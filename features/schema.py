"""The one data schema every source produces and every stage consumes (DESIGN.md §3).

Interactions are a DataFrame with exactly these columns:

  user_id    str      raw user id
  item_id    str      raw item id
  timestamp  int64    seconds since 1970-01-01 UTC (or any monotone clock); splits are temporal
                      on it. validate_interactions also accepts ISO-8601 strings and datetimes.
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


def validate_interactions(df: pd.DataFrame, where: str = "interactions",
                          file_columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Checks columns and types, coerces to the schema, and returns a clean copy.

    Timestamps may be epoch seconds (numbers, kept as they are: floats are truncated) or
    ISO-8601 strings ("2024-01-31", "2024-01-31T12:00:00", "2024-01-31T12:00:00+02:00");
    strings without a zone are taken as UTC, strings with one are converted to UTC, and
    sub-second parts are floored, so both forms give the same int64 seconds. Datetime
    columns (e.g. from Parquet) are converted the same way. One column must use one form.

    Args:
      df: at least one row with user_id, item_id, timestamp; optional rating, engaged.
      where: names the input in messages, e.g. "--interactions clicks.csv".
      file_columns: schema name → the input's own column name, when they were renamed, so
        messages name the column the user sees.

    Raises DataError naming every missing column, or the first ill-typed column with a count,
    an example value and its data row (1-based, not counting a header).
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing required column(s) {missing}; have {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"{where}: no interactions (0 rows); a source needs at least one")
    names = file_columns or {}
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for col in ("user_id", "item_id"):
        empty = df[col].isna().to_numpy()
        if empty.any():
            raise DataError(f"{where}: column {_label(col, names)} has {int(empty.sum())} empty value(s), "
                            f"e.g. {_example(df[col], empty)}; every interaction needs both ids")
        out[col] = df[col].astype(str).to_numpy()
    out["timestamp"] = _coerce_timestamp(df["timestamp"], where, _label("timestamp", names))
    if "rating" in df.columns:
        out["rating"] = coerce_numeric(df["rating"], where, _label("rating", names), allow_empty=True,
                                       expected="ratings must be numbers (leave a cell empty for unrated): fix or remove "
                                                "those rows")
    else:
        out["rating"] = np.nan
    if "engaged" in df.columns:
        label = _label("engaged", names)
        engaged = coerce_numeric(_bool_words_to_digits(df["engaged"]), where, label,
                                 expected="engaged must be 1 (engaged) or 0 (shown, not engaged): fix or remove those rows")
        not_binary = ~np.isin(engaged, (0, 1))
        if not_binary.any():
            raise DataError(f"{where}: column {label} must be 0 or 1; {int(not_binary.sum())} value(s) are not, "
                            f"e.g. {_example(df['engaged'], not_binary)}")
        out["engaged"] = engaged.astype("int8")
    else:
        out["engaged"] = np.ones(len(df), dtype="int8")
    return out


def coerce_numeric(series: pd.Series, where: str, label: str, allow_empty: bool = False,
                   expected: str = "expected numbers: fix or remove those rows") -> np.ndarray:
    """`series` as float64, or a DataError with the count, an example and its data row.

    Args:
      label: the column as shown to the user, e.g. "'rating'".
      allow_empty: empty cells become NaN instead of being an error.
      expected: what the column should hold and what to do, ending the message.
    """
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna().to_numpy() & (series.notna().to_numpy() if allow_empty else True)
    if bad.any():
        raise DataError(f"{where}: column {label} has {int(bad.sum())} non-numeric value(s), e.g. "
                        f"{_example(series, bad)}; {expected}")
    return values.to_numpy(dtype="float64")


_EPOCH = pd.Timestamp(0, tz="UTC")
_ISO_HINT = "use epoch seconds or ISO-8601 such as 2024-01-31T12:00:00Z"


def _coerce_timestamp(series: pd.Series, where: str, label: str) -> np.ndarray:
    """int64 seconds from epoch numbers (as given), ISO-8601 strings or datetimes (both → UTC)."""
    empty = series.isna().to_numpy()
    if empty.any():
        raise DataError(f"{where}: column {label} has {int(empty.sum())} empty value(s), e.g. "
                        f"{_example(series, empty)}; every interaction needs a time: fill them in or drop those rows")
    if pd.api.types.is_datetime64_any_dtype(series):
        return _utc_seconds(series)
    values = pd.to_numeric(series, errors="coerce")
    is_number = values.notna().to_numpy()
    if is_number.all():  # epoch numbers: exactly the pre-ISO behaviour
        return values.to_numpy(dtype="int64")
    parsed = pd.to_datetime(series[~is_number].astype(str), utc=True, format="ISO8601", errors="coerce")
    bad = np.zeros(len(series), dtype=bool)
    bad[~is_number] = parsed.isna().to_numpy()
    if bad.any():
        raise DataError(f"{where}: column {label} has {int(bad.sum())} value(s) that are neither epoch seconds "
                        f"nor ISO-8601 times, e.g. {_example(series, bad)}; {_ISO_HINT}: fix or remove those rows")
    if is_number.any():
        raise DataError(f"{where}: column {label} mixes epoch numbers ({_example(series, is_number)}) and ISO-8601 "
                        f"times ({_example(series, ~is_number)}); use one form for the whole column")
    return _utc_seconds(parsed)


def _utc_seconds(times: pd.Series) -> np.ndarray:
    """Whole seconds since 1970-01-01 UTC (floored) of a datetime Series; naive times are UTC."""
    times = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
    return ((times - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype="int64")


def _bool_words_to_digits(series: pd.Series) -> pd.Series:
    """'true'/'false' (any case, as CSV writers spell booleans) → '1'/'0'; other values unchanged."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return series
    words = series.astype(str).str.strip().str.lower()
    return series.where(~words.isin(("true", "false")), words.map({"true": "1", "false": "0"}))


def _label(col: str, file_columns: dict[str, str]) -> str:
    source = file_columns.get(col)
    return f"'{source}' (mapped to {col})" if source and source != col else f"'{col}'"


def _example(series: pd.Series, mask) -> str:
    """The first flagged value and its 1-based data row: "'yesterday' in data row 2" ("in data row 2" if empty)."""
    pos = int(np.flatnonzero(np.asarray(mask))[0])
    value = series.iloc[pos]
    if pd.isna(value):
        return f"in data row {pos + 1}"
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value!r} in data row {pos + 1}"


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
