"""Index workflows: build a version's FAISS index, and rebuild one with other settings as a NEW version.

Versions are immutable, so a rebuilt index goes into a new version directory: every file of
the source version except `index/` is copied (the user tower, items.npz, features/,
ranking/ ... stay byte-identical, so their checksums carry over), the new index is
written, and the manifest records `parent_version` and the new `index` section.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from core import layout, registry
from core.config import config_errors, config_to_dict, section
from features import FeatureStore
from retrieval import IndexConfig

log = logging.getLogger(__name__)

# Manifest keys finalize_version writes itself; a derived version gets its own.
MANIFEST_OWN = ("version", "created", "git_sha", "checksums")


@dataclasses.dataclass(frozen=True)
class IndexRunConfig:
    """Which version to read and what to call the one written."""

    artifacts: str = ""       # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    version: str = "current"  # source version: a name, 'current' (the CURRENT pointer) or a version directory
    new_version: str = ""     # name of the new version ("" = v<UTC time>-<random>)
    promote: bool = False     # point CURRENT at the new version


@dataclasses.dataclass(frozen=True)
class IndexBuildConfig:
    """`recsys index build`: the run and the FAISS settings (flags without prefix: --factory, --nprobe ...)."""

    run: IndexRunConfig = section(IndexRunConfig, title="run")
    index: IndexConfig = section(IndexConfig, title="FAISS index")


@dataclasses.dataclass(frozen=True)
class IndexBuildResult:
    version_dir: pathlib.Path
    source_dir: pathlib.Path
    config: IndexConfig
    info: dict[str, Any]
    promoted: bool


def artifacts_root(artifacts: str) -> pathlib.Path:
    """The artifacts root a config names ("" = $RECSYS_ARTIFACTS or ./artifacts)."""
    return pathlib.Path(artifacts) if artifacts else registry.default_root()


def build_index(version_dir: pathlib.Path, features: FeatureStore, users: Sequence[str] | None,
                config: IndexConfig, section_name: str = "index") -> dict[str, Any]:
    """Builds the FAISS index over `version_dir`'s items.npz into its index/ and returns its manifest section.

    Recall against exact search is measured on the queries the index will really see: the
    user tower's embeddings of `users` (train users). A bad factory string is a ConfigError
    of section `section_name`."""
    from retrieval import ItemIndex, UserTower, load_items

    item_ids, embeddings = load_items(version_dir)
    queries = (UserTower.load(version_dir).embed_ids(features, np.asarray(users, dtype=object))
               if users is not None and len(users) else None)
    with config_errors(section_name):
        index = ItemIndex.build(item_ids, embeddings, config, queries)
    index.save(layout.index_dir(version_dir))
    return {"config": config_to_dict(config), **index.info}


def rebuild_index(config: IndexBuildConfig) -> IndexBuildResult:
    """Builds an index of `config.run.version`'s items with `config.index` into a new version (a copy of the rest)."""
    root = artifacts_root(config.run.artifacts)
    source = registry.resolve_version(root, config.run.version)
    manifest = registry.verify_version(source)
    features = FeatureStore.load(layout.features_dir(source))
    with registry.writing_version(root, config.run.new_version or None) as target:
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if (d == str(source)
                                                                      and n in (layout.INDEX_DIR, registry.MANIFEST))])
        new_manifest = {k: v for k, v in manifest.items() if k not in MANIFEST_OWN}
        new_manifest["index"] = build_index(target, features, features.vocabularies["user_id"].tokens, config.index)
        new_manifest["parent_version"] = source.name
        registry.finalize_version(target, new_manifest)
    if config.run.promote:
        registry.promote(root, target.name)
    return IndexBuildResult(target, source, config.index, new_manifest["index"], config.run.promote)
