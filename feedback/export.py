"""Drains the event log into date-partitioned Parquet that `--source files --interactions DIR` reads as is.

Layout of `output/`:

  date=YYYY-MM-DD/part-{first log id}-{last log id}.parquet   one file per exported chunk and UTC day
  _export/checkpoint.json                                     the last log id exported (and totals)

Rows follow the interactions schema (features/schema.py) plus the log's context:
`user_id, item_id, timestamp, rating, engaged` (engagement and rating events → engaged 1,
a rating's value in `rating`; impressions, including every item of every list the server
served, → engaged 0, so training sees real shown-but-not-engaged negatives) and `event_id,
type, position, request_id, model_version, source, blend, log_id, arm` (arm: the experiment arm,
"" when none ran; files exported before it existed lack the column). A served list's items
become impressions with event ids "{request_id}:{position}", positions 1..k.

On a Redis Cluster the log is several stream shards (feedback/log.py); each is exported in
turn with its own checkpoint (`streams` in checkpoint.json) and its files are named
part-s{k}-{first}-{last}.parquet; the event-id dedupe below spans all of them.

Delivery: at least once from the log, exactly once in the output. Chunks are read in log
order after the checkpoint; before a chunk is written, rows whose event_id is already in
that day's files (or earlier in the chunk) are dropped; each file is written to a hidden
temporary name and renamed, and the checkpoint is replaced atomically after the chunk. A
crash anywhere leaves the checkpoint at the last complete chunk, and re-running re-reads
from there and drops what had been written since — no duplicates, nothing lost (as long
as the log still holds the entries: size --events-max-len for the time between exports).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import pathlib
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from core.errors import RecsysError
from core.redis_url import REDIS_ERRORS, connect
from feedback.events import ENGAGED_TYPES, ITEM_SEP, RATING

log = logging.getLogger(__name__)

CHECKPOINT = "_export/checkpoint.json"
SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()),
                    ("rating", pa.float64()), ("engaged", pa.int8()), ("event_id", pa.string()),
                    ("type", pa.string()), ("position", pa.int32()), ("request_id", pa.string()),
                    ("model_version", pa.string()), ("source", pa.string()), ("blend", pa.string()),
                    ("log_id", pa.string()), ("arm", pa.string())])


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """`recsys events export`: which log, where to, in what chunks."""

    redis_url: str = "redis://localhost:6379/0"  # the Redis holding the event log
    stream_key: str = "recsys:events"            # the stream (recsys serve --events-stream-key)
    output: str = "events"                       # the Parquet dataset directory (created if missing)
    chunk_events: int = 50_000                   # log entries read, deduplicated and written per step
    trim: bool = False                           # after each chunk is saved, remove it from the log (XTRIM MINID)
    timeout_s: float = 10.0                      # per Redis command

    def __post_init__(self) -> None:
        if self.chunk_events < 1:
            raise ValueError(f"--chunk-events must be >= 1, got {self.chunk_events}")
        if not self.output:
            raise ValueError("--output must name a directory")
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout-s must be > 0, got {self.timeout_s}")


@dataclasses.dataclass
class ExportSummary:
    entries: int = 0          # log entries read
    rows: int = 0             # rows written
    duplicates: int = 0       # rows dropped because their event_id was already exported
    files: int = 0
    last_id: str = ""         # the checkpoint after this run
    trimmed_before_export: bool = False  # the log lost entries after the checkpoint (MAXLEN) before this run


def _id_tuple(log_id: str) -> tuple[int, int]:
    ms, _, seq = log_id.partition("-")
    return int(ms), int(seq or 0)


def entries_to_frame(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> pd.DataFrame:
    """Stream entries (XRANGE's answer) → rows of SCHEMA, in log order, served lists exploded."""
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}

    def add(log_id, event_id, user, item, ts, rating, engaged, kind, position, request_id, ver, src, blend,
            arm) -> None:
        for name, value in zip(SCHEMA.names, (user, item, ts, rating, engaged, event_id, kind, position, request_id,
                                              ver, src, blend, log_id, arm)):
            cols[name].append(value)

    for raw_id, raw in entries:
        log_id = raw_id.decode()
        f = {k.decode(): v.decode() for k, v in raw.items()}
        kind, user, ts = f.get("type", ""), f.get("user", ""), int(f.get("ts", "0") or 0)
        req, ver, src, blend = f.get("req", ""), f.get("ver", ""), f.get("src", ""), f.get("blend", "")
        arm = f.get("arm", "")
        if kind == "served":
            for pos, item in enumerate(f.get("item", "").split(ITEM_SEP) if f.get("item") else [], 1):
                add(log_id, f"{req}:{pos}", user, item, ts, np.nan, 0, "impression", pos, req, ver, src, blend, arm)
            continue
        rating = float(f["value"]) if kind == RATING and f.get("value") else np.nan
        add(log_id, f.get("id", ""), user, f.get("item", ""), ts, rating, 1 if kind in ENGAGED_TYPES else 0, kind,
            int(f.get("pos", "0") or 0), req, ver, src, blend, arm)
    return pa.table(cols, schema=SCHEMA).to_pandas()


