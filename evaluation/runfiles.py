"""Ranked-list files a user brings (TREC run or CSV) and relevance files (TREC qrels or CSV).

Run formats (auto-detected from the first non-blank line):
  TREC run  `user Q0 item rank score tag`, whitespace separated, one line per item.
  CSV       header with user_id,item_id,rank (extra columns such as score are ignored).
Qrels formats:
  TREC qrels `user 0 item gain`; CSV with header user_id,item_id[,gain] (gain default 1).

A user's ranking is their items ordered by `rank` ascending (rank values need not be
contiguous; only their order matters). trec_eval orders by score instead, so a run whose
scores disagree with its ranks is flagged with a warning. Ids are read as strings.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.errors import DataError
from evaluation.metrics import evaluate_ranked
from evaluation.protocol import EvalData

log = logging.getLogger(__name__)

RunFormat = Literal["trec", "csv"]
PathLike = str | os.PathLike


# -- reading ---------------------------------------------------------------------------------
def _read_lines(path: PathLike) -> list[str]:
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    return text.splitlines()


def _detect(lines: list[str], path: PathLike, what: str) -> Literal["trec", "csv"]:
    for line in lines:
        if line.strip():
            return "csv" if "," in line else "trec"
    raise DataError(f"{path}: the {what} file is empty")


def _number(text: str, kind: type, path: PathLike, lineno: int, field: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {field} must be {'an integer' if kind is int else 'a number'}, "
                        f"got {text!r}") from None
    if kind is float and not np.isfinite(value):
        raise DataError(f"{path}:{lineno}: {field} must be finite, got {text!r}")
    return value


def _read_csv_rows(lines: list[str], path: PathLike, required: Sequence[str], optional: Sequence[str],
                   what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) of a CSV file whose header must name `required`."""
    first = next(i for i, line in enumerate(lines) if line.strip())
    reader = csv.reader(io.StringIO("\n".join(lines[first:])))
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:{first + 1}: the CSV {what} header must name {', '.join(required)}"
                        f"{' [, ' + ', '.join(optional) + ']' if optional else ''}; missing {', '.join(missing)} "
                        f"(got {','.join(header)})")
    rows = []
    for offset, fields in enumerate(reader, start=first + 2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{offset}: expected {len(header)} comma-separated fields "
                            f"({','.join(header)}), got {len(fields)}")
        rows.append((offset, [f.strip() for f in fields]))
    return header, rows


@dataclasses.dataclass(frozen=True)
class _Format:
    """How one kind of file (run or qrels) is laid out in TREC and CSV form."""

    what: str                        # "run" / "qrels", for messages
    trec: tuple[str | None, ...]     # the field at each whitespace-separated position (None = not read)
    usage: str                       # the accepted layouts, for a wrong field count
    required: tuple[str, ...]        # CSV header columns that must be present
    numbers: dict[str, tuple[type, float | None]]  # numeric fields: (type, default when a CSV lacks the column)


_RUN = _Format("run", ("user_id", None, "item_id", "rank", "score", None),
               "`user Q0 item rank score tag` (TREC run) or a CSV header user_id,item_id,rank",
               ("user_id", "item_id", "rank"), {"rank": (int, None), "score": (float, np.nan)})
_QRELS = _Format("qrels", ("user_id", None, "item_id", "gain"),
                 "`user 0 item gain` (TREC qrels) or a CSV header user_id,item_id[,gain]",
                 ("user_id", "item_id"), {"gain": (float, 1.0)})


