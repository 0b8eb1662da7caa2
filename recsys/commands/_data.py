"""The data section's --help text, and data settings taken from a trained version's manifest."""
from __future__ import annotations

import argparse
import logging
import pathlib
from typing import Any

from core import registry
from core.config import ConfigError, build_config, flag_of, flatten, given_flags, leaf_values, read_config_file

log = logging.getLogger(__name__)

DATA_HELP = {
    "source": {"source": "where interactions come from", "data_dir": "download cache for MovieLens",
               "movielens_path": "read a local GroupLens ml-100k/ folder instead of downloading"},
    "files": {"interactions": "CSV/Parquet with user_id,item_id,timestamp[,rating][,engaged]; timestamps as epoch "
                              "seconds or ISO-8601",
              "column_map": "schema=file column renames for --interactions, e.g. user_id=customer",
              "users_column_map": "schema=file column renames for --users, e.g. user_id=uid",
              "items_column_map": "schema=file column renames for --items, e.g. item_id=sku",
              "users": "CSV/Parquet of user features (without feature-column flags, columns are used by dtype)",
              "items": "CSV/Parquet of item features (without feature-column flags, columns are used by dtype)"},
    "split": {"strategy": "user_temporal: last fraction per user; global_time: one cut-off; user_random: only to "
                          "compare with published random-split numbers"},
}


def data_from_version(cls: type, args: argparse.Namespace, root: pathlib.Path, version: str, *, override: bool,
                      flag: str, remedy: str = "drop them, or give --override-data to evaluate on other data on "
                                             "purpose") -> dict[str, Any]:
    """The trained `version`'s data settings (manifest["data"]) as {dotted key: value} defaults of the
    `data` section of command config `cls`, so a user never retypes them.

    Data settings given explicitly (flags or --config file) that differ from the manifest's are an
    error unless `override`: a model evaluated on another split than its own leaks its test set."""
    from workflows.data import DataConfig

    version_dir = registry.resolve_version(root, version)
    trained = registry.read_manifest(version_dir).get("data")
    if not isinstance(trained, dict):
        return {}
    base = {f"data.{k}": v for k, v in flatten(DataConfig, trained).items()}
    given = {**(read_config_file(cls, args.config) if getattr(args, "config", "") else {}),
             **given_flags(cls, args)}
    given = {k: v for k, v in given.items() if k.startswith("data.")}
    if given:
        from_manifest = leaf_values(build_config(DataConfig, base=flatten(DataConfig, trained)))
        with_given = leaf_values(build_config(DataConfig, base={**flatten(DataConfig, trained),
                                                                **{k[5:]: v for k, v in given.items()}}))
        differ = [k for k in with_given if with_given[k] != from_manifest[k]]
        flags = ", ".join(flag_of(cls, f"data.{k}") for k in differ)
        if differ and override:
            log.warning("evaluating version %s on other data settings than its manifest's (%s): its test split "
                        "may overlap what it was trained on", version_dir.name, flags)
        elif differ:
            raise ConfigError(f"{flag} {version_dir.name} was trained on other data settings ({flags} differ); "
                              f"they come from its manifest: {remedy}")
    return base