def read_log(client: redis.Redis, stream_key: str, after: str = "", count: int = 50_000,
             until: str = "+") -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Up to `count` entries after log id `after` ("" = from the start) up to `until`, in log order."""
    start = f"({after}" if after else "-"
    return client.xrange(stream_key, min=start, max=until, count=count)


def _day_dir(output: pathlib.Path, day: str) -> pathlib.Path:
    return output / f"date={day}"


def _exported_ids(day_dir: pathlib.Path) -> set[str]:
    if not day_dir.is_dir():
        return set()
    ids: set[str] = set()
    for path in sorted(day_dir.glob("*.parquet")):
        ids.update(pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist())
    return ids


def _write_atomic(path: pathlib.Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_checkpoint(output: pathlib.Path) -> dict:
    path = output / CHECKPOINT
    if not path.exists():
        return {"last_id": "", "entries": 0, "rows": 0}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecsysError(f"{path}: unreadable export checkpoint ({e}); restore it, or delete it together with "
                          f"{output} to export the whole log again") from e


def log_streams(client, stream_key: str) -> list[str]:
    """The streams of the log at `stream_key`: itself on one Redis; on a Redis Cluster its shards
    `stream_key:{s<k>}` (feedback/log.py), found by SCAN over every master, in shard order."""
    if not isinstance(client, redis.RedisCluster):
        return [stream_key]
    prefix = stream_key + ":{s"
    found = {k.decode() if isinstance(k, bytes) else k for k in
             client.scan_iter(match=stream_key.replace("[", "\\[") + ":{s*}", count=1000, _type="STREAM")}
    shards = [k for k in found if k.startswith(prefix) and k.endswith("}") and k[len(prefix):-1].isdigit()]
    return sorted(shards, key=lambda k: int(k[len(prefix):-1]))


def export_events(config: ExportConfig, client: redis.Redis | None = None) -> ExportSummary:
    """Exports every log entry after the checkpoint (up to the log's end when the run started).

    On a Redis Cluster every stream shard is exported in turn with its own checkpoint
    (`streams` in the checkpoint file); rows are deduplicated by event id across all of them
    (a LogEvents retry can append an event to two shards)."""
    output = pathlib.Path(config.output)
    own = client is None
    if client is None:
        try:
            client = connect(config.redis_url, flag="--redis-url", socket_timeout=config.timeout_s)
        except ValueError as e:
            raise RecsysError(str(e)) from e
    summary = ExportSummary()
    try:
        checkpoint = _read_checkpoint(output)
        exported: dict[str, set[str]] = {}  # day → event ids in its files (read once per run, then kept up to date)
        try:
            streams = log_streams(client, config.stream_key)
        except REDIS_ERRORS as e:
            raise RecsysError(f"cannot read the event log at {config.redis_url} ({type(e).__name__}: {e}); "
                              "nothing was exported, re-run when Redis is back") from e
        for stream in streams:
            checkpoint = _export_stream(client, config, stream, output, checkpoint, summary, exported)
        return summary
    finally:
        if own:
            client.close()


def _export_stream(client, config: ExportConfig, stream: str, output: pathlib.Path, checkpoint: dict,
                   summary: ExportSummary, exported: dict[str, set[str]]) -> dict:
    """Exports one stream after its checkpoint; returns the checkpoint as saved after its last chunk."""
    single = stream == config.stream_key  # the one stream of a standalone log: its checkpoint is "last_id"
    after = checkpoint.get("last_id", "") if single else checkpoint.get("streams", {}).get(stream, "")
    tag = "" if single else stream[len(config.stream_key) + 2:-1] + "-"  # "s3-" in a shard's file names
    try:
        if not client.exists(stream):
            summary.last_id = after
            log.info("the log %s is empty or missing; nothing to export", stream)
            return checkpoint
        info = client.xinfo_stream(stream)
        end = info["last-generated-id"]
        end = end.decode() if isinstance(end, bytes) else str(end)
        deleted = info.get("max-deleted-entry-id", b"0-0")
        deleted = deleted.decode() if isinstance(deleted, bytes) else str(deleted)
    except REDIS_ERRORS as e:
        raise RecsysError(f"cannot read the event log at {config.redis_url} ({type(e).__name__}: {e}); "
                          "nothing more was exported, re-run when Redis is back") from e
    if _id_tuple(deleted) > (_id_tuple(after) if after else (0, 0)) and not config.trim:
        summary.trimmed_before_export = True
        log.warning("the log %s dropped entries after the checkpoint %s (its max length was reached before this "
                    "export, last deleted id %s): export more often or raise --events-max-len", stream,
                    after or "(none)", deleted)
    while True:
        try:
            entries = read_log(client, stream, after, config.chunk_events, end)
        except REDIS_ERRORS as e:
            raise RecsysError(f"reading the event log {stream} failed after {after or 'the start'} "
                              f"({type(e).__name__}: {e}); what was exported is checkpointed, re-run to "
                              "continue") from e
        if not entries:
            break
        first, last = entries[0][0].decode(), entries[-1][0].decode()
        frame = entries_to_frame(entries)
        written = _write_chunk(output, frame, f"{tag}{first}-{last}", summary, exported)
        summary.entries += len(entries)
        checkpoint = {**checkpoint, "entries": checkpoint.get("entries", 0) + len(entries),
                      "rows": checkpoint.get("rows", 0) + written, "updated": time.time()}
        if single:
            checkpoint["last_id"] = last
        else:
            checkpoint["streams"] = {**checkpoint.get("streams", {}), stream: last}
        _write_atomic(output / CHECKPOINT, lambda p, c=checkpoint: p.write_text(json.dumps(c, indent=1)))
        after = last
        if config.trim:
            client.xtrim(stream, minid=_next_id(last))
    summary.last_id = after if single else ",".join(f"{k}={v}" for k, v in checkpoint.get("streams", {}).items())
    return checkpoint


def _next_id(log_id: str) -> str:
    ms, seq = _id_tuple(log_id)
    return f"{ms}-{seq + 1}"


def _write_chunk(output: pathlib.Path, frame: pd.DataFrame, name: str, summary: ExportSummary,
                 exported: dict[str, set[str]]) -> int:
    if frame.empty:
        return 0
    before = len(frame)
    frame = frame.drop_duplicates("event_id", keep="first")
    summary.duplicates += before - len(frame)
    days = pd.to_datetime(frame["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    written = 0
    for day, rows in frame.groupby(days.to_numpy(), sort=True):
        day_dir = _day_dir(output, str(day))
        seen = exported.get(str(day))
        if seen is None:
            seen = exported[str(day)] = _exported_ids(day_dir)
        fresh = rows[~rows["event_id"].isin(seen)] if seen else rows
        summary.duplicates += len(rows) - len(fresh)
        if fresh.empty:
            continue
        table = pa.Table.from_pandas(fresh.reset_index(drop=True), schema=SCHEMA, preserve_index=False)
        _write_atomic(day_dir / f"part-{name}.parquet", lambda p, t=table: pq.write_table(t, p))
        seen.update(fresh["event_id"])
        written += len(fresh)
        summary.files += 1
    summary.rows += written
    return written


def day_of(timestamp: int) -> str:
    """The UTC date partition a timestamp lands in."""
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d")
