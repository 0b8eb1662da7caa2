"""The data a run sees: its source and its split, as one config section (DataConfig)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Literal

from core.config import section
from core.errors import DataError
from features import (
    Dataset,
    FilesConfig,
    Split,
    SplitConfig,
    SyntheticConfig,
    generate_synthetic,
    load_files,
    load_movielens_100k,
    split_interactions,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Which data source to read; the source-specific flags have their own configs."""

    source: Literal["movielens-100k", "synthetic", "files"] = "movielens-100k"
    data_dir: str = ""          # download cache; default $RECSYS_DATA_DIR or ./data
    movielens_path: str = ""    # a local GroupLens ml-100k/ folder instead of downloading


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything that determines the data a run sees; saved into manifests and reports (manifest["data"])."""

    source: SourceConfig = section(SourceConfig, title="data source")
    synthetic: SyntheticConfig = section(SyntheticConfig, prefix="synthetic_",
                                         title="synthetic source (--source synthetic)")
    files: FilesConfig = section(FilesConfig, title="files source (--source files)")
    split: SplitConfig = section(SplitConfig, title="split")


def load_dataset(cfg: DataConfig) -> Dataset:
    src = cfg.source
    if src.source == "movielens-100k":
        return load_movielens_100k(src.data_dir or None, src.movielens_path or None)
    if src.source == "synthetic":
        return generate_synthetic(cfg.synthetic)
    if src.source == "files":
        return load_files(cfg.files)
    raise DataError(f"--source must be movielens-100k, synthetic or files; got {src.source!r}")


def load_split(cfg: DataConfig) -> tuple[Dataset, Split]:
    """Loads the source and splits it; logs the sizes."""
    dataset = load_dataset(cfg)
    split = split_interactions(dataset.interactions, cfg.split)
    log.info("%s: %d interactions -> train %d (validation %d), test %d [%s]", dataset.name,
             len(dataset.interactions), len(split.train), len(split.validation), len(split.test), cfg.split.strategy)
    return dataset, split
