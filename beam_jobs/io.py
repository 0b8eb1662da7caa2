"""Batch scoring I/O: reading user ids, writing Redis entries and Parquet, reading the Parquet back.

Redis (one server, or a Redis Cluster with a `redis+cluster://` URL): `pipeline.precomputed_key(version,
user)` (the user's hash tag: `recsys:<v>:pre:{<u>}`) → `CandidateSet.to_bytes()`, exactly
the entry the server answers as PRECOMPUTED. Parquet: one row per (user, rank) of the
blended top-k, schema `SCORES_SCHEMA`, files `scores-SSSSS-of-NNNNN.parquet`.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from beam_jobs.logs import quiet_worker_logs
from core import layout
from core.errors import DataError
from core.redis_url import REDIS_ERRORS, connect

log = logging.getLogger(__name__)

COUNTER_NAMESPACE = "recsys.batch_score"
SCORES_PREFIX = "scores"
SCORES_SUFFIX = ".parquet"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
FAILED_USERS_FILE = "failed_redis_users.txt"
MAX_ID_BYTES = 256  # serving.validation.RequestLimits.max_id_length: longer ids can never be requested

SCORES_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("rank", pa.int32()),             # 1 = best, by the blend with the job's weights
    ("item_id", pa.string()),
    ("score", pa.float64()),          # the blended score that decided the rank
    ("engagement", pa.float32()),     # engagement head, in [0, 1]
    ("quality", pa.float32()),        # quality head, in [0, 1]
    ("retrieval_score", pa.float32()),  # two-tower inner product
    ("model_version", pa.string()),
])


def counter(name: str) -> beam.metrics.metric.Metrics.DelegatingCounter:
    return beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name)


# -- reading user ids ----------------------------------------------------------------------------
class ReadUsers(beam.PTransform):
    """User ids from a file (a path or a URL Beam's FileSystems can open: file://, gs://, s3://, ...): text
    with one id per line (a first line `user_id` is a header), or a Parquet file with a `user_id` column.

    Read in a ParDo through FileSystems rather than with ReadFromText/ReadFromParquet: Beam's Dask
    runner cannot run Read sources (beam_jobs/dask_runner.py), and one reader serves every runner.
    Text lines are bytes, decoded leniently in ValidateUsers: a stray non-UTF-8 line is one unknown id.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, pbegin):
        return pbegin | "File" >> beam.Create([self.path]) | "ReadIds" >> beam.FlatMap(read_id_lines)


def read_id_lines(path: str) -> list:
    """The raw ids of a --users file, as ReadUsers emits them: bytes per text line ('\n' or '\r\n' ends a
    line, as ReadFromText splits), or str per Parquet row ("" for a null)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:  # compression by extension (.gz, .bz2, ...), as ReadFromText
        data = f.read()
    if path.endswith(".parquet"):
        import io

        column = pq.read_table(io.BytesIO(data), columns=["user_id"]).column("user_id").to_pylist()
        return ["" if v is None else str(v) for v in column]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


class TrainUsers(beam.DoFn):
    """shard s → the version's train users (its user_id vocabulary) s, s+n, s+2n, ... (n shards)."""

    def __init__(self, version_dir: str, shards: int) -> None:
        self.version_dir = version_dir
        self.shards = shards

    def setup(self) -> None:
        quiet_worker_logs()
        from beam_jobs.files import local_version
        from features import FeatureStore

        self._users = FeatureStore.load(layout.features_dir(local_version(self.version_dir))).vocabularies["user_id"].tokens

    def process(self, shard):
        yield from self._users[shard::self.shards]


