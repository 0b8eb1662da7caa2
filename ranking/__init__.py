"""Ranking stage: wide-and-deep multi-task ranker (engagement + quality heads) and the score blender.

The configs and the blender import eagerly (no TensorFlow); the negative sampler, model,
training and export names resolve lazily (PEP 562), so `from ranking import BlendWeights`
and the CLI's flag building never load TensorFlow.
"""
from __future__ import annotations

from core.lazy import lazy_exports
from ranking.blender import BlendWeights, blend_scores, rank_by_blend
from ranking.config import RankerConfig

_LAZY = {
    "CandidateGenerator": "ranking.negatives", "NegativeConfig": "ranking.negatives",
    "sample_negatives": "ranking.negatives",
    "Ranker": "ranking.export", "export_ranker": "ranking.export",
    "HEADS": "ranking.model", "WideDeepRanker": "ranking.model", "build_ranker": "ranking.model",
    "denormalize_quality": "ranking.model", "normalize_rating": "ranking.model", "ranker_inputs": "ranking.model",
    "diagnose": "ranking.train", "evaluation_rows": "ranking.train", "head_metrics": "ranking.train",
    "predict": "ranking.train", "predict_logits": "ranking.train", "train_ranker": "ranking.train", "training_rows": "ranking.train",
}

__all__ = [
    "BlendWeights", "blend_scores", "rank_by_blend", "RankerConfig",
    *_LAZY,
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
