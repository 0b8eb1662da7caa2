"""`recsys batch-score`: the Beam job that precomputes every user's candidates and both head scores.

Writes Redis entries the server answers as PRECOMPUTED (--redis-url) and/or Parquet for
analysts and `recsys evaluate --batch-output` (--output). Beam and TensorFlow load only
when the command runs, so `recsys --help` stays fast. Data and split settings are the
version's own: the job reads the users, features and models of the trained version.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

from beam_jobs.config import HELP, BatchScoreConfig
from core.config import section
from recsys.commands import add_command

log = logging.getLogger(__name__)

RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """The local runner's options that are flags here; others go after `--` to PipelineOptions untouched."""

    runner: str = ""               # Beam runner ("" = the local direct runner)
    direct_num_workers: int = 0    # local runner: parallel workers (0 = 1 in_memory, else 2)
    direct_running_mode: str = ""  # local runner: in_memory, multi_threading or multi_processing ("" = in_memory)

    def __post_init__(self) -> None:
        if self.direct_num_workers < 0:
            raise ValueError(f"--direct-num-workers must be >= 1 (0 = the default), got {self.direct_num_workers}")
        if self.direct_running_mode and self.direct_running_mode not in RUNNING_MODES:
            raise ValueError(f"--direct-running-mode must be one of {', '.join(RUNNING_MODES)}; "
                             f"got {self.direct_running_mode!r}")

    def pipeline_args(self) -> list[str]:
        """These options as PipelineOptions reads them."""
        out = [f"--runner={self.runner}"] if self.runner else []
        if self.direct_num_workers:
            out.append(f"--direct_num_workers={self.direct_num_workers}")
        if self.direct_running_mode:
            out.append(f"--direct_running_mode={self.direct_running_mode}")
        return out


@dataclasses.dataclass(frozen=True)
class BatchScoreCommandConfig:
    """`recsys batch-score`: the job ([job]) and the local runner's options ([beam])."""

    job: BatchScoreConfig = section(BatchScoreConfig, title="job")
    beam: BeamConfig = section(BeamConfig, title="Beam pipeline options")


_EPILOG = """examples:
  recsys batch-score --output scores/                                 # Parquet only, local runner
  recsys batch-score --redis-url redis://localhost:6379/0 --output scores/ --direct-running-mode multi_processing
  recsys batch-score --users ids.txt --redis-url redis://localhost:6379/0
  recsys batch-score --version v1 --output gs://bucket/scores --runner DataflowRunner -- \\
      --project my-project --region europe-west1 --temp_location gs://bucket/tmp \\
      --extra_package dist/recsys_reference-0.1.0-py3-none-any.whl     # pip wheel --no-deps -w dist .
  recsys batch-score --output file:///data/scores --runner apache_beam.runners.dask.dask_runner.DaskRunner -- \\
      --dask_client_address tcp://scheduler:8786
  recsys batch-score --config job.toml --print-config                 # the effective settings as TOML

Beam options other than those listed go after `--`; they are passed to PipelineOptions untouched.
Data and split settings come from the trained version (its features and manifest); there are no data flags.
Exit status: 0 all written, 1 some Redis writes were lost (counted, ids in OUTPUT/failed_redis_users.txt),
2 bad flags or artifacts."""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "batch-score", BatchScoreCommandConfig, run, help_text={
            "job": HELP,
            "beam": {"runner": "Beam runner (empty = the local direct runner; DataflowRunner, FlinkRunner, "
                               "SparkRunner, PortableRunner, PrismRunner, apache_beam.runners.dask.dask_runner."
                               "DaskRunner (run through beam_jobs/dask_runner.py), ...)",
                     "direct_num_workers": "local runner: parallel workers (0 = 1 in_memory, else 2)",
                     "direct_running_mode": "local runner: in_memory (the default: one process, models loaded "
                                            "once), multi_threading or multi_processing (worker processes, each "
                                            "loading TensorFlow and the models)"}},
        description="Apache Beam job: users → fixed batches → RunInference (user tower → FAISS → ranker, both "
                    "heads) → Redis entries served as PRECOMPUTED and/or Parquet (user_id, rank, item_id, score, "
                    "engagement, quality, retrieval_score, model_version). Idempotent: a rerun for a version "
                    "overwrites the same keys and files.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("beam_args", nargs="*", metavar="-- BEAM_OPTION",
                   help="further Beam pipeline options after `--` (e.g. -- --project P --temp_location gs://...)")


def run(config: BatchScoreCommandConfig, args: argparse.Namespace) -> int:
    from beam_jobs.logs import quiet_beam_logs

    job = config.job
    extra = config.beam.pipeline_args() + list(args.beam_args)
    if not job.redis_url:
        print("batch-score: no --redis-url: writing Parquet only (the server computes these users online until a "
              "run with --redis-url fills its cache)", flush=True)
    if not job.output:
        print("batch-score: no --output: writing Redis entries only (no Parquet for `recsys evaluate`)", flush=True)
    with quiet_beam_logs():
        from beam_jobs.pipeline import score_users  # Beam and TensorFlow load here

        result = score_users(job, extra)
    print(result.summary())
    return 0 if result.ok else 1
