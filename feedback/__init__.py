"""Feedback stage: the durable event log (Redis Streams), users' streamed engagements and the export.

Free of gRPC: serving converts protobuf events into `Event`s and calls `EventLog`; the
`recsys events export` workflow drains the log into Parquet with `export_events`. Importing
this package opens no connection and imports neither Redis nor pandas (names resolve lazily).
"""
from __future__ import annotations

from core.lazy import lazy_exports

_LAZY = {
    "ENGAGED_TYPES": "feedback.events", "EVENT_TYPES": "feedback.events", "Event": "feedback.events",
    "InvalidEventError": "feedback.events", "validate_events": "feedback.events",
    "ExportConfig": "feedback.export", "ExportSummary": "feedback.export", "export_events": "feedback.export",
    "read_log": "feedback.export",
    "EventLog": "feedback.log", "EventLogConfig": "feedback.log", "EventLogUnavailableError": "feedback.log",
    "ServedList": "feedback.log", "ServedListLogger": "feedback.log", "seen_key": "feedback.log",
    "state_key": "feedback.log",
    "UserVersions": "feedback.versions",
}
__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
