"""Writes event tables the way `recsys events export` lays them out (date=YYYY-MM-DD/part-*.parquet)."""
from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Sequence

import pandas as pd

# (user_id, item_id, type, timestamp[, value])
Row = tuple


def write_events(directory: pathlib.Path, rows: Sequence[Row], engaged_column: bool = True) -> pathlib.Path:
    """One Parquet file per UTC day under `directory`, rows in the given order; event ids e0, e1, ..."""
    frame = pd.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "type": [r[2] for r in rows],
        "timestamp": [int(r[3]) for r in rows],
        "rating": [float(r[4]) if len(r) > 4 else float("nan") for r in rows],
        "event_id": [f"e{i}" for i in range(len(rows))]})
    if engaged_column:
        frame["engaged"] = frame["type"].isin(["engagement", "rating"]).astype("int8")
    days = frame["timestamp"].map(lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d"))
    for day, part in frame.groupby(days, sort=True):
        out = directory / f"date={day}"
        out.mkdir(parents=True, exist_ok=True)
        part.to_parquet(out / "part-0-1.parquet", index=False)
    (directory / "_export").mkdir(parents=True, exist_ok=True)
    (directory / "_export" / "checkpoint.json").write_text('{"last_id": "1-0"}')
    return directory
