"""Logging for the batch job: Beam's per-bundle INFO chatter filtered out of the launching process's log."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


class BeamLogFilter(logging.Filter):
    """Keeps this job's own log lines and Beam's warnings, for the launching process.

    Beam logs a line per bundle, per harness start and per model load at INFO, and a
    "Resource module is not available" warning per model load (its optional
    ModelManager import fails, not `resource`); at INFO they bury the progress log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("apache_beam") and record.name != "root":
            return True
        text = record.getMessage()
        if "Resource module is not available" in text or "apitools not found" in text:
            return False
        if record.name.endswith("local_job_service") and text.startswith("Worker: "):
            # A local worker process's log line, forwarded: the process printed it to stderr already.
            return False
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def quiet_beam_logs() -> Iterator[None]:
    """Installs BeamLogFilter on the root logger's handlers for the duration (a no-op at DEBUG)."""
    root = logging.getLogger()
    if root.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    flt = BeamLogFilter()
    for h in root.handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in root.handlers:
            h.removeFilter(flt)


def quiet_worker_logs() -> None:
    """In a local worker process (multi_processing): BeamLogFilter on its stderr handler, once.

    Such a worker prints straight to the terminal — a root StreamHandler that Beam's own
    import-time `logging.warning` created — at INFO, and gets no pipeline options to set
    its level from. Called from the job's DoFn/ModelHandler setup, never at import.
    """
    if "CONTROL_API_SERVICE_DESCRIPTOR" not in os.environ:  # not an SDK worker process
        return
    for h in logging.getLogger().handlers:
        if type(h) is logging.StreamHandler and not any(isinstance(f, BeamLogFilter) for f in h.filters):
            h.addFilter(BeamLogFilter())
