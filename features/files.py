"""The user's own data: interactions (and optional users/items tables) as CSV or Parquet."""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import pandas as pd

from core.errors import DataError
from features.schema import Dataset, FeatureSpec


@dataclasses.dataclass(frozen=True)
class FilesConfig:
    """Where the files are and how their columns map onto the schema.

    column_map maps *schema* names to the file's names, e.g.
    {"user_id": "customer", "item_id": "sku", "timestamp": "ts"}; unmapped schema columns
    are looked up by their own name. Side-feature columns are given by kind.
    """

    interactions: str = ""
    users: str = ""
    items: str = ""
    column_map: tuple[tuple[str, str], ...] = ()
    user_categorical: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()
    item_categorical: tuple[str, ...] = ()
    item_numeric: tuple[str, ...] = ()
    item_multi: tuple[str, ...] = ()
    item_text: tuple[str, ...] = ()


def read_table(path: str | pathlib.Path, flag: str = "file") -> pd.DataFrame:
    """Reads a CSV (.csv/.tsv, optionally compressed) or Parquet file, with errors naming it."""
    p = pathlib.Path(path)
    if not p.exists():
        raise DataError(f"{flag}: file not found: {p}")
    try:
        if p.suffix == ".parquet" or p.is_dir():
            return pd.read_parquet(p)
        sep = "\t" if ".tsv" in p.suffixes else ","
        return pd.read_csv(p, sep=sep, dtype={"user_id": str, "item_id": str})
    except Exception as e:  # pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{flag}: cannot read {p}: {e}") from e


def load_files(cfg: FilesConfig) -> Dataset:
    """Loads the files named in `cfg` into a validated Dataset (errors name the file and column)."""
    if not cfg.interactions:
        raise DataError("--interactions is required for the 'files' source")
    mapping = dict(cfg.column_map)
    inter = read_table(cfg.interactions, "--interactions")
    inter = _rename(inter, mapping, cfg.interactions)
    spec = FeatureSpec(cfg.user_categorical, cfg.user_numeric, cfg.item_categorical, cfg.item_numeric,
                       cfg.item_multi, cfg.item_text)
    users = _rename(read_table(cfg.users, "--users"), mapping, cfg.users) if cfg.users else None
    items = _rename(read_table(cfg.items, "--items"), mapping, cfg.items) if cfg.items else None
    digest = hashlib.sha256(pathlib.Path(cfg.interactions).read_bytes()).hexdigest() \
        if pathlib.Path(cfg.interactions).is_file() else ""
    for name, table, cols in (("--users", users, spec.user_columns), ("--items", items, spec.item_columns)):
        if cols and table is None:
            raise DataError(f"feature columns {list(cols)} given but no {name} file")
        if table is not None:
            missing = [c for c in cols if c not in table.columns]
            if missing:
                raise DataError(f"{name} {getattr(cfg, name[2:])}: missing column(s) {missing}; have {list(table.columns)}")
    return Dataset(pathlib.Path(cfg.interactions).stem, _checked(inter, cfg.interactions), users, items, spec,
                   provenance={"source": "files", **dataclasses.asdict(cfg), "sha256": digest})


def _rename(df: pd.DataFrame, mapping: dict[str, str], where: str) -> pd.DataFrame:
    """Renames file columns to schema names; absent ones are reported by the schema check."""
    return df.rename(columns={src: dst for dst, src in mapping.items() if src in df.columns})


def _checked(df: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"--interactions {where}: missing column(s) {missing} (map them with "
                        f"--column-map schema=file, e.g. user_id=customer); have {list(df.columns)}")
    return df
