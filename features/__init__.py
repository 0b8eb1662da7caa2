"""Features stage: schema, data sources, temporal splits, vocabularies (fit on train only).

The one place feature logic lives; training, Beam and serving all import it from here.
"""
from features.files import FilesConfig, format_inferred, infer_feature_kinds, load_files, read_table
from features.history import merge_history, read_engagements, read_event_interactions, read_recent, recent_by_user
from features.movielens import default_data_dir, load_movielens_100k
from features.schema import MULTI_VALUE_SEP, Dataset, FeatureSpec, split_multi, validate_interactions
from features.splits import Split, SplitConfig, split_interactions
from features.synthetic import SyntheticConfig, generate_synthetic
from features.vocab import OOV_TOKEN, FeatureStore, RatingPrior, Vocabulary, fit_feature_store, tokenize_text

__all__ = [
    "Dataset", "FeatureSpec", "MULTI_VALUE_SEP", "split_multi", "validate_interactions",
    "FilesConfig", "format_inferred", "infer_feature_kinds", "load_files", "read_table",
    "merge_history", "read_engagements", "read_event_interactions", "read_recent", "recent_by_user", "default_data_dir", "load_movielens_100k",
    "SyntheticConfig", "generate_synthetic", "Split", "SplitConfig", "split_interactions",
    "OOV_TOKEN", "FeatureStore", "RatingPrior", "Vocabulary", "fit_feature_store", "tokenize_text",
]
