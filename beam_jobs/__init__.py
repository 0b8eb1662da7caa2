"""Beam batch scoring: every user's candidates and both head scores → Redis (PRECOMPUTED) and Parquet.

`run(argv)` is the job (`recsys batch-score` and `python -m beam_jobs.pipeline` call it);
`BatchScore` is the PTransform, the handlers are RunInference ModelHandlers, and
`read_scores` reads the Parquet back (a run frame `evaluation.evaluate_run` scores). Names
resolve lazily (PEP 562) so the CLI can build flags from `BatchScoreConfig` without
importing Beam or TensorFlow.
"""
from __future__ import annotations

from beam_jobs.config import BatchScoreConfig
from core.lazy import lazy_exports

_LAZY = {
    "BatchScore": "beam_jobs.pipeline", "BatchScoreResult": "beam_jobs.pipeline", "run": "beam_jobs.pipeline",
    "score_users": "beam_jobs.pipeline", "COUNTERS": "beam_jobs.pipeline", "DistinctUsers": "beam_jobs.pipeline",
    "FixedBatches": "beam_jobs.pipeline",
    "UserTowerHandler": "beam_jobs.handlers", "RetrievalHandler": "beam_jobs.handlers",
    "RankerHandler": "beam_jobs.handlers", "UserBatch": "beam_jobs.handlers", "assign_batches": "beam_jobs.handlers",
    "batch_index": "beam_jobs.handlers", "num_batches": "beam_jobs.handlers",
    "WriteCandidatesToRedis": "beam_jobs.io", "SCORES_SCHEMA": "beam_jobs.io", "read_scores": "beam_jobs.io",
    "read_user_file": "beam_jobs.io",
}

__all__ = ["BatchScoreConfig", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
