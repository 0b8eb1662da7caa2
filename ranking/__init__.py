"""Ranking stage: wide-and-deep multi-task ranker (engagement + quality heads) and the score blender."""
from ranking.blender import BlendWeights, blend_scores, rank_by_blend
from ranking.export import Ranker, export_ranker
from ranking.model import (HEADS, RankerConfig, WideDeepRanker, build_ranker, denormalize_quality, normalize_rating,
                           ranker_inputs)
from ranking.negatives import CandidateGenerator, NegativeConfig, sample_negatives
from ranking.train import diagnose, evaluation_rows, head_metrics, predict, train_ranker, training_rows

__all__ = [
    "BlendWeights", "blend_scores", "rank_by_blend",
    "Ranker", "export_ranker",
    "HEADS", "RankerConfig", "WideDeepRanker", "build_ranker", "denormalize_quality", "normalize_rating",
    "ranker_inputs",
    "CandidateGenerator", "NegativeConfig", "sample_negatives",
    "diagnose", "evaluation_rows", "head_metrics", "predict", "train_ranker", "training_rows",
]