def _read_columns(path: PathLike, fmt: _Format) -> dict[str, list]:
    """{field: values} of every data line (TREC or CSV, auto-detected), plus "line" (1-based line numbers).

    Raises DataError naming the file and line at the first malformed line.
    """
    lines = _read_lines(path)
    optional = tuple(f for f in fmt.numbers if f not in fmt.required)
    columns: dict[str, list] = {f: [] for f in (*fmt.required, *optional, "line")}

    def add(lineno: int, values: dict[str, str], labels: dict[str, str]) -> None:
        for name in (*fmt.required, *optional):
            kind, default = fmt.numbers.get(name, (str, None))
            if name not in values:
                columns[name].append(default)
            elif kind is str:
                columns[name].append(values[name])
            else:
                columns[name].append(_number(values[name], kind, path, lineno, labels.get(name, name)))
        columns["line"].append(lineno)

    if _detect(lines, path, fmt.what) == "trec":
        labels = {name: f"{name} (field {i + 1})" for i, name in enumerate(fmt.trec) if name}
        for lineno, line in enumerate(lines, start=1):
            values = line.split()
            if not values:
                continue
            if len(values) != len(fmt.trec):
                raise DataError(f"{path}:{lineno}: expected {len(fmt.trec)} whitespace-separated fields "
                                f"{fmt.usage}; got {len(values)} fields")
            add(lineno, {name: v for name, v in zip(fmt.trec, values) if name}, labels)
    else:
        header, rows = _read_csv_rows(lines, path, fmt.required, optional, fmt.what)
        for lineno, values in rows:
            add(lineno, {h: v for h, v in zip(header, values)}, {})
    if not columns["line"]:
        raise DataError(f"{path}: the {fmt.what} file has a header but no rows")
    return columns


def read_run(path: PathLike) -> pd.DataFrame:
    """Reads a TREC run or CSV ranked-list file.

    Returns:
      DataFrame with columns user_id (str), item_id (str), rank (int64), score (float64,
      NaN when the file has none) and line (the 1-based source line, for messages).

    Raises:
      DataError naming the file and line for malformed input (wrong field count,
      non-numeric rank/score, a user listing an item twice or two items at one rank).
    """
    c = _read_columns(path, _RUN)
    run = pd.DataFrame({"user_id": pd.array(c["user_id"], dtype=object), "item_id": pd.array(c["item_id"], dtype=object),
                        "rank": np.asarray(c["rank"], dtype=np.int64), "score": np.asarray(c["score"], dtype=np.float64),
                        "line": np.asarray(c["line"], dtype=np.int64)})
    _check_unique(run, ["user_id", "item_id"], path, "lists item {item_id} twice for user {user_id}")
    _check_unique(run, ["user_id", "rank"], path, "gives two items rank {rank} for user {user_id}")
    run = run.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
    if run["score"].notna().all():
        prev = run.groupby("user_id", sort=False)["score"].shift()
        disagree = run.loc[run["score"] > prev, "user_id"].nunique()
        if disagree:
            log.warning("%s: for %d users the scores do not decrease with rank; ranks decide the order here, "
                        "but trec_eval would order by score", path, disagree)
    return run


def read_qrels(path: PathLike) -> pd.DataFrame:
    """Reads TREC qrels (`user 0 item gain`) or CSV (user_id,item_id[,gain]; gain default 1).

    Returns:
      DataFrame with columns user_id, item_id (str), gain (float64) and line. Gains <= 0
      are judged non-relevant.
    """
    c = _read_columns(path, _QRELS)
    qrels = pd.DataFrame({"user_id": pd.array(c["user_id"], dtype=object), "item_id": pd.array(c["item_id"], dtype=object),
                          "gain": np.asarray(c["gain"], dtype=np.float64), "line": np.asarray(c["line"], dtype=np.int64)})
    _check_unique(qrels, ["user_id", "item_id"], path, "judges item {item_id} twice for user {user_id}")
    return qrels


def _check_unique(df: pd.DataFrame, cols: list[str], path: PathLike, message: str) -> None:
    dup = df.duplicated(cols, keep="first")
    if dup.any():
        row = df.loc[dup].iloc[0]
        raise DataError(f"{path}:{row['line']}: " + message.format(**{c: row[c] for c in cols}))


