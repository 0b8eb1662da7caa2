"""`recsys batch-score`: the Beam job that precomputes every user's candidates and both head scores.

Writes Redis entries the server answers as PRECOMPUTED (--redis-url) and/or Parquet for
analysts and `recsys evaluate --batch-output` (--output). Beam and TensorFlow load only
when the command runs, so `recsys --help` stays fast.
"""
from __future__ import annotations

import argparse
import logging

from beam_jobs.config import HELP, BatchScoreConfig
from core.config import add_config_args, config_from_args
from core.errors import RecsysError

log = logging.getLogger(__name__)

RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")

_EPILOG = """examples:
  recsys batch-score --output scores/                                 # Parquet only, local runner
  recsys batch-score --redis-url redis://localhost:6379/0 --output scores/ --direct_running_mode multi_processing
  recsys batch-score --users ids.txt --redis-url redis://localhost:6379/0
  recsys batch-score --version v1 --output gs://bucket/scores --runner DataflowRunner -- \\
      --project my-project --region europe-west1 --temp_location gs://bucket/tmp --requirements_file req.txt

Beam options other than those listed go after `--`; they are passed to PipelineOptions untouched.
Exit status: 0 all written, 1 some Redis writes were lost (counted, ids in OUTPUT/failed_redis_users.txt),
2 bad flags or artifacts."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch-score", help="precompute every user's candidates and scores with Beam (→ Redis, Parquet)",
        description="Apache Beam job: users → fixed batches → RunInference (user tower → FAISS → ranker, both "
                    "heads) → Redis entries served as PRECOMPUTED and/or Parquet (user_id, rank, item_id, score, "
                    "engagement, quality, retrieval_score, model_version). Idempotent: a rerun for a version "
                    "overwrites the same keys and files.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p.add_argument_group("job"), BatchScoreConfig, help_text=HELP)
    beam = p.add_argument_group("Beam pipeline options")
    beam.add_argument("--runner", default=None,
                      help="Beam runner (default: the local direct runner; DataflowRunner, FlinkRunner, SparkRunner, "
                           "PrismRunner, ...)")
    beam.add_argument("--direct_num_workers", "--direct-num-workers", dest="direct_num_workers", type=int,
                      default=None, help="local runner: parallel workers (default 1 in_memory, else 2)")
    beam.add_argument("--direct_running_mode", "--direct-running-mode", dest="direct_running_mode",
                      choices=RUNNING_MODES, default=None,
                      help="local runner: in_memory (default: one process, models loaded once), multi_threading or "
                           "multi_processing (worker processes, each loading TensorFlow and the models)")
    p.add_argument("beam_args", nargs="*", metavar="-- BEAM_OPTION",
                   help="further Beam pipeline options after `--` (e.g. -- --project P --temp_location gs://...)")
    p.set_defaults(func=run)


def beam_args_from(args: argparse.Namespace) -> list[str]:
    """The Beam pipeline options among the parsed flags, as PipelineOptions reads them."""
    out = []
    if args.runner:
        out.append(f"--runner={args.runner}")
    if args.direct_num_workers is not None:
        if args.direct_num_workers < 1:
            raise RecsysError(f"--direct_num_workers must be >= 1, got {args.direct_num_workers}")
        out.append(f"--direct_num_workers={args.direct_num_workers}")
    if args.direct_running_mode:
        out.append(f"--direct_running_mode={args.direct_running_mode}")
    return out + list(args.beam_args)


def run(args: argparse.Namespace) -> int:
    from beam_jobs.logs import quiet_beam_logs

    try:
        config = config_from_args(BatchScoreConfig, args)
    except ValueError as e:
        raise RecsysError(str(e)) from e
    extra = beam_args_from(args)
    if not config.redis_url:
        print("batch-score: no --redis-url: writing Parquet only (the server computes these users online until a "
              "run with --redis-url fills its cache)", flush=True)
    if not config.output:
        print("batch-score: no --output: writing Redis entries only (no Parquet for `recsys evaluate`)", flush=True)
    with quiet_beam_logs():
        from beam_jobs.pipeline import score_users  # Beam and TensorFlow load here

        result = score_users(config, extra)
    print(result.summary())
    return 0 if result.ok else 1
