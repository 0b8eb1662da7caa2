"""Flags shared by every subcommand that reads data: the source and the split."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Literal

from core.config import add_config_args, config_from_args
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
    """Everything that determines the data a run sees; saved into manifests and reports."""

    source: SourceConfig
    synthetic: SyntheticConfig
    files: FilesConfig
    split: SplitConfig


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Adds --source, the source-specific flags and the split flags."""
    add_config_args(parser.add_argument_group("data source"), SourceConfig, help_text={
        "source": "where interactions come from",
        "data_dir": "download cache for MovieLens",
        "movielens_path": "read a local GroupLens ml-100k/ folder instead of downloading",
    })
    add_config_args(parser.add_argument_group("synthetic source (--source synthetic)"), SyntheticConfig,
                    prefix="synthetic_")
    add_config_args(parser.add_argument_group("files source (--source files)"), FilesConfig, help_text={
        "interactions": "CSV/Parquet with user_id,item_id,timestamp[,rating][,engaged]",
        "column_map": "schema=file column renames, e.g. user_id=customer",
    })
    add_config_args(parser.add_argument_group("split"), SplitConfig, help_text={
        "strategy": "user_temporal: last fraction per user; global_time: one cut-off; user_random: only to compare "
                    "with published random-split numbers",
    })


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        source=config_from_args(SourceConfig, args),
        synthetic=config_from_args(SyntheticConfig, args, prefix="synthetic_"),
        files=config_from_args(FilesConfig, args),
        split=config_from_args(SplitConfig, args),
    )


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