# -- writing ---------------------------------------------------------------------------------
def write_run(path: PathLike, ranked: np.ndarray, user_ids: Sequence[str], item_ids: Sequence[str],
              fmt: RunFormat | None = None, tag: str = "recsys") -> pathlib.Path:
    """Writes rankings as a TREC run or CSV (`fmt` None: CSV if the path ends in .csv).

    Args:
      ranked: [n, K] catalogue columns, best first, -1 padded (padding is not written).
      user_ids: [n] the user of each row.
      item_ids: [I] the catalogue (column j is item_ids[j]).
      tag: the TREC run tag.

    Scores are K - position, strictly decreasing, so trec_eval (which orders by score and
    breaks ties by docno) reads the same order as the ranks.
    """
    path = pathlib.Path(path)
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "trec")
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != len(user_ids):
        raise ValueError(f"ranked must be [len(user_ids)={len(user_ids)}, K], got shape {ranked.shape}")
    if any(any(c.isspace() for c in str(u)) for u in user_ids) and fmt == "trec":
        raise ValueError("user ids with whitespace cannot be written as a TREC run; use fmt='csv'")
    items = np.asarray(item_ids, dtype=object)
    rows, pos = np.nonzero(ranked >= 0)
    k = ranked.shape[1]
    users = np.asarray([str(u) for u in user_ids], dtype=object)[rows]
    df = pd.DataFrame({"user_id": users, "item_id": items[ranked[rows, pos]].astype(str), "rank": pos + 1,
                       "score": (k - pos).astype(np.float64)})
    if fmt == "csv":
        df.to_csv(path, index=False, columns=["user_id", "item_id", "rank", "score"])
    elif fmt == "trec":
        with path.open("w", encoding="utf-8") as f:
            for u, i, r, s in zip(df["user_id"], df["item_id"], df["rank"], df["score"]):
                f.write(f"{u} Q0 {i} {r} {s:g} {tag}\n")
    else:
        raise ValueError(f"fmt must be 'trec' or 'csv', got {fmt!r}")
    return path


def write_qrels(path: PathLike, gain: sp.csr_matrix, user_ids: Sequence[str], item_ids: Sequence[str],
                fmt: RunFormat | None = None) -> pathlib.Path:
    """Writes relevance judgements [n, I] (nonzero = judged) as TREC qrels or CSV, e.g. to run
    trec_eval on our test split: write_qrels(p, data.test_gain, data.user_ids, data.item_ids)."""
    path = pathlib.Path(path)
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "trec")
    coo = sp.coo_matrix(gain)
    order = np.lexsort((coo.col, coo.row))
    users = np.asarray([str(u) for u in user_ids], dtype=object)[coo.row[order]]
    items = np.asarray(item_ids, dtype=object)[coo.col[order]].astype(str)
    gains = coo.data[order]
    if fmt == "csv":
        pd.DataFrame({"user_id": users, "item_id": items, "gain": gains}).to_csv(path, index=False)
    elif fmt == "trec":
        with path.open("w", encoding="utf-8") as f:
            for u, i, g in zip(users, items, gains):
                f.write(f"{u} 0 {i} {g:g}\n")
    else:
        raise ValueError(f"fmt must be 'trec' or 'csv', got {fmt!r}")
    return path


# -- aligning and evaluating ----------------------------------------------------------------
@dataclasses.dataclass
class AlignedRun:
    """A run as the protocol's [n, K] matrix, with what did not fit.

    Attributes:
      ranked: [n, K] catalogue columns, best first; -1 for padding and for items outside the
        catalogue (their slot stays a miss, so later items keep their ranks).
      unknown_items: run rows whose item is not in the catalogue.
      ignored_users: distinct run users that are not evaluated (not among the test users).
      missing_users: evaluated users with no row in the run (all-miss rankings).
      train_items: run rows recommending an item the user engaged with in train.
    """

    ranked: np.ndarray
    unknown_items: int = 0
    ignored_users: int = 0
    missing_users: int = 0
    train_items: int = 0