class ValidateUsers(beam.DoFn):
    """Keeps ids the server could be asked for and the version knows; counts the rest.

    Invalid (counted `users_invalid`): empty, a header line `user_id`, longer than 256
    UTF-8 bytes, control characters. Unknown (counted `users_unknown`): not a train user
    of the version — the server answers those from popularity, never from a precomputed
    entry, so there is nothing to precompute.
    """

    def __init__(self, version_dir: str) -> None:
        self.version_dir = version_dir
        self.read = counter("users_read")
        self.invalid = counter("users_invalid")
        self.unknown = counter("users_unknown")

    def setup(self) -> None:
        quiet_worker_logs()
        from beam_jobs.files import local_version
        from features import FeatureStore

        store = FeatureStore.load(layout.features_dir(local_version(self.version_dir)))
        self._known = frozenset(store.vocabularies["user_id"].tokens)
        self._logged = 0

    def process(self, line):
        self.read.inc()
        user = (line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line).strip()
        if not user or user == "user_id" or len(user.encode("utf-8")) > MAX_ID_BYTES or not user.isprintable():
            self.invalid.inc()
            self._log("invalid", user)
            return
        if user not in self._known:
            self.unknown.inc()
            self._log("unknown (not a train user of this version)", user)
            return
        yield user

    def _log(self, what: str, user: str) -> None:
        if self._logged < 5:
            self._logged += 1
            log.warning("skipping %s user id %r%s", what, user[:80], "; further skips are only counted"
                        if self._logged == 5 else "")


# -- Redis ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """Where and how the precomputed entries are written."""

    url: str
    ttl_s: int = 0            # 0 = no expiry
    retries: int = 3
    backoff_s: float = 0.2
    timeout_s: float = 5.0


class WriteCandidatesToRedis(beam.DoFn):
    """Writes each scored batch's entries with one pipelined round trip; emits failed user ids.

    A batch whose write fails with a connection error or timeout is retried (redis-py
    `Retry` with exponential backoff; SET is idempotent, so a replayed write is harmless).
    If it still fails, or Redis refuses it (e.g. out of memory), its users are counted in
    `redis_failed`, logged and emitted on the `failed` output — never silently dropped; the
    job then exits non-zero.
    """

    FAILED = "failed"

    def __init__(self, target: RedisTarget, model_version: str) -> None:
        self.target = target
        self.model_version = model_version
        self.writes = counter("redis_writes")
        self.failed = counter("redis_failed")
        self.retried = counter("redis_retries")

    def setup(self) -> None:
        quiet_worker_logs()
        t = self.target
        # The client itself does not retry: the whole pipelined batch is retried below, and
        # each failed attempt is counted.
        # A redis+cluster:// URL gives a RedisCluster client (core/redis_url.py); its pipeline splits the batch
        # by node, and a failed node makes it re-read the slot map before the retry below.
        self._client = connect(t.url, flag="--redis-url", socket_timeout=t.timeout_s,
                               retry=Retry(ExponentialBackoff(), 0), blocking_pool=False)
        self._retry = Retry(ExponentialBackoff(cap=16 * t.backoff_s, base=t.backoff_s), t.retries,
                            supported_errors=(redis.ConnectionError, redis.TimeoutError, TimeoutError,
                                              ConnectionError, redis.exceptions.ClusterError,
                                              redis.exceptions.RedisClusterException))

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()

    def process(self, scored):
        from pipeline import precomputed_key

        attempts = [0]

        def write() -> None:
            attempts[0] += 1
            pipe = self._client.pipeline(transaction=False)
            for user, cands in scored:
                pipe.set(precomputed_key(self.model_version, user), cands.to_bytes(),
                         ex=self.target.ttl_s or None)
            pipe.execute()

        def on_failure(error: Exception) -> None:
            if attempts[0] <= self.target.retries:
                self.retried.inc()
                log.warning("redis write of %d entries failed (%s: %s); retrying (%d of %d)", len(scored),
                            type(error).__name__, error, attempts[0], self.target.retries)

        try:
            self._retry.call_with_retry(write, on_failure)
        except REDIS_ERRORS as e:
            self.failed.inc(len(scored))
            log.error("redis write of %d entries failed after %d attempt(s): %s: %s", len(scored), attempts[0],
                      type(e).__name__, e)
            for user, _ in scored:
                yield beam.pvalue.TaggedOutput(self.FAILED, user)
            return
        self.writes.inc(len(scored))


