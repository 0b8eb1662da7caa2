"""The batch-scoring job: users → fixed batches → RunInference (user tower → FAISS → ranker) → Redis, Parquet.

    python -m beam_jobs.pipeline --version current --redis-url redis://localhost:6379/0 \\
        --output scores/ [--users ids.txt] [--runner DirectRunner --direct_num_workers 2 ...]

`run(argv)` fills BatchScoreConfig from its flags (parse_known_args) and hands every
other flag to Beam's PipelineOptions, so the same job runs on Dataflow, Flink or Spark
by pipeline options alone. Reruns for a version overwrite the same keys and files with
byte-identical entries (batches are fixed by the user ids; see handlers.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beam_jobs.config import HELP, BatchScoreConfig
from beam_jobs.files import is_remote, local_version, resolve_url, resolve_version
from beam_jobs.handlers import RankerHandler, RetrievalHandler, UserBatch, UserTowerHandler, batch_index, num_batches
from beam_jobs.io import (
    COUNTER_NAMESPACE,
    FAILED_USERS_FILE,
    SCORES_SCHEMA,
    SCORES_SUFFIX,
    SHARD_TEMPLATE,
    CountScored,
    ReadUsers,
    RedisTarget,
    ScoresTable,
    TrainUsers,
    ValidateUsers,
    WriteCandidatesToRedis,
    counter,
    remove_stale_shards,
    scores_prefix,
)
from beam_jobs.logs import quiet_beam_logs
from core import registry
from core.config import add_config_args, config_from_args, config_to_dict
from core.errors import DataError, RecsysError

log = logging.getLogger(__name__)

COUNTERS = ("users_read", "users_invalid", "users_unknown", "users_duplicate", "users_scored", "batches",
            "redis_writes", "redis_retries", "redis_failed", "parquet_rows")
JOB_FILE = "job.json"
# Local-runner defaults when the flags do not say (measured on 2 cores: bench/RESULTS.md, Beam). in_memory
# loads TensorFlow and the models once and TF already uses every core within a call; each extra
# multi_processing worker pays its own TF start-up and model loads, which a 2-core host never wins back.
DEFAULT_DIRECT_RUNNING_MODE = "in_memory"
DEFAULT_DIRECT_NUM_WORKERS = 2  # for --direct_running_mode multi_processing / multi_threading without a count
LOCAL_RUNNER = "FnApiRunner"
TRAIN_USER_SHARDS = 16  # parallel reads of the version's user list when --users is not given
DASK_SHIM = "beam_jobs.dask_runner.DaskRunner"  # what --runner ...dask_runner.DaskRunner runs (see dask_runner.py)


# -- the transform ---------------------------------------------------------------------------
class _Dedupe(beam.DoFn):
    """(user, times listed) → user, counting the repeats in `users_duplicate`."""

    def __init__(self) -> None:
        self.duplicates = counter("users_duplicate")

    def process(self, user_count):
        user, n = user_count
        if n > 1:
            self.duplicates.inc(n - 1)
        yield user


def _key_by_batch(user: str, total: int, batch_size: int) -> tuple[int, str]:
    return batch_index(user, num_batches(total, batch_size)), user


def _to_batch(key: int, users: Sequence[str], recent: dict[str, tuple[str, ...]] | None = None) -> UserBatch:
    ids = tuple(sorted(users))
    if not recent:
        return UserBatch(ids)
    # All empty → None: exactly the batch-history computation (RecommendPipeline does the same).
    rows = tuple(recent.get(u, ()) for u in ids)
    return UserBatch(ids, recent=rows if any(rows) else None)


def _read_recent(path: str, before: int) -> list[tuple[str, tuple[str, ...]]]:
    from features import read_recent

    return list(read_recent(path, before).items())


class DistinctUsers(beam.PTransform):
    """User ids → each id once; the repeats are counted in `users_duplicate`."""

    def expand(self, users):
        return (users
                | "CountRepeats" >> beam.combiners.Count.PerElement()
                | "Dedupe" >> beam.ParDo(_Dedupe()))


class FixedBatches(beam.PTransform):
    """Distinct user ids → one UserBatch per fixed batch, exactly the batches of handlers.assign_batches.

    The batch of a user depends only on its id and the number of users, never on how the
    runner bundles the elements (see handlers.py), so reruns score the same batches.
    """

    def __init__(self, batch_size: int, recent=None) -> None:
        super().__init__()
        num_batches(0, batch_size)  # validates batch_size
        self.batch_size = batch_size
        self.recent = recent  # None, or a PCollection of (user_id, engagements newest first)

    def expand(self, users):
        total = users | "CountUsers" >> beam.combiners.Count.Globally()
        recent = {} if self.recent is None else {"recent": beam.pvalue.AsDict(self.recent)}
        return (users
                | "KeyByBatch" >> beam.Map(_key_by_batch, total=beam.pvalue.AsSingleton(total),
                                           batch_size=self.batch_size)
                | "GroupBatches" >> beam.GroupByKey()
                | "SortBatch" >> beam.MapTuple(_to_batch, **recent))


class BatchScore(beam.PTransform):
    """PBegin → {"scored": [(user_id, CandidateSet)] per batch, "failed": user ids whose Redis write was lost}.

    Writes Redis entries (if config.redis_url) and Parquet files (if config.output) as side effects.

    Args:
      config: the job config.
      version_dir: the resolved version directory (workers load artifacts from it).
      num_candidates: N per user.
      weights: ranking.BlendWeights for the Parquet ranks.
    """

    def __init__(self, config: BatchScoreConfig, version_dir: str, num_candidates: int, weights) -> None:
        super().__init__()
        self.config = config
        self.version_dir = str(version_dir)
        self.version = pathlib.Path(version_dir).name
        self.num_candidates = num_candidates
        self.weights = weights

    def expand(self, pbegin):
        cfg, vd = self.config, self.version_dir
        if cfg.users:
            raw = pbegin | "ReadUsers" >> ReadUsers(cfg.users)
        else:
            raw = (pbegin | "Shards" >> beam.Create(list(range(TRAIN_USER_SHARDS)))
                   | "TrainUsers" >> beam.ParDo(TrainUsers(vd, TRAIN_USER_SHARDS)))
        recent = None
        if cfg.events:
            # Read while the pipeline is built (a bad table is a DataError before launch), with the one
            # reader evaluation and the benches use (features.read_recent); workers get it as a side input.
            recent = pbegin | "Events" >> beam.Create(_read_recent(cfg.events, cfg.events_before))
        batches = (raw
                   | "Validate" >> beam.ParDo(ValidateUsers(vd))
                   | "DistinctUsers" >> DistinctUsers()
                   | "FixedBatches" >> FixedBatches(cfg.batch_size, recent))
        scored = (batches
                  | "UserTower" >> RunInference(UserTowerHandler(vd))
                  | "Retrieve" >> RunInference(RetrievalHandler(vd, self.num_candidates))
                  | "Rank" >> RunInference(RankerHandler(vd, self.version))
                  | "Progress" >> beam.ParDo(CountScored(cfg.progress_s)))
        out = {"scored": scored}
        if cfg.redis_url:
            target = RedisTarget(cfg.redis_url, cfg.redis_ttl_s, cfg.redis_retries, cfg.redis_backoff_s,
                                 cfg.redis_timeout_s)
            written = scored | "WriteRedis" >> beam.ParDo(WriteCandidatesToRedis(target, self.version)).with_outputs(
                WriteCandidatesToRedis.FAILED)
            out["failed"] = written[WriteCandidatesToRedis.FAILED]
        if cfg.output:
            (scored
             | "ScoresTable" >> beam.ParDo(ScoresTable(self.weights, cfg.top_k))
             | "WriteParquet" >> beam.io.WriteToParquetBatched(
                 scores_prefix(cfg.output), SCORES_SCHEMA, num_shards=cfg.num_shards,
                 shard_name_template=SHARD_TEMPLATE, file_name_suffix=SCORES_SUFFIX))
            if "failed" in out:
                (out["failed"]
                 | "SortFailed" >> beam.combiners.ToList() | beam.FlatMap(sorted)
                 | "WriteFailed" >> beam.io.WriteToText(cfg.output.rstrip("/") + "/" + FAILED_USERS_FILE,
                                                        num_shards=1, shard_name_template=""))
        return out


# -- launching -------------------------------------------------------------------------------
@dataclasses.dataclass
class BatchScoreResult:
    """What a finished job did: the Beam counters (COUNTERS, summed over steps) and where it wrote."""

    config: BatchScoreConfig
    version: str
    version_dir: str
    num_candidates: int
    weights: dict
    counters: dict[str, int] | None  # None: the runner reported no counters
    seconds: float
    state: str
    runner: str = ""

    @property
    def ok(self) -> bool:
        """False if any Redis write was lost (the job's exit status is then 1); True when the runner reports no
        counters (the summary then says the losses could not be counted)."""
        return self.counters is None or self.counters.get("redis_failed", 0) == 0

    def summary(self) -> str:
        if self.counters is None:
            lines = [f"batch-score {self.version}: finished ({self.state}) in {self.seconds:.1f} s on {self.runner}; "
                     "this runner reports NO counters, so users scored, skipped ids, rows and lost Redis writes are "
                     "unknown (not zero)"]
            if self.config.redis_url and self.config.output:
                lines.append(f"  redis: users whose write was lost are listed in "
                             f"{self.config.output.rstrip('/')}/{FAILED_USERS_FILE} (if any)")
            if self.config.output:
                lines.append(f"  parquet: written to {self.config.output}")
            return "\n".join(lines)
        c = self.counters
        lines = [f"batch-score {self.version}: {c['users_scored']} users scored in {c['batches']} batches "
                 f"({self.seconds:.1f} s, {c['users_scored'] / max(self.seconds, 1e-9):.0f} users/s); "
                 f"read {c['users_read']}, skipped {c['users_unknown']} unknown, {c['users_invalid']} invalid, "
                 f"{c['users_duplicate']} repeated"]
        if self.runner == DASK_SHIM:
            lines.append("  counters: attempted (summed over the Dask workers; a retried task counts twice)")
        if self.config.redis_url:
            lines.append(f"  redis: {c['redis_writes']} entries written, {c['redis_retries']} retried writes, "
                         f"{c['redis_failed']} LOST")
        if self.config.output:
            lines.append(f"  parquet: {c['parquet_rows']} rows in {self.config.output}")
        if not self.ok:
            where = (f"; their ids are in {self.config.output.rstrip('/')}/{FAILED_USERS_FILE}"
                     if self.config.output else "")
            lines.append(f"  ERROR: {c['redis_failed']} users' Redis entries were not written{where}. The job is "
                         "idempotent: rerun it once Redis is healthy (optionally with --users on that file).")
        return "\n".join(lines)


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """PipelineOptions from the flags; with no --runner (or DirectRunner), the local runner sized for this machine.

    Beam 2.77's DirectRunner first tries to download and start Prism, which ignores
    --direct_num_workers / --direct_running_mode and names metrics differently; this job
    pins FnApiRunner, the Python direct runner's engine, so those flags mean what they say.
    Pass --runner PrismRunner to use Prism.
    """
    options = PipelineOptions(list(beam_args))
    std = options.view_as(StandardOptions)
    if std.runner in dask_runner_names():
        _require_dask(std.runner)
        std.runner = DASK_SHIM  # Beam's DaskRunner with the fixes this job needs (beam_jobs/dask_runner.py)
    if std.runner is None or std.runner.lower() in ("directrunner", "direct", "switchingdirectrunner"):
        std.runner = LOCAL_RUNNER
    if std.runner == LOCAL_RUNNER:
        direct = options.view_as(DirectOptions)
        if not any(a.startswith("--direct_running_mode") for a in beam_args):
            direct.direct_running_mode = DEFAULT_DIRECT_RUNNING_MODE
        if not any(a.startswith("--direct_num_workers") for a in beam_args):
            # in_memory is one worker by construction (Beam warns about any other count)
            direct.direct_num_workers = 1 if direct.direct_running_mode == "in_memory" else DEFAULT_DIRECT_NUM_WORKERS
    return options


def dask_runner_names() -> tuple[str, ...]:
    """--runner values that select the Dask runner: Beam's full name, its short name, or the shim's."""
    return ("apache_beam.runners.dask.dask_runner.DaskRunner", "DaskRunner", DASK_SHIM)


def _require_dask(runner: str) -> None:
    try:
        import dask.distributed  # noqa: F401
    except ImportError as e:
        raise RecsysError(f"--runner {runner} needs dask and distributed ({e}); install them with "
                          "`pip install 'apache-beam[dask]'` (scripts/setup.sh does)") from None


def _prepare_output(config: BatchScoreConfig) -> None:
    if not config.output:
        return
    if not FileSystems.exists(config.output):
        FileSystems.mkdirs(config.output)
    stale = remove_stale_shards(config.output, config.num_shards)
    if stale:
        log.info("removed %d scores files of an earlier run with another --num-shards", len(stale))


def _counters(result) -> dict[str, int] | None:
    """The job's counters summed over steps; None when the runner reports none (Beam's own DaskRunner)."""
    totals = dict.fromkeys(COUNTERS, 0)
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]
    except NotImplementedError:
        return None
    for c in found:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def score_users(config: BatchScoreConfig, beam_args: Sequence[str] = ()) -> BatchScoreResult:
    """Resolves the version, runs the job to completion and returns its counters.

    Raises:
      ArtifactError / ArtifactMismatchError for a missing or changed version; DataError for
      a missing --users file. Lost Redis writes do not raise: see BatchScoreResult.ok.
    """
    from pipeline import load_pipeline_config

    config = dataclasses.replace(config, artifacts=resolve_url("--artifacts", config.artifacts),
                                 users=resolve_url("--users", config.users), output=resolve_url("--output", config.output),
                                 events=resolve_url("--events", config.events))
    if is_remote(config.events):
        raise DataError(f"--events {config.events}: the event table is read when the job is built; give a local path")
    root = config.artifacts or str(registry.default_root())
    version_url = resolve_version(root, config.version)  # a local path, or a URL the workers stage from
    version_dir = local_version(version_url)
    if config.verify:
        registry.verify_version(version_dir)
    defaults = load_pipeline_config(version_dir)
    num_candidates = config.num_candidates or defaults.num_candidates
    weights = defaults.default_weights
    e, q = config.engagement_weight, config.quality_weight
    if e >= 0 or q >= 0:
        weights = weights.with_weights(e if e >= 0 else weights.engagement, q if q >= 0 else weights.quality)
    if config.users and not FileSystems.exists(config.users):
        raise DataError(f"--users {config.users}: no such file")
    _prepare_output(config)
    options = pipeline_options(beam_args)
    log.info("batch-score: version %s, N=%d, batch size %d, runner %s", version_dir.name, num_candidates,
             config.batch_size, options.view_as(StandardOptions).runner)
    started = time.perf_counter()
    p = beam.Pipeline(options=options)
    _ = p | "BatchScore" >> BatchScore(config, version_url, num_candidates, weights)
    result = p.run()
    state = result.wait_until_finish()
    out = BatchScoreResult(config, version_dir.name, str(version_dir), num_candidates, dataclasses.asdict(weights),
                           _counters(result), time.perf_counter() - started, str(state),
                           str(options.view_as(StandardOptions).runner))
    if config.output:
        _write_job_file(out)
        _remove_temp_dirs(config.output)
    return out


def _remove_temp_dirs(output: str) -> None:
    """FileBasedSink leaves its (by now empty) beam-temp-* directories behind on local disks."""
    temps = [m.path for r in FileSystems.match([output.rstrip("/") + "/beam-temp-*"]) for m in r.metadata_list]
    if temps:
        FileSystems.delete(temps)


def _write_job_file(result: BatchScoreResult) -> None:
    """job.json beside the Parquet: what was scored with what, and the counters (no timestamps, so a
    rerun leaves the directory identical)."""
    body = {"model_version": result.version, "config": config_to_dict(result.config),
            "num_candidates": result.num_candidates, "weights": result.weights, "schema": str(SCORES_SCHEMA),
            "counters": result.counters}
    with FileSystems.create(result.config.output.rstrip("/") + "/" + JOB_FILE) as f:
        f.write(json.dumps(body, indent=2, sort_keys=True).encode())




def build_parser(prog: str = "python -m beam_jobs.pipeline") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Precompute every user's candidates and both head scores into Redis (served as "
                               "PRECOMPUTED) and Parquet. Flags not listed here go to Beam's PipelineOptions "
                               "(--runner, --direct_num_workers, --direct_running_mode, --project, ...).")
    add_config_args(parser, BatchScoreConfig, help_text=HELP)
    return parser


def config_from_flags(args: argparse.Namespace) -> BatchScoreConfig:
    """BatchScoreConfig from parsed flags; a bad value is a RecsysError naming the flag."""
    try:
        return config_from_args(BatchScoreConfig, args)
    except ValueError as e:
        raise RecsysError(str(e)) from e


def run(argv: Sequence[str] | None = None) -> int:
    """The job's entry point: 0 when every user was written, 1 if any Redis write was lost."""
    parser = build_parser()
    known, beam_args = parser.parse_known_args(argv)
    result = score_users(config_from_flags(known), beam_args)
    print(result.summary())
    return 0 if result.ok else 1


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with quiet_beam_logs():
            code = run()
        sys.exit(code)
    except RecsysError as e:
        print(f"batch-score: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