def _align(run: pd.DataFrame, user_ids: Sequence[str], item_ids: Sequence[str], k: int | None,
           where: str) -> AlignedRun:
    user_index = pd.Index([str(u) for u in user_ids])
    item_index = pd.Index([str(i) for i in item_ids])
    run = run.sort_values(["user_id", "rank"], kind="stable")
    rows = user_index.get_indexer(run["user_id"].astype(str))
    cols = item_index.get_indexer(run["item_id"].astype(str))
    known_user = rows >= 0
    ignored = int(run.loc[~known_user, "user_id"].nunique())
    pos = run.groupby("user_id", sort=False).cumcount().to_numpy()
    depth = int(pos[known_user].max()) + 1 if known_user.any() else 1
    k = depth if k is None else int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = np.full((len(user_index), k), -1, dtype=np.int64)
    use = known_user & (pos < k)
    ranked[rows[use], pos[use]] = cols[use]  # unknown items write -1: a miss in their slot
    unknown = int((use & (cols < 0)).sum())
    missing = int(len(user_index) - len(np.unique(rows[known_user])))
    if unknown:
        log.warning("%s: %d run rows name items outside the catalogue (%d items); they count as misses", where,
                    unknown, len(item_index))
    if ignored:
        log.warning("%s: %d run users are not evaluated users and were ignored", where, ignored)
    if missing:
        log.warning("%s: %d evaluated users have no ranking in the run; they count as all misses", where, missing)
    return AlignedRun(ranked=ranked, unknown_items=unknown, ignored_users=ignored, missing_users=missing)


def run_to_ranked(run: pd.DataFrame, data: EvalData, k: int | None = None, where: str = "run") -> AlignedRun:
    """Aligns a run (read_run's frame) with `data`: row r of the result ranks data.test_users[r].

    Args:
      run: user_id, item_id, rank columns.
      data: the split to evaluate against.
      k: keep the top k per user (default: the longest ranking in the run).
      where: the run's name for warnings (e.g. its path).
    """
    aligned = _align(run, data.user_ids[data.test_users], data.item_ids, k, where)
    seen = data.train[data.test_users]
    r, c = np.nonzero(aligned.ranked >= 0)
    aligned.train_items = int(np.asarray(seen[r, aligned.ranked[r, c]]).ravel().astype(bool).sum()) if len(r) else 0
    if aligned.train_items:
        log.warning("%s: %d run rows recommend an item the user engaged with in train (the protocol excludes "
                    "those; here they count as misses)", where, aligned.train_items)
    return aligned


def evaluate_run(run: pd.DataFrame, data: EvalData, ks: Sequence[int] = (10, 100),
                 where: str = "run") -> dict[str, float]:
    """Metrics of a run on `data`'s test split, exactly as evaluate_rankings computes them."""
    aligned = run_to_ranked(run, data, k=max(ks), where=where)
    return evaluate_ranked(aligned.ranked, data.test_gain[data.test_users], data.num_items, ks)


def evaluate_run_against_qrels(run: pd.DataFrame, qrels: pd.DataFrame, ks: Sequence[int] = (10, 100),
                               where: str = "run") -> dict[str, float]:
    """Metrics of a run against qrels alone, with no dataset.

    The catalogue is every item in qrels ∪ run (it only matters for coverage@k); the
    evaluated users are those with at least one qrels gain > 0 (run users without
    judgements are ignored, as trec_eval does; judged users missing from the run count as
    all misses).
    """
    relevant = qrels.loc[qrels["gain"] > 0]
    if relevant.empty:
        raise DataError("the qrels hold no relevant judgement (gain > 0); nothing to evaluate")
    user_ids = np.asarray(sorted(set(relevant["user_id"].astype(str))), dtype=object)
    item_ids = np.asarray(sorted(set(qrels["item_id"].astype(str)) | set(run["item_id"].astype(str))), dtype=object)
    rows = pd.Index(user_ids).get_indexer(relevant["user_id"].astype(str))
    cols = pd.Index(item_ids).get_indexer(relevant["item_id"].astype(str))
    gain = sp.csr_matrix((relevant["gain"].to_numpy(dtype=np.float64), (rows, cols)),
                         shape=(len(user_ids), len(item_ids)))
    aligned = _align(run, user_ids, item_ids, max(ks), where)
    return evaluate_ranked(aligned.ranked, gain, len(item_ids), ks)


def evaluate_run_files(run_path: PathLike, qrels_path: PathLike, ks: Sequence[int] = (10, 100)) -> dict[str, float]:
    """read_run + read_qrels + evaluate_run_against_qrels."""
    return evaluate_run_against_qrels(read_run(run_path), read_qrels(qrels_path), ks, where=str(run_path))
