"""Offline evaluation: the protocol, ranking metrics, baselines, the runner, reports and run files.

Full-catalogue top-k per test user with train items excluded (DESIGN.md §7); every model is
a `Recommender` scored on the same `EvalData`.
"""
from evaluation.baselines import (
                                  BiasConfig,
                                  BiasRecommender,
                                  EASEConfig,
                                  EASERecencyConfig,
                                  EASERecencyRecommender,
                                  EASERecommender,
                                  ItemKNNConfig,
                                  ItemKNNRecommender,
                                  PopularityConfig,
                                  PopularityRecommender,
                                  RandomConfig,
                                  RandomRecommender,
                                  RatingBiases,
                                  Selection,
                                  bias_baseline_metrics,
                                  fit_bias_baseline,
                                  fit_biases,
                                  grid_search,
                                  rank_users,
                                  recency_history,
                                  select_bias_reg,
                                  select_ease,
                                  select_ease_recency,
                                  select_item_knn,
                                  select_lambda,
                                  select_on_validation,
                                  validation_data,
)
from evaluation.metrics import (
                                  average_precision_at_k,
                                  catalogue_coverage,
                                  dcg_at_k,
                                  evaluate_ranked,
                                  evaluate_rankings,
                                  gains_at_ranks,
                                  hit_rate_at_k,
                                  ideal_dcg_at_k,
                                  ndcg_at_k,
                                  precision_at_k,
                                  recall_at_k,
                                  reciprocal_rank,
)
from evaluation.protocol import (
                                  EvalData,
                                  Recommender,
                                  RetrievalValidator,
                                  build_eval_data,
                                  retrieval_validator,
                                  top_k_excluding,
)
from evaluation.report import METRIC_DEFINITIONS, ReportPaths, data_summary, format_table, plot_metrics, write_report
from evaluation.runfiles import (
                                  AlignedRun,
                                  evaluate_run,
                                  evaluate_run_against_qrels,
                                  evaluate_run_files,
                                  read_qrels,
                                  read_run,
                                  run_to_ranked,
                                  write_qrels,
                                  write_run,
)
from evaluation.runner import MODEL_FACTORIES, build_model, evaluate_models, model_config_class

__all__ = [
    # protocol
    "EvalData", "Recommender", "build_eval_data", "top_k_excluding", "RetrievalValidator", "retrieval_validator",
    # metrics
    "evaluate_rankings", "evaluate_ranked", "gains_at_ranks", "dcg_at_k", "ideal_dcg_at_k", "ndcg_at_k",
    "average_precision_at_k", "recall_at_k", "precision_at_k", "reciprocal_rank", "hit_rate_at_k",
    "catalogue_coverage",
    # baselines
    "RandomConfig", "RandomRecommender", "PopularityConfig", "PopularityRecommender", "EASEConfig",
    "EASERecommender", "EASERecencyConfig", "EASERecencyRecommender", "recency_history", "ItemKNNConfig",
    "ItemKNNRecommender", "BiasConfig", "BiasRecommender", "RatingBiases", "fit_biases", "fit_bias_baseline",
    "bias_baseline_metrics", "Selection", "grid_search", "select_ease", "select_ease_recency", "select_item_knn",
    "select_bias_reg", "select_lambda", "select_on_validation", "validation_data", "rank_users",
    # runner and report
    "MODEL_FACTORIES", "build_model", "model_config_class", "evaluate_models",
    "METRIC_DEFINITIONS", "ReportPaths", "data_summary", "format_table", "plot_metrics", "write_report",
    # run files
    "AlignedRun", "read_run", "read_qrels", "write_run", "write_qrels", "run_to_ranked", "evaluate_run",
    "evaluate_run_against_qrels", "evaluate_run_files",
]
