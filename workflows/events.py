"""Event-log workflows: `recsys events export` drains the log into Parquet for the next training run.

The output directory is what `recsys train --source files --interactions DIR` reads:
engagements and ratings as positives, every impression (the server's own served lists and
clients' impressions) as an engaged = 0 row with its position. See feedback/export.py for
the layout and the exactly-once argument.
"""
from __future__ import annotations

import dataclasses
import logging

from core.config import config_errors, section
from feedback import ExportConfig, ExportSummary, export_events

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EventsExportConfig:
    """`recsys events export`: one section, no flag prefix."""

    export: ExportConfig = section(ExportConfig, title="export")


def export(config: EventsExportConfig) -> ExportSummary:
    """Exports every log entry after the output's checkpoint; safe to re-run at any time (also after a crash)."""
    with config_errors("export"):
        config = dataclasses.replace(config)  # re-validates a config built by hand
    summary = export_events(config.export)
    log.info("exported %d log entries → %d rows (%d duplicates dropped, %d files) into %s; checkpoint %s",
             summary.entries, summary.rows, summary.duplicates, summary.files, config.export.output,
             summary.last_id or "(none)")
    return summary
