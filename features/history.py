"""Batch history + streamed engagements → the one history every model input reads.

The user tower's and the ranker's "history" inputs, the Beam job and offline evaluation
all build a user's history with `merge_history`, so a user's recent engagements mean the
same thing online and offline.
"""
from __future__ import annotations

import pathlib
from collections.abc import Container, Mapping, Sequence

import numpy as np
import pandas as pd

from core.errors import DataError
from features.files import read_table


def merge_history(batch: Sequence[str], recent: Sequence[str], length: int,
                  known: Container[str] | None = None) -> tuple[str, ...]:
    """A user's batch history merged with their streamed engagements, oldest first.

    Args:
      batch: the train history, oldest first (FeatureStore.history order; taken as given,
        never filtered, so an empty `recent` returns exactly `batch[-length:]` for a
        history without repeats).
      recent: streamed engagements, NEWEST first (may repeat items, may hold ids the
        model does not know).
      length: how many items to keep (<= 0: none).
      known: if given, ids of `recent` not in it are dropped (an item without an
        embedding carries no history signal and would only take a slot).

    Returns:
      The last `length` distinct items of `batch` followed by `reversed(recent)`, each item
      once at its newest position, oldest first.
    """
    if length <= 0:
        return ()
    out: list[str] = []
    kept: set[str] = set()
    for item in recent:  # newest first
        item = str(item)
        if item in kept or (known is not None and item not in known):
            continue
        kept.add(item)
        out.append(item)
        if len(out) == length:
            return tuple(reversed(out))
    for item in reversed(batch):
        item = str(item)
        if item in kept:
            continue
        kept.add(item)
        out.append(item)
        if len(out) == length:
            break
    return tuple(reversed(out))


# -- streamed events read offline (the Beam job, offline evaluation, benches) -------------------
# The event table `recsys events export` writes (date-partitioned Parquet; CSV works too): one
# row per event with at least these columns. Only positives enter a history: rows with
# engaged == 1 if the table has `engaged`, else rows whose `type` is one of ENGAGED_EVENT_TYPES.
EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
ENGAGED_EVENT_TYPES = ("engagement", "rating")


def _event_table(path: str | pathlib.Path, flag: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(the event table with repeated event_ids kept once, its engaged mask): engaged == 1 if the table
    has `engaged`, else `type` in ENGAGED_EVENT_TYPES. DataError naming `flag` when a column is missing."""
    table = read_table(path, flag)
    missing = [c for c in EVENT_COLUMNS if c not in table.columns]
    if "engaged" not in table.columns and "type" not in table.columns:
        missing.append("engaged (or type)")
    if missing:
        raise DataError(f"{flag} {path}: missing column(s) {', '.join(missing)}; an event table has "
                        f"{', '.join(EVENT_COLUMNS)} and engaged or type (recsys events export writes them)")
    if "event_id" in table.columns:
        table = table.drop_duplicates("event_id", keep="first")
    if "engaged" in table.columns:
        engaged = pd.to_numeric(table["engaged"], errors="coerce").fillna(0).to_numpy() == 1
    else:
        engaged = table["type"].astype(str).isin(ENGAGED_EVENT_TYPES).to_numpy()
    return table, engaged


def read_engagements(path: str | pathlib.Path, before: int = 0, flag: str = "--events") -> pd.DataFrame:
    """The engagement rows of an event table, oldest first: columns user_id, item_id, timestamp (str, str, int64).

    Args:
      path: a Parquet file or directory (hive-partitioned like `date=YYYY-MM-DD/`; files
        and directories starting with "_" or "." are skipped), or a CSV file.
      before: keep events with timestamp < before (0 = all).
      flag: the flag named in errors.

    Rows repeating an `event_id` (if the table has one) are kept once. Ties in timestamp keep
    the table's order (a later row is the newer event).

    Raises:
      DataError: the table is missing or unreadable, lacks a column, or has non-integer timestamps.
    """
    table, engaged = _event_table(path, flag)
    table = table.loc[engaged, list(EVENT_COLUMNS)]
    try:
        ts = pd.to_numeric(table["timestamp"], errors="raise").astype("int64")
    except (ValueError, TypeError) as e:
        raise DataError(f"{flag} {path}: column timestamp must hold integer seconds: {e}") from e
    out = pd.DataFrame({"user_id": table["user_id"].astype(str).to_numpy(),
                        "item_id": table["item_id"].astype(str).to_numpy(), "timestamp": ts.to_numpy()})
    if before:
        out = out.loc[out["timestamp"] < before]
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def recent_by_user(engagements: pd.DataFrame, before: Mapping[str, int] | None = None) -> dict[str, tuple[str, ...]]:
    """user_id → engaged item ids, NEWEST first (the `recent` form of merge_history and the pipeline).

    Args:
      engagements: read_engagements' frame (oldest first).
      before: optional per-user cut-off: user u keeps events with timestamp < before[u]
        (users not in it keep none).
    """
    frame = engagements
    if before is not None:
        cut = frame["user_id"].map(before)
        frame = frame.loc[cut.notna().to_numpy() & (frame["timestamp"].to_numpy() < cut.fillna(0).to_numpy())]
    return {str(u): tuple(items[::-1]) for u, items in
            frame.groupby("user_id", sort=False)["item_id"].agg(list).items()}


def read_recent(path: str | pathlib.Path, before: int = 0, flag: str = "--events") -> dict[str, tuple[str, ...]]:
    """read_engagements → recent_by_user: each user's engagements of the table, newest first."""
    return recent_by_user(read_engagements(path, before, flag))


def read_event_interactions(path: str | pathlib.Path, before: int = 0, flag: str = "--events") -> pd.DataFrame:
    """An event table (`recsys events export`) as interaction rows of the schema (features.schema):
    user_id, item_id, timestamp, rating, engaged — engagements and ratings engaged 1 (a rating's value in
    `rating`), impressions engaged 0 (shown, not engaged), so training sees the served negatives.

    Args:
      path, flag: as in read_engagements.
      before: keep events with timestamp < before (0 = all).

    Rows repeating an `event_id` are kept once; the result is in time order (ties keep the table's order).
    """
    from features.schema import validate_interactions

    table, engaged = _event_table(path, flag)
    rating = (pd.to_numeric(table["rating"], errors="coerce").to_numpy(dtype="float64") if "rating" in table.columns
              else np.full(len(table), np.nan))
    frame = pd.DataFrame({"user_id": table["user_id"].astype(str).to_numpy(),
                          "item_id": table["item_id"].astype(str).to_numpy(),
                          "timestamp": table["timestamp"].to_numpy(), "rating": rating,
                          "engaged": engaged.astype("int8")})
    frame = validate_interactions(frame, where=f"{flag} {path}")
    if before:
        frame = frame.loc[frame["timestamp"] < before]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
