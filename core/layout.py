"""Every path inside a version directory, in one place (DESIGN.md §5).

  <version>/manifest.json                 core.registry.MANIFEST
  <version>/features/                     FeatureStore: vocabularies, popularity, seen items
  <version>/retrieval/user_tower/         the user tower SavedModel
  <version>/retrieval/items.npz           item ids + embeddings
  <version>/retrieval/tower_weights.npz   both towers' trainable weights by role (warm starts; absent in older versions)
  <version>/index/                        FAISS index + id map
  <version>/ranking/model/                ranker SavedModel (ranking/ranker.json beside it)
  <version>/ranking/pipeline.json         the version's default PipelineConfig
  <version>/ranking/new_users.npz         the new-user (EVENTS) scorer, features.ItemCooccurrence (absent in older versions)
  <version>/monitoring/reference.json     drift reference profile (pipeline.profile; absent in older versions)

Stages take a version directory and ask this module where their files are, so renaming a
directory is one edit and a reader sees the whole layout here.
"""
from __future__ import annotations

import os
import pathlib

FEATURES_DIR = "features"
RETRIEVAL_DIR = "retrieval"
USER_TOWER_DIR = "retrieval/user_tower"
ITEMS_FILE = "retrieval/items.npz"
TOWER_WEIGHTS_FILE = "retrieval/tower_weights.npz"
INDEX_DIR = "index"
RANKING_DIR = "ranking"
PIPELINE_FILE = "ranking/pipeline.json"
REFERENCE_FILE = "monitoring/reference.json"
NEW_USERS_FILE = "ranking/new_users.npz"


def _join(version_dir: str | os.PathLike, relative: str) -> pathlib.Path:
    return pathlib.Path(version_dir) / relative


def features_dir(version_dir: str | os.PathLike) -> pathlib.Path:
    """The version's feature store directory."""
    return _join(version_dir, FEATURES_DIR)


def user_tower_dir(version_dir: str | os.PathLike) -> pathlib.Path:
    """The exported user tower (SavedModel)."""
    return _join(version_dir, USER_TOWER_DIR)


def items_file(version_dir: str | os.PathLike) -> pathlib.Path:
    """items.npz: item ids and their embeddings."""
    return _join(version_dir, ITEMS_FILE)


def tower_weights_file(version_dir: str | os.PathLike) -> pathlib.Path:
    """Both towers' weights keyed by role (retrieval.warm): what a warm start of a later version reads."""
    return _join(version_dir, TOWER_WEIGHTS_FILE)


def index_dir(version_dir: str | os.PathLike) -> pathlib.Path:
    """The FAISS index and its id map."""
    return _join(version_dir, INDEX_DIR)


def ranking_dir(version_dir: str | os.PathLike) -> pathlib.Path:
    """The ranker export (SavedModel + metadata)."""
    return _join(version_dir, RANKING_DIR)


def pipeline_file(version_dir: str | os.PathLike) -> pathlib.Path:
    """The version's default PipelineConfig (JSON)."""
    return _join(version_dir, PIPELINE_FILE)


def reference_file(version_dir: str | os.PathLike) -> pathlib.Path:
    """The drift reference profile written at training time (drift.Profile JSON)."""
    return _join(version_dir, REFERENCE_FILE)


def new_users_file(version_dir: str | os.PathLike) -> pathlib.Path:
    """The new-user scorer: P(j | i) top-K and its validated mixture (features.cooccurrence)."""
    return _join(version_dir, NEW_USERS_FILE)


def has_retrieval(version_dir: str | os.PathLike) -> bool:
    """Whether the version holds a trained retriever."""
    return _join(version_dir, RETRIEVAL_DIR).is_dir()


def is_servable(version_dir: str | os.PathLike) -> bool:
    """Whether the version holds everything the online pipeline loads (retriever, index, ranker)."""
    return (user_tower_dir(version_dir).is_dir() and items_file(version_dir).is_file()
            and index_dir(version_dir).is_dir() and ranking_dir(version_dir).is_dir())
