"""Pipeline stage: the one retrieve → rank → blend path and the CandidateSet it produces.

Serving, the Beam job and offline evaluation all call `RecommendPipeline` (or its parts),
and store/read candidate sets under the keys named here. Importing this package does not
import TensorFlow or FAISS; loading a version does.
"""
from pipeline.candidates import CandidateSet, CorruptEntryError, cache_key, precomputed_key, recent_key, stamp, unstamp
from pipeline.scoring import (
                              CandidateScorer,
                              NewUserScoring,
                              PipelineConfig,
                              RecommendPipeline,
                              load_pipeline_config,
                              retrieve,
                              save_pipeline_config,
)

__all__ = ["CandidateSet", "CorruptEntryError", "cache_key", "precomputed_key", "recent_key", "stamp", "unstamp", "CandidateScorer", "NewUserScoring", "PipelineConfig",
           "RecommendPipeline", "load_pipeline_config", "retrieve", "save_pipeline_config"]
