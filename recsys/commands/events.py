"""`recsys events export`: drain the event log (Redis Streams) into date-partitioned Parquet."""
from __future__ import annotations

import argparse

from recsys.commands import COMMANDS, add_command


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


def run_export(config, args: argparse.Namespace) -> int:
    from workflows.events import export

    s = export(config)
    print(f"exported {s.entries} log entries → {s.rows} rows ({s.duplicates} duplicates dropped) in {s.files} "
          f"file(s) under {config.export.output}; checkpoint {s.last_id or '(none)'}"
          + ("; WARNING: the log dropped entries before they were exported (raise --events-max-len or export "
             "more often)" if s.trimmed_before_export else ""))
    return 0
