"""The user's own data: interactions (and optional users/items tables) as CSV or Parquet."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import pathlib
import re

import pandas as pd

from core.errors import DataError
from features.schema import (
    INTERACTION_COLUMNS,
    MULTI_VALUE_SEP,
    Dataset,
    FeatureSpec,
    coerce_numeric,
    validate_interactions,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FilesConfig(FeatureSpec):
    """Where the files are and how their columns map onto the schema; the FeatureSpec fields it
    inherits (user_categorical, ..., item_text) name the side-feature columns by kind.

    column_map maps the interactions file's columns onto *schema* names, as schema=file
    pairs, e.g. {"user_id": "customer", "item_id": "sku", "timestamp": "ts"}; unmapped schema
    columns are looked up by their own name. users_column_map and items_column_map do the
    same for the users and items files; their keys are the id (user_id / item_id) and any
    feature named by a flag. A users/items file with no id mapping of its own and no
    user_id/item_id column uses column_map's id entry, so files that share a key name need
    it mapped once.

    Side-feature columns are given by kind (user_categorical, ..., item_text). A users or
    items file given with no flag of its own side has its feature kinds inferred from its
    columns (see infer_feature_kinds); any flag for that side turns inference off for it.
    """

    interactions: str = ""
    users: str = ""
    items: str = ""
    column_map: tuple[tuple[str, str], ...] = ()
    users_column_map: tuple[tuple[str, str], ...] = ()
    items_column_map: tuple[tuple[str, str], ...] = ()


def read_table(path: str | pathlib.Path, flag: str = "file", text_columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Reads a CSV (.csv/.tsv, optionally compressed) or Parquet file, with errors naming it.

    CSV cells of `text_columns` (names absent from the file are ignored), or of every column
    if None, are read as text, so ids and codes keep their leading zeros ("007"); empty cells
    are missing either way. An empty file or one with a header but no rows is a DataError.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise DataError(f"{flag}: file not found: {p}")
    parquet = p.suffix == ".parquet" or p.is_dir()
    try:
        if parquet:
            df = pd.read_parquet(p)
            if df.index.name is not None or isinstance(df.index, pd.MultiIndex):
                df = df.reset_index()  # a saved index (e.g. items.to_parquet() of an id-indexed table) is a column
        else:
            dtype = str if text_columns is None else dict.fromkeys(text_columns, str)
            df = pd.read_csv(p, sep="\t" if ".tsv" in p.suffixes else ",", dtype=dtype)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{flag} {p}: the file is empty; it needs a header row and at least one data row") from e
    except Exception as e:  # pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{flag} {p}: cannot read it as {'Parquet' if parquet else 'CSV'}: {_one_line(e)}") from e
    if len(df.columns) == 0:
        raise DataError(f"{flag} {p}: the file is empty; it needs a header row and at least one data row")
    if len(df) == 0:
        raise DataError(f"{flag} {p}: has a header ({_names(df.columns)}) but no data rows; "
                        f"add rows or point {flag} at the file that has them")
    return df


def load_files(cfg: FilesConfig) -> Dataset:
    """Loads the files named in `cfg` into a validated Dataset (errors name the file and column).

    When a users or items file's feature kinds were inferred, the Dataset's provenance has
    "inferred_columns": {"--users": {"file": path, "columns": {column: kind}}, ...}.
    """
    if not cfg.interactions:
        raise DataError("--interactions is required for the 'files' source")
    where = f"--interactions {cfg.interactions}"
    # Ids as text (whatever the map names them); the C parser types the other columns, fast.
    ids = ("user_id", "item_id", *(v for k, v in cfg.column_map if k in ("user_id", "item_id")))
    inter = read_table(cfg.interactions, "--interactions", text_columns=ids)
    mapping = _column_map(cfg.column_map, "--column-map", INTERACTION_COLUMNS, "an interactions column",
                          inter, where, other_maps=" (map users/items file columns with --users-column-map / "
                                                   "--items-column-map)")
    inter = _rename(inter, mapping, "--column-map", where)
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in inter.columns]
    if missing:
        unmapped = [c for c in inter.columns if c not in INTERACTION_COLUMNS]
        raise DataError(f"{where}: missing column(s) {missing}; map each with --column-map schema=file, e.g. "
                        f"--column-map {missing[0]}={_closest(missing[0], unmapped) or 'COLUMN'}; "
                        f"columns: {_names(inter.columns)}")
    interactions = validate_interactions(inter, where=where, file_columns=mapping)

    users, user_kinds, user_inferred = _load_side(
        cfg.users, "--users", "user_id", cfg.users_column_map, mapping.get("user_id"),
        {"categorical": ("--user-categorical", cfg.user_categorical), "numeric": ("--user-numeric", cfg.user_numeric)})
    items, item_kinds, item_inferred = _load_side(
        cfg.items, "--items", "item_id", cfg.items_column_map, mapping.get("item_id"),
        {"categorical": ("--item-categorical", cfg.item_categorical), "numeric": ("--item-numeric", cfg.item_numeric),
         "multi": ("--item-multi", cfg.item_multi), "text": ("--item-text", cfg.item_text)})
    spec = FeatureSpec(user_kinds.get("categorical", ()), user_kinds.get("numeric", ()),
                       item_kinds.get("categorical", ()), item_kinds.get("numeric", ()),
                       item_kinds.get("multi", ()), item_kinds.get("text", ()))

    digest = hashlib.sha256(pathlib.Path(cfg.interactions).read_bytes()).hexdigest() \
        if pathlib.Path(cfg.interactions).is_file() else ""
    provenance = {"source": "files", **dataclasses.asdict(cfg), "sha256": digest}
    inferred = {flag: {"file": path, "columns": columns}
                for flag, path, columns in (("--users", cfg.users, user_inferred), ("--items", cfg.items, item_inferred))
                if columns is not None}
    for flag, info in inferred.items():
        log.info("%s %s: no feature flags, inferred %s", flag, info["file"], format_inferred(info["columns"]))
    if inferred:
        provenance["inferred_columns"] = inferred
    return Dataset(pathlib.Path(cfg.interactions).stem, interactions, users, items, spec, provenance=provenance)


def format_inferred(columns: dict[str, str]) -> str:
    """One line for an inferred {column: kind} map: "age → numeric, occupation → categorical"."""
    return ", ".join(f"{c} → {k}" for c, k in columns.items()) or "no columns besides the id"


_KIND_WORDS = {"categorical": "categorical", "numeric": "numeric", "multi": "multi-valued", "text": "text"}
# Names of integer columns that are identifiers or codes, not quantities (see infer_feature_kinds).
_ID_NAME = re.compile(r"(?:^|[_\-\s])(?:id|code|zip|zipcode|postcode)$")
_CAMEL_ID_NAME = re.compile(r"[a-z0-9](?:Id|ID|Code|Zip)$")
_LEADING_ZERO = re.compile(r"0\d+")


def infer_feature_kinds(table: pd.DataFrame, side: str) -> dict[str, str]:
    """Guesses each column's feature kind from its values, for a file given without flags.

    Columns are taken in file order (the id column is not passed in). For each column:

    1. every cell empty → "skipped (empty)"; a date/time column (Parquet) → "skipped (datetime)".
    2. booleans → "categorical".
    3. every non-empty cell is a number (CSV cells are read as text: "3", "-4.5", "1e3")
       → "categorical" if it is an identifier or code — its lower-cased name is, or ends in
       "_", "-" or " " followed by, one of id, code, zip, zipcode, postcode (camelCase "storeId"
       also counts), or some cell is an integer written with a leading zero ("02139") —
       otherwise "numeric".
    4. any other column is text, and
       → "multi" if some cell contains MULTI_VALUE_SEP ("Action|Comedy");
       → "text" if at least half of its non-empty cells contain whitespace and more than half
         of them are distinct (titles, descriptions; a repeated "Home & Garden" stays
         categorical);
       → "categorical" otherwise.

    Users have only categorical and numeric features, so on side "user" rule 4's "multi" and
    "text" become "skipped (...)"; name such a column with --user-categorical to use it whole.

    Args:
      table: the users or items table without its id column.
      side: "user" or "item".

    Returns:
      column → "categorical" | "numeric" | "multi" | "text" | "skipped (reason)".
    """
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    kinds = {}
    for col in table.columns:
        kinds[str(col)] = _infer_kind(str(col), table[col], side)
    return kinds


def _infer_kind(name: str, series: pd.Series, side: str) -> str:
    cells = series.dropna()
    if pd.api.types.is_datetime64_any_dtype(series):
        return "skipped (datetime)"
    if pd.api.types.is_bool_dtype(series):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series):
        if len(cells) == 0:
            return "skipped (empty)"
        return "categorical" if _ID_NAME.search(name.lower()) or _CAMEL_ID_NAME.search(name) else "numeric"
    text = cells.astype(str).str.strip()
    text = text[text != ""]
    if len(text) == 0:
        return "skipped (empty)"
    if pd.to_numeric(text, errors="coerce").notna().all():
        id_like = _ID_NAME.search(name.lower()) or _CAMEL_ID_NAME.search(name) or text.str.fullmatch(_LEADING_ZERO).any()
        return "categorical" if id_like else "numeric"
    if text.str.contains(MULTI_VALUE_SEP, regex=False).any():
        kind = "multi"
    elif text.str.contains(r"\s").mean() >= 0.5 and text.nunique() > 0.5 * len(text):
        kind = "text"
    else:
        return "categorical"
    if side == "user":
        what = "multi-valued" if kind == "multi" else "free text"
        return f"skipped ({what}; users have only categorical and numeric features)"
    return kind


def _load_side(path: str, flag: str, id_col: str, pairs: tuple[tuple[str, str], ...], fallback_id: str | None,
               flags: dict[str, tuple[str, tuple[str, ...]]]):
    """Reads a users/items file: (table or None, kind → columns, inferred {column: kind} or None)."""
    map_flag = f"{flag}-column-map"
    named = [c for _, cols in flags.values() for c in cols]
    if not path:
        if named:
            given = " ".join(f for f, cols in flags.values() if cols)
            raise DataError(f"feature columns {named} given ({given}) but no {flag} file; add {flag} FILE")
        if pairs:
            raise DataError(f"{map_flag} given but no {flag} file; add {flag} FILE")
        return None, {}, None
    where = f"{flag} {path}"
    table = read_table(path, flag)
    side = id_col.split("_")[0]
    mapping = _column_map(pairs, map_flag, (id_col, *named), f"a {side}s column", table, where,
                          other_maps=f" (feature names become keys once given with "
                                     f"{' / '.join(f for f, _ in flags.values())})")
    if id_col not in mapping and id_col not in table.columns and fallback_id in table.columns:
        mapping[id_col] = fallback_id  # the key shares its name with the interactions file's
    table = _rename(table, mapping, map_flag, where)
    if id_col not in table.columns:
        guess = _closest(id_col, table.columns)
        raise DataError(f"{where}: no '{id_col}' column{_did_you_mean(guess)}; map it with "
                        f"{map_flag} {id_col}={guess or 'COLUMN'}; columns: {_names(table.columns)}")
    empty = table[id_col].isna().to_numpy()
    if empty.any():
        raise DataError(f"{where}: column '{id_col}' is empty in {int(empty.sum())} row(s), e.g. data row "
                        f"{int(empty.argmax()) + 1}; every row needs an id: fill it in or drop the row")
    repeated = table[id_col].duplicated()
    if repeated.any():
        first = table[id_col][repeated].iloc[0]
        rows = [str(r + 1) for r in (table[id_col] == first).to_numpy().nonzero()[0][:5]]
        raise DataError(f"{where}: {id_col} {first!r} appears in data rows {', '.join(rows)}; a {side}s file has one "
                        f"row per {side}: merge or drop the repeats")
    if named:
        missing = [c for c in named if c not in table.columns]
        if missing:
            guess = _closest(missing[0], [c for c in table.columns if c != id_col])
            raise DataError(f"{where}: missing column(s) {missing} named by feature flags"
                            f"{_did_you_mean(guess, missing[0])}; fix the flag, or map a file column onto the name "
                            f"with {map_flag} {missing[0]}=COLUMN; columns: {_names(table.columns)}")
        kinds = {kind: cols for kind, (_, cols) in flags.items() if cols}
        inferred = None
    else:
        inferred = infer_feature_kinds(table.drop(columns=[id_col]), side)
        kinds = {kind: tuple(c for c, k in inferred.items() if k == kind) for kind in flags}
    for col in kinds.get("numeric", ()):
        table[col] = coerce_numeric(table[col], where, f"'{mapping.get(col, col)}' (numeric feature)", allow_empty=True,
                                    expected=f"numeric features must be numbers (empty = missing): fix those cells, or "
                                             f"name the column with {flags['categorical'][0]} instead")
    return table, kinds, inferred


def _column_map(pairs: tuple[tuple[str, str], ...], flag: str, keys: tuple[str, ...], what: str,
                table: pd.DataFrame, where: str, other_maps: str = "") -> dict[str, str]:
    """schema name → file column, checking both sides: keys against `keys`, values against the file."""
    mapping: dict[str, str] = {}
    for key, value in pairs:
        if key not in keys:
            guess = _closest(key, keys)
            raise DataError(f"{flag} {key}={value}: {key!r} is not {what}{_did_you_mean(guess)}; the keys are "
                            f"schema names: {', '.join(keys)}{other_maps}")
        if key in mapping and mapping[key] != value:
            raise DataError(f"{flag}: {key!r} is mapped twice ({mapping[key]!r} and {value!r}); keep one")
        if value not in table.columns:
            guess = _closest(value, table.columns)
            raise DataError(f"{flag} {key}={value}: {where} has no column {value!r}{_did_you_mean(guess)}; "
                            f"columns: {_names(table.columns)}")
        mapping[key] = value
    sources = list(mapping.values())
    twice = sorted({v for v in sources if sources.count(v) > 1})
    if twice:
        raise DataError(f"{flag}: column {twice[0]!r} is mapped to more than one schema name "
                        f"({', '.join(k for k, v in mapping.items() if v == twice[0])}); map it once")
    return mapping


def _rename(df: pd.DataFrame, mapping: dict[str, str], flag: str, where: str) -> pd.DataFrame:
    """Renames file columns to schema names, refusing to make two columns with one name."""
    for dst, src in mapping.items():
        if dst != src and dst in df.columns and dst not in mapping.values():
            raise DataError(f"{flag} {dst}={src}: {where} already has a column {dst!r}; mapping {src!r} onto it "
                            f"would make two: drop or rename one of them in the file, or leave {dst} unmapped")
    return df.rename(columns={src: dst for dst, src in mapping.items()})


def _closest(name: str, candidates) -> str | None:
    """The candidate closest to `name` (case-insensitive match first, then difflib), if any is close."""
    candidates = [str(c) for c in candidates]
    for c in candidates:
        if c.lower() == name.lower():
            return c
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def _did_you_mean(guess: str | None, of: str | None = None) -> str:
    return f" (did you mean {guess!r}{f' for {of!r}' if of else ''}?)" if guess else ""


def _names(columns, limit: int = 20) -> str:
    columns = [str(c) for c in columns]
    more = f", ... ({len(columns) - limit} more)" if len(columns) > limit else ""
    return ", ".join(columns[:limit]) + more


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
