"""`recsys events export`: drain the event log (Redis Streams) into date-partitioned Parquet;
`recsys events log`: a client that sends events to a running server's LogEvents, with retries.

`events log` imports only gRPC and the generated stubs when it runs (no TensorFlow, FAISS or
pandas), like `recsys recommend`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from core.errors import RecsysError
from recsys.commands import COMMANDS, add_command

EVENT_TYPES = ("engagement", "impression", "rating")


@dataclasses.dataclass(frozen=True)
class EventsLogConfig:
    """One event from flags, or many from a JSON-lines file; where the server is; how to retry."""

    target: str = "localhost:50051"   # server host:port
    user: str = ""                    # the event's user id (one event from flags)
    item: str = ""                    # the event's item id
    type: Literal["engagement", "impression", "rating"] = "engagement"
    value: str = ""                   # the rating (needed by --type rating); "" = none
    timestamp: int = 0                # epoch seconds (0 = now)
    event_id: str = ""                # idempotency key ("" = a hash of the event's fields, timestamp included)
    request_id: str = ""              # RecommendResponse.request_id of the list the event answers
    position: int = 0                 # 1-based position in that list (with --request-id)
    file: str = ""                    # JSON lines, one event per line (keys as the flags: user_id, item_id, ...)
    batch_size: int = 500             # events per LogEvents call
    retries: int = 5                  # further attempts of a batch answered UNAVAILABLE or DEADLINE_EXCEEDED
    backoff_s: float = 0.2            # first wait between attempts (doubles each time, at most 5 s)
    timeout: float = 10.0             # deadline of each call, seconds
    tls_ca: str = ""                  # PEM CA of the server certificate (enables TLS)
    tls_cert: str = ""                # PEM client certificate, for mutual TLS
    tls_key: str = ""                 # PEM client private key, for mutual TLS
    tls_server_name: str = ""         # name to expect in the server certificate
    token_env: str = "RECSYS_TOKEN"   # environment variable holding the bearer token to send

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0 or self.timeout <= 0:
            raise ValueError("--backoff-s must be >= 0 and --timeout > 0")


_LOG_HELP = {
    "target": "server host:port", "user": "the event's user id (one event from flags)", "item": "the event's item id",
    "type": "engagement, impression or rating", "value": "the rating (required with --type rating)",
    "timestamp": "epoch seconds (0 = now)",
    "event_id": "idempotency key (default: a hash of user, item, type, value, timestamp, request id and position, "
                "so re-sending the same event with the same --timestamp is deduplicated)",
    "request_id": "the RecommendResponse.request_id of the list this event answers",
    "position": "1-based position of the item in that list",
    "file": "JSON lines, one event per line with keys user_id, item_id, type, value, timestamp, event_id, "
            "request_id, position (only user_id and item_id required)",
    "batch_size": "events per LogEvents call", "retries": "further attempts of a batch answered UNAVAILABLE or "
    "DEADLINE_EXCEEDED (safe: a retried batch is deduplicated by event id)",
    "backoff_s": "first wait between attempts (doubles, at most 5 s)", "timeout": "deadline of each call, seconds",
    "tls_ca": "PEM CA of the server certificate (enables TLS)", "tls_cert": "PEM client certificate, for mutual TLS",
    "tls_key": "PEM client private key, for mutual TLS", "tls_server_name": "name to expect in the server certificate",
    "token_env": "environment variable holding the bearer token to send",
}


def event_fields(user: str, item: str, type: str = "engagement", value: Any = None, timestamp: int = 0,
                 event_id: str = "", request_id: str = "", position: int = 0, where: str = "") -> dict[str, Any]:
    """One event as checked plain fields (a clear RecsysError naming `where` otherwise); timestamp 0 = now."""
    at = f"{where}: " if where else ""
    if not user or not item:
        raise RecsysError(f"{at}an event needs a user id and an item id (--user, --item)")
    if type not in EVENT_TYPES:
        raise RecsysError(f"{at}type must be one of {', '.join(EVENT_TYPES)}, got {type!r}")
    if value in ("", None):
        value = None
    else:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise RecsysError(f"{at}value must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise RecsysError(f"{at}value must be finite, got {value!r}")
    if type == "rating" and value is None:
        raise RecsysError(f"{at}a rating needs a value (--value)")
    try:
        timestamp, position = int(timestamp or time.time()), int(position or 0)
    except (TypeError, ValueError):
        raise RecsysError(f"{at}timestamp and position must be integers") from None
    if not event_id:
        key = "\x1f".join(map(str, (user, item, type, value, timestamp, request_id, position)))
        event_id = "cli-" + hashlib.sha1(key.encode()).hexdigest()[:20]
    return {"event_id": str(event_id), "user_id": str(user), "item_id": str(item), "type": type, "value": value,
            "timestamp": timestamp, "request_id": str(request_id or ""), "position": position}


def read_events_file(path: str) -> list[dict[str, Any]]:
    """The events of a JSON-lines file (blank lines skipped); RecsysError naming the file and line otherwise."""
    try:
        lines = pathlib.Path(path).read_text().splitlines()
    except OSError as e:
        raise RecsysError(f"--file {path}: {e.strerror or e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise RecsysError(f"--file {path} line {n}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise RecsysError(f"--file {path} line {n}: expected a JSON object")
        unknown = set(row) - {"event_id", "user_id", "item_id", "type", "value", "timestamp", "request_id", "position"}
        if unknown:
            raise RecsysError(f"--file {path} line {n}: unknown key(s) {sorted(unknown)}")
        out.append(event_fields(str(row.get("user_id", "")), str(row.get("item_id", "")),
                                str(row.get("type", "engagement")), row.get("value"), row.get("timestamp", 0),
                                row.get("event_id", ""), row.get("request_id", ""), row.get("position", 0),
                                where=f"--file {path} line {n}"))
    return out


def to_proto(fields: dict[str, Any]):
    from protos.recsys.v1 import recommender_pb2 as pb

    e = pb.Event(event_id=fields["event_id"], user_id=fields["user_id"], item_id=fields["item_id"],
                 type={"engagement": pb.ENGAGEMENT, "impression": pb.IMPRESSION, "rating": pb.RATING}[fields["type"]],
                 timestamp=fields["timestamp"], request_id=fields["request_id"], position=fields["position"])
    if fields["value"] is not None:
        e.value = fields["value"]
    return e


def send_events(stub, events: Sequence, batch_size: int = 500, retries: int = 5, backoff_s: float = 0.2,
                timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> tuple[int, int, int]:
    """LogEvents in batches of `batch_size`, each retried on UNAVAILABLE / DEADLINE_EXCEEDED up to `retries`
    times with doubling backoff (a retried batch carries the same event ids, so the server's dedupe
    makes it exact). Returns (accepted, duplicates, retries used); other errors propagate (grpc.RpcError)."""
    import grpc

    from protos.recsys.v1 import recommender_pb2 as pb

    accepted = duplicates = used = 0
    for lo in range(0, len(events), batch_size):
        request = pb.LogEventsRequest(events=list(events[lo:lo + batch_size]))
        wait = backoff_s
        for attempt in range(retries + 1):
            try:
                reply = stub.LogEvents(request, timeout=timeout)
                break
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or attempt == retries:
                    raise
                used += 1
                sleep(wait)
                wait = min(2 * wait, 5.0)
        accepted += reply.accepted
        duplicates += reply.duplicates
    return accepted, duplicates, used


def log_command(fields: dict[str, Any], target: str) -> str:
    """The `recsys events log` command line that sends this one event (what the demo prints)."""
    parts = ["recsys", "events", "log", "--target", target, "--user", fields["user_id"], "--item", fields["item_id"],
             "--type", fields["type"]]
    if fields["value"] is not None:
        parts += ["--value", f"{fields['value']:g}"]
    if fields["request_id"]:
        parts += ["--request-id", fields["request_id"], "--position", str(fields["position"])]
    return " ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    from workflows.events import EventsExportConfig

    p = sub.add_parser("events", help=COMMANDS["events"][1],
                       description="Event-log operations (the log recsys serve writes through LogEvents and its "
                                   "served lists).")
    esub = p.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    add_command(esub, "export", EventsExportConfig, run_export,
                help="export the log after the last checkpoint into date-partitioned Parquet",
                help_text={"export": {
                    "redis_url": "the Redis holding the log (recsys serve's --events-redis-url or --redis-url)",
                    "stream_key": "the log's stream key (recsys serve --events-stream-key)",
                    "output": "Parquet dataset directory: date=YYYY-MM-DD/part-*.parquet + _export/checkpoint.json",
                    "chunk_events": "log entries read, deduplicated and written per step (each step is checkpointed)",
                    "trim": "remove each exported chunk from the log once its checkpoint is saved",
                    "timeout_s": "per Redis command"}},
                description="Reads the event log from the output's checkpoint on, writes one row per event (served "
                            "lists become one impression row per item with its position, engaged = 0) into "
                            "OUTPUT/date=YYYY-MM-DD/, deduplicated by event_id against what is already there, "
                            "then advances the checkpoint. Safe to re-run, also after a crash: nothing is written "
                            "twice. `recsys train --source files --interactions OUTPUT` reads the result.")


    add_command(esub, "log", EventsLogConfig, run_log, help_text={"": _LOG_HELP},
                help="send events to a running server (LogEvents), retrying while it is unavailable",
                description="A command-line client of LogEvents: one event from --user/--item/--type[/--value], or "
                            "every line of a JSON-lines --file, in batches; a batch answered UNAVAILABLE (Redis or "
                            "the server down) or DEADLINE_EXCEEDED is retried with the same event ids, which the "
                            "server deduplicates, so nothing is lost or doubled. An invalid event is refused by the "
                            "server with its index (INVALID_ARGUMENT) and nothing of its batch is written.")


def run_log(config: EventsLogConfig, args: argparse.Namespace) -> int:
    if config.file and (config.user or config.item):
        raise RecsysError("give --file or --user/--item, not both")
    if config.file:
        fields = read_events_file(config.file)
        if not fields:
            raise RecsysError(f"--file {config.file} holds no events")
    else:
        fields = [event_fields(config.user, config.item, config.type, config.value, config.timestamp,
                               config.event_id, config.request_id, config.position)]
    import grpc

    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving.security import ClientSecurity, client_channel

    security = ClientSecurity(config.tls_ca, config.tls_cert, config.tls_key, config.tls_server_name,
                              os.environ.get(config.token_env, "") if config.token_env else "")
    with client_channel(config.target, security) as channel:
        try:
            accepted, duplicates, retried = send_events(pb_grpc.RecommenderStub(channel), [to_proto(f) for f in fields],
                                                        config.batch_size, config.retries, config.backoff_s,
                                                        config.timeout)
        except grpc.RpcError as e:
            print(f"recsys events log: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(f"sent {len(fields)} event(s): accepted {accepted}, duplicates {duplicates}"
          + (f" ({retried} retried call(s))" if retried else ""))
    return 0


def run_export(config, args: argparse.Namespace) -> int:
    from workflows.events import export

    s = export(config)
    print(f"exported {s.entries} log entries → {s.rows} rows ({s.duplicates} duplicates dropped) in {s.files} "
          f"file(s) under {config.export.output}; checkpoint {s.last_id or '(none)'}"
          + ("; WARNING: the log dropped entries before they were exported (raise --events-max-len or export "
             "more often)" if s.trimmed_before_export else ""))
    return 0
