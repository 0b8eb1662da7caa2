"""MovieLens-100k loader: the RecBole wheel's copy (fetched with pip) or a GroupLens folder.

GroupLens' own site is not reachable from every machine and its files are not
redistributable, so by default the loader fetches the PyPI wheel `recbole==1.2.1` with
`pip download --no-deps` into the data cache and reads the atomic files it carries under
`recbole/dataset_example/ml-100k/`. RecBole itself is never installed or imported.
"""
from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd

from core.errors import DataError
from features.schema import MULTI_VALUE_SEP, Dataset, FeatureSpec

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
DATA_DIR_ENV = "RECSYS_DATA_DIR"

ML100K_SPEC = FeatureSpec(
    user_categorical=("gender", "occupation", "zip_prefix", "age_bucket"),
    user_numeric=("age",),
    item_categorical=("year",),
    item_multi=("genres",),
    item_text=("title",),
)

# GroupLens ml-100k u.item genre flag order.
_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
           "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
           "Romance", "Sci-Fi", "Thriller", "War", "Western")


def default_data_dir() -> pathlib.Path:
    """The data cache: $RECSYS_DATA_DIR, else ./data."""
    return pathlib.Path(os.environ.get(DATA_DIR_ENV, "data"))


def fetch_recbole_wheel(data_dir: pathlib.Path) -> pathlib.Path:
    """Downloads the recbole wheel into `data_dir/downloads` once and verifies its sha256."""
    target = pathlib.Path(data_dir) / "downloads"
    found = sorted(glob.glob(str(target / "recbole-1.2.1-*.whl")))
    if not found:
        target.mkdir(parents=True, exist_ok=True)
        log.info("fetching MovieLens-100k: pip download --no-deps %s -> %s", RECBOLE_WHEEL, target)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "-d", str(target), RECBOLE_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(glob.glob(str(target / "recbole-1.2.1-*.whl")))
        if proc.returncode != 0 or not found:
            raise DataError(
                f"could not download {RECBOLE_WHEEL} (which carries MovieLens-100k) with pip: "
                f"{proc.stderr.strip()[-500:]}\nOffline? Pass --movielens-path to a GroupLens ml-100k/ folder.")
    wheel = pathlib.Path(found[0])
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != RECBOLE_WHEEL_SHA256:
        raise DataError(f"{wheel} has sha256 {digest}, expected {RECBOLE_WHEEL_SHA256}; delete it and retry")
    return wheel


def load_movielens_100k(data_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None) -> Dataset:
    """Loads MovieLens-100k: 100,000 ratings, 943 users, 1,682 items, with side features.

    Args:
      data_dir: the download cache (default: $RECSYS_DATA_DIR or ./data).
      path: a local GroupLens `ml-100k/` folder (u.data, u.user, u.item); if given, nothing
        is downloaded.

    Every rating is an engagement (engaged=1); the rating (1-5) is the quality label.
    """
    if path is not None:
        return _load_grouplens(pathlib.Path(path))
    wheel = fetch_recbole_wheel(pathlib.Path(data_dir) if data_dir else default_data_dir())
    with zipfile.ZipFile(wheel) as zf:
        inter = _read_atomic(zf, "inter")
        users = _read_atomic(zf, "user")
        items = _read_atomic(zf, "item")
    interactions = pd.DataFrame({
        "user_id": inter["user_id"].astype(str),
        "item_id": inter["item_id"].astype(str),
        "timestamp": inter["timestamp"].astype("float64").astype("int64"),
        "rating": inter["rating"].astype("float64"),
        "engaged": np.ones(len(inter), dtype="int8"),
    })
    users_df = _user_features(users["user_id"], users["age"], users["gender"], users["occupation"], users["zip_code"])
    items_df = pd.DataFrame({
        "item_id": items["item_id"].astype(str),
        "title": items["movie_title"].fillna("").astype(str),
        "year": items["release_year"].fillna("").astype(str),
        # RecBole separates genres with spaces; genre names themselves have none.
        "genres": items["class"].fillna("").astype(str).str.split().str.join(MULTI_VALUE_SEP),
    }).set_index("item_id")
    return Dataset("movielens-100k", interactions, users_df, items_df, ML100K_SPEC,
                   provenance={"source": "movielens-100k", "file": wheel.name, "sha256": RECBOLE_WHEEL_SHA256})


def _read_atomic(zf: zipfile.ZipFile, kind: str) -> pd.DataFrame:
    raw = zf.read(_MEMBER.format(kind)).decode("utf-8", errors="replace")
    df = pd.read_csv(io.StringIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]  # "user_id:token" -> "user_id"
    return df


def _user_features(user_id, age, gender, occupation, zip_code) -> pd.DataFrame:
    age = pd.to_numeric(pd.Series(age), errors="coerce").fillna(0).astype("float64").to_numpy()
    return pd.DataFrame({
        "user_id": pd.Series(user_id).astype(str).to_numpy(),
        "age": age,
        "age_bucket": [age_bucket(a) for a in age],
        "gender": pd.Series(gender).astype(str).to_numpy(),
        "occupation": pd.Series(occupation).astype(str).to_numpy(),
        "zip_prefix": pd.Series(zip_code).astype(str).str[:2].to_numpy(),
    }).set_index("user_id")


def age_bucket(age: float) -> str:
    """MovieLens-1M style age groups: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+."""
    for upper, name in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < upper:
            return name
    return "56+"


def _load_grouplens(folder: pathlib.Path) -> Dataset:
    files = {name: folder / name for name in ("u.data", "u.user", "u.item")}
    for name, f in files.items():
        if not f.exists():
            raise DataError(f"--movielens-path {folder}: missing {name}; expected a GroupLens ml-100k/ folder")
    inter = pd.read_csv(files["u.data"], sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    interactions = pd.DataFrame({
        "user_id": inter["user_id"], "item_id": inter["item_id"],
        "timestamp": inter["timestamp"].astype("int64"), "rating": inter["rating"].astype("float64"),
        "engaged": np.ones(len(inter), dtype="int8"),
    })
    u = pd.read_csv(files["u.user"], sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip"], dtype=str)
    users_df = _user_features(u["user_id"], u["age"], u["gender"], u["occupation"], u["zip"])
    it = pd.read_csv(files["u.item"], sep="|", header=None, encoding="latin-1", dtype=str,
                     names=["item_id", "title", "date", "video", "url", *_GENRES])
    flags = it[list(_GENRES)].astype(int).to_numpy().astype(bool)
    genres = [MULTI_VALUE_SEP.join(g for g, on in zip(_GENRES, row) if on) for row in flags]
    title = it["title"].fillna("").str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    year = it["date"].fillna("").str[-4:]
    items_df = pd.DataFrame({"item_id": it["item_id"], "title": title, "year": year, "genres": genres}).set_index("item_id")
    return Dataset("movielens-100k", interactions, users_df, items_df, ML100K_SPEC,
                   provenance={"source": "movielens-100k", "path": str(folder)})