# -- Parquet ----------------------------------------------------------------------------------
class ScoresTable(beam.DoFn):
    """A scored batch → one Arrow table of its users' blended top-k rows (SCORES_SCHEMA)."""

    def __init__(self, weights, top_k: int) -> None:
        self.weights = weights  # ranking.BlendWeights
        self.top_k = top_k      # 0 = every candidate
        self.rows = counter("parquet_rows")

    def process(self, scored):
        from pipeline import RecommendPipeline

        cols: dict[str, list] = {f.name: [] for f in SCORES_SCHEMA}
        for user, cands in scored:
            k = self.top_k or len(cands)
            ids, scores, order = RecommendPipeline.blend_top_k(cands, self.weights, k)
            n = len(ids)
            cols["user_id"].append(np.full(n, user, dtype=object))
            cols["rank"].append(np.arange(1, n + 1, dtype=np.int32))
            cols["item_id"].append(np.asarray(ids, dtype=object))
            cols["score"].append(np.asarray(scores, dtype=np.float64))
            cols["engagement"].append(cands.engagement[order])
            cols["quality"].append(cands.quality[order])
            cols["retrieval_score"].append(cands.retrieval_scores[order])
            cols["model_version"].append(np.full(n, cands.model_version, dtype=object))
        if not cols["user_id"]:
            return
        table = pa.Table.from_arrays([pa.array(np.concatenate(cols[f.name]), type=f.type) for f in SCORES_SCHEMA],
                                     schema=SCORES_SCHEMA)
        self.rows.inc(table.num_rows)
        yield table


def scores_prefix(output: str) -> str:
    return output.rstrip("/") + "/" + SCORES_PREFIX


def remove_stale_shards(output: str, num_shards: int) -> list[str]:
    """Deletes scores files of an earlier run with another shard count (same-count files are
    overwritten by the new run); returns the deleted paths."""
    from apache_beam.io.filesystems import FileSystems

    pattern = scores_prefix(output) + "-*-of-*" + SCORES_SUFFIX
    keep_suffix = f"-of-{num_shards:05d}{SCORES_SUFFIX}"
    stale = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list
             if not m.path.endswith(keep_suffix)]
    if stale:
        FileSystems.delete(stale)
    return stale


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Reads the job's Parquet output (its directory, one file, or a glob).

    Returns:
      The rows of SCORES_SCHEMA sorted by (user_id, rank): user_id, item_id (str), rank
      (int64), score, engagement, quality, retrieval_score, model_version. It is a run
      frame: `evaluation.evaluate_run(read_scores(p), data, ks)` scores it.

    Raises:
      DataError when nothing is found, a file is unreadable, columns are missing, or the
      files mix model versions.
    """
    p = pathlib.Path(path)
    if p.is_dir():
        files = sorted(glob.glob(str(p / f"{SCORES_PREFIX}-*{SCORES_SUFFIX}")))
    elif p.is_file():
        files = [str(p)]
    else:
        files = sorted(glob.glob(str(p)))
    if not files:
        raise DataError(f"no {SCORES_PREFIX}-*{SCORES_SUFFIX} files at {path}; run `recsys batch-score --output "
                        f"{path}` first")
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read the batch scores at {path}: {e}") from e
    missing = [c for c in ("user_id", "item_id", "rank", "model_version") if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: the scores files lack column(s) {missing}; are they batch-score output?")
    df = table.to_pandas()
    versions = sorted(df["model_version"].dropna().unique())
    if len(versions) > 1:
        raise DataError(f"{path} mixes model versions {versions}; point at one job's output directory")
    df = df.astype({"user_id": object, "item_id": object, "model_version": object})
    df["rank"] = df["rank"].astype(np.int64)
    return df.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)


# -- progress ---------------------------------------------------------------------------------
class CountScored(beam.DoFn):
    """Counts scored users (`users_scored`, `batches`) and logs this worker's progress now and then."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.users = counter("users_scored")
        self.batches = counter("batches")

    def setup(self) -> None:
        quiet_worker_logs()
        self._start = self._last = self.clock()
        self._done = 0

    def process(self, scored):
        self.users.inc(len(scored))
        self.batches.inc()
        self._done += len(scored)
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("batch-score worker %d: %d users scored (%.0f users/s)", os.getpid(), self._done,
                     self._done / max(now - self._start, 1e-9))
        yield scored


def read_user_file(path: str) -> list[str]:
    """The ids of a --users file as the job reads them (stripped, blanks and a header dropped), for tests."""
    if path.endswith(".parquet"):
        values: Sequence = pd.read_parquet(path, columns=["user_id"])["user_id"].astype(str).tolist()
    else:
        values = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    return [v.strip() for v in values if v.strip() and v.strip() != "user_id"]
