"""The batch-scoring job's config: one frozen dataclass, every field a flag (no Beam or TensorFlow import)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BatchScoreConfig:
    """What to score, where to write it and how hard to try; saved into the output's job.json.

    Beam's own pipeline options (--runner, --direct_num_workers, --direct_running_mode,
    --project, ...) are not fields: they pass through to PipelineOptions untouched.
    """

    artifacts: str = ""           # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    version: str = "current"      # version name under it, "current" (the CURRENT pointer) or a version directory
    users: str = ""               # file of user ids (text, one per line; or .parquet with user_id); "" = every train user
    redis_url: str = ""           # write precomputed entries here, e.g. redis://localhost:6379/0 ("" = no Redis)
    output: str = ""              # directory for scores-*.parquet and job.json ("" = no Parquet)
    batch_size: int = 256         # users per model call; batches are fixed by the user ids, so scores are reproducible
    num_candidates: int = 0       # N retrieved and ranked per user (0 = the version's setting)
    top_k: int = 0                # Parquet rows per user, best first (0 = all N candidates)
    engagement_weight: float = -1.0  # blend weight for the Parquet ranks (< 0 = the version's default)
    quality_weight: float = -1.0     # blend weight for the Parquet ranks (< 0 = the version's default)
    num_shards: int = 1           # Parquet files; fixed, so a rerun overwrites the same file names
    redis_ttl_s: int = 0          # expiry of precomputed entries (0 = none: keys are namespaced by version)
    redis_retries: int = 3        # retries of a failed pipelined write (connection errors, timeouts)
    redis_backoff_s: float = 0.2  # first retry backoff; doubles per retry, capped at 16x
    redis_timeout_s: float = 5.0  # socket connect/read timeout per Redis round trip
    verify: bool = True           # verify the version's checksums before launching
    progress_s: float = 10.0      # seconds between progress log lines per worker
    events: str = ""              # event table (`recsys events export` output) merged into each user's history ("" = none)
    events_before: int = 0        # with --events: only events with timestamp < this, in seconds (0 = all)

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("num_candidates", "top_k", "redis_ttl_s", "redis_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("redis_timeout_s", "progress_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        if self.events_before < 0:
            raise ValueError(f"--events-before must be >= 0 (0 = every event), got {self.events_before}")
        if not self.redis_backoff_s >= 0:
            raise ValueError(f"--redis-backoff-s must be >= 0, got {self.redis_backoff_s}")
        if not (self.redis_url or self.output):
            raise ValueError("nothing to write: give --redis-url (precomputed entries for the server) and/or "
                             "--output (Parquet files for analysts and `recsys evaluate`)")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://",
                                                             "rediss+cluster://")):
            raise ValueError(f"--redis-url {self.redis_url!r} must start with redis://, rediss://, unix:// or "
                             "redis+cluster:// (a Redis Cluster: host:port[,host:port...])")


# --help text of the fields whose comment above is not self-explanatory.
HELP = {
    "artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts)",
    "version": "model version to score: a name, 'current' or a version directory",
    "users": "file of user ids to score (one per line, or .parquet with user_id); empty = every train user",
    "redis_url": "Redis to fill with PRECOMPUTED entries, e.g. redis://localhost:6379/0 or "
                 "redis+cluster://h1:7000,h2:7000 (empty = none, Parquet only)",
    "output": "directory for scores-*.parquet + job.json (empty = none, Redis only)",
    "batch_size": "users per model call (fixed batches: reruns write byte-identical entries)",
    "num_candidates": "N retrieved and ranked per user (0 = the version's setting)",
    "top_k": "Parquet rows per user, best first (0 = all N candidates)",
    "engagement_weight": "blend weight of the engagement head for the Parquet ranks (< 0 = the version's default)",
    "quality_weight": "blend weight of the quality head for the Parquet ranks (< 0 = the version's default)",
    "num_shards": "Parquet files (fixed, so a rerun overwrites the same names)",
    "redis_ttl_s": "expiry of precomputed entries in seconds (0 = none; keys are namespaced by version)",
    "redis_retries": "retries of a failed pipelined Redis write before its users are counted as lost",
    "events": "event table to merge into each user's history, as the server merges its live event list: "
              "`recsys events export`'s Parquet directory (or a Parquet/CSV file with user_id, item_id, timestamp "
              "and engaged or type); engaged items are also excluded from the user's candidates",
    "events_before": "with --events: use only events with timestamp < this (seconds since 1970; 0 = all)",
}


def _flag(name: str) -> str:
    return name.replace("_", "-")
