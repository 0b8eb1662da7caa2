"""Beam fixtures: one tiny trained version (two-tower + FAISS + ranker) shared by the session."""
from __future__ import annotations

import pathlib

import pytest

from features import Dataset, Split, SplitConfig, SyntheticConfig, generate_synthetic, split_interactions

TINY_DATA = SyntheticConfig(num_users=120, num_items=80, num_interactions=5000, seed=11)


def tiny_data() -> tuple[Dataset, Split]:
    dataset = generate_synthetic(TINY_DATA)
    return dataset, split_interactions(dataset.interactions, SplitConfig())


def build_tiny_version(root: pathlib.Path, version: str = "tiny", num_candidates: int = 30) -> pathlib.Path:
    """Trains a seconds-sized version on synthetic data and seals it like `recsys train` does.

    Built from the stage libraries rather than `recsys train` so the test does not depend on
    which stages the train command wires in; the directory layout is the same (DESIGN.md §5).
    """
    from features import fit_feature_store
    from ranking import NegativeConfig, RankerConfig, export_ranker, train_ranker, training_rows
    from recsys import registry
    from retrieval import INDEX_DIR, IndexConfig, ItemIndex, TwoTowerConfig, export_model, load_items, \
        train_two_tower
    from serving.pipeline import PipelineConfig, save_pipeline_config

    dataset, split = tiny_data()
    features = fit_feature_store(dataset, split.train)
    d = registry.start_version(root, version)
    features.save(d / "features")
    tt = train_two_tower(features, split, TwoTowerConfig(embedding_dim=8, id_dim=8, feature_dim=4, epochs=2,
                                                         batch_size=256, refit=False, progress=False, seed=1))
    export_model(tt.model, features, d)
    item_ids, embeddings = load_items(d)
    ItemIndex.build(item_ids, embeddings, IndexConfig(recall_queries=0)).save(d / INDEX_DIR)
    ranker, info = train_ranker(training_rows(split.train, features, NegativeConfig()), features,
                                RankerConfig(id_dim=4, feature_dim=4, history_length=5, hidden=(16,), head_hidden=4,
                                             epochs=1, batch_size=512, progress=False, seed=1))
    export_ranker(ranker, d / "ranking", info)
    save_pipeline_config(d, PipelineConfig(num_candidates=num_candidates, batch_users=64))
    registry.finalize_version(d, {"data": {"source": "synthetic"}})
    return d
