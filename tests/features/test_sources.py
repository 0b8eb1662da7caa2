import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from features import (
    FilesConfig,
    SyntheticConfig,
    generate_synthetic,
    load_files,
    load_movielens_100k,
    split_multi,
    validate_interactions,
)
from features.movielens import age_bucket


def test_movielens_100k_loads_published_counts(movielens):
    df = movielens.interactions
    assert len(df) == 100_000
    assert df["user_id"].nunique() == 943
    assert df["item_id"].nunique() == 1682
    assert set(df["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (df["engaged"] == 1).all()
    assert len(movielens.users) == 943 and len(movielens.items) == 1682
    assert {"age", "gender", "occupation", "zip_prefix"} <= set(movielens.users.columns)
    assert {"title", "year", "genres"} <= set(movielens.items.columns)
    # The first rows of the GroupLens file, as every MovieLens user knows them.
    assert movielens.items.loc["1", "title"] == "Toy Story"
    assert split_multi(movielens.items.loc["1", "genres"]) == ["Animation", "Children's", "Comedy"]
    assert movielens.users.loc["1", "occupation"] == "technician"
    # Every user rated at least 20 movies (the dataset's own guarantee).
    assert df.groupby("user_id").size().min() == 20


def test_movielens_reads_a_grouplens_folder(tmp_path, movielens):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    df = movielens.interactions.head(50)
    df[["user_id", "item_id", "rating", "timestamp"]].astype({"rating": int}).to_csv(
        folder / "u.data", sep="\t", header=False, index=False)
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = "|".join(["0"] * 3 + ["1"] + ["0"] * 15)  # Animation
    (folder / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n")
    ds = load_movielens_100k(path=folder)
    assert len(ds.interactions) == 50
    assert ds.items.loc["1", "title"] == "Toy Story" and ds.items.loc["1", "year"] == "1995"
    assert ds.items.loc["1", "genres"] == "Animation"
    assert ds.users.loc["2", "gender"] == "F"


def test_movielens_missing_grouplens_file_names_it(tmp_path):
    with pytest.raises(DataError, match="u.data"):
        load_movielens_100k(path=tmp_path)


def test_age_bucket_boundaries():
    assert [age_bucket(a) for a in (7, 18, 24, 25, 44, 49, 50, 56, 73)] == [
        "<18", "18-24", "18-24", "25-34", "35-44", "45-49", "50-55", "56+", "56+"]


def test_synthetic_is_seeded_and_sized():
    cfg = SyntheticConfig(num_users=300, num_items=120, num_interactions=5000, seed=7)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    assert len(a.interactions) == 5000
    other = generate_synthetic(SyntheticConfig(num_users=300, num_items=120, num_interactions=5000, seed=8))
    assert not a.interactions["item_id"].equals(other.interactions["item_id"])


def test_synthetic_chunks_are_the_generated_log_in_pieces():
    from features.synthetic import synthetic_chunks, synthetic_tables

    cfg = SyntheticConfig(num_users=300, num_items=120, num_interactions=5003, seed=7)
    whole = generate_synthetic(cfg, chunk_rows=1000)
    chunks = list(synthetic_chunks(cfg, chunk_rows=1000))
    assert [len(c) for c in chunks] == [1000] * 5 + [3]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole.interactions)
    users, items = synthetic_tables(cfg)
    pd.testing.assert_frame_equal(users, whole.users)
    pd.testing.assert_frame_equal(items, whole.items)
    with pytest.raises(ValueError, match="chunk_rows"):
        next(synthetic_chunks(cfg, chunk_rows=0))


def test_synthetic_plants_impressions_popularity_and_decoupled_quality():
    ds = generate_synthetic(SyntheticConfig(num_users=2000, num_items=400, num_interactions=100_000, seed=1))
    df = ds.interactions.join(ds.items, on="item_id")
    # Impressions that were shown but not engaged exist, and carry no rating.
    not_engaged = df["engaged"] == 0
    assert 0.2 < not_engaged.mean() < 0.8
    assert df.loc[not_engaged, "rating"].isna().all() and df.loc[~not_engaged, "rating"].notna().all()
    # Power-law popularity: the top 10% of items take far more than 10% of impressions.
    counts = df["item_id"].value_counts().to_numpy()
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.3
    # Clickbait engages more but rates worse than niche: the two labels disagree.
    by_type = df.groupby("item_type").agg(engaged=("engaged", "mean"), rating=("rating", "mean"))
    assert by_type.loc["clickbait", "engaged"] > by_type.loc["niche", "engaged"] + 0.1
    assert by_type.loc["clickbait", "rating"] < by_type.loc["niche", "rating"] - 1.0


def _write(tmp_path, name, df):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_files_source_maps_columns(tmp_path, ext):
    inter = pd.DataFrame({"customer": ["a", "b", "a"], "sku": ["x", "y", "y"], "ts": [3, 1, 2], "stars": [5, 3, 4]})
    items = pd.DataFrame({"sku": ["x", "y"], "brand": ["p", "q"]})
    cfg = FilesConfig(interactions=_write(tmp_path, f"i.{ext}", inter), items=_write(tmp_path, f"items.{ext}", items),
                      column_map=(("user_id", "customer"), ("item_id", "sku"), ("timestamp", "ts"), ("rating", "stars")),
                      item_categorical=("brand",))
    ds = load_files(cfg)
    assert list(ds.interactions["user_id"]) == ["a", "b", "a"]
    assert list(ds.interactions["rating"]) == [5.0, 3.0, 4.0]
    assert (ds.interactions["engaged"] == 1).all()
    assert ds.items.loc["y", "brand"] == "q"


def test_files_source_names_missing_and_ill_typed_columns(tmp_path):
    path = _write(tmp_path, "i.csv", pd.DataFrame({"user_id": ["a"], "item": ["x"], "timestamp": [1]}))
    with pytest.raises(DataError, match=r"item_id.*column-map"):
        load_files(FilesConfig(interactions=path))
    bad = _write(tmp_path, "b.csv", pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1, "yesterday"]}))
    with pytest.raises(DataError, match="'timestamp'.*'yesterday'"):
        load_files(FilesConfig(interactions=bad))
    items = _write(tmp_path, "items.csv", pd.DataFrame({"item_id": ["x"]}))
    ok = _write(tmp_path, "ok.csv", pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [1]}))
    with pytest.raises(DataError, match=r"--items.*\['brand'\]"):
        load_files(FilesConfig(interactions=ok, items=items, item_categorical=("brand",)))
    with pytest.raises(DataError, match="not found"):
        load_files(FilesConfig(interactions=str(tmp_path / "nope.csv")))


def test_validate_interactions_rejects_bad_engaged_and_empty_ids():
    with pytest.raises(DataError, match="engaged"):
        validate_interactions(pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [1], "engaged": [2]}))
    with pytest.raises(DataError, match="'user_id' has 1 empty"):
        validate_interactions(pd.DataFrame({"user_id": [None], "item_id": ["x"], "timestamp": [1]}))
    out = validate_interactions(pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [3]}))
    assert out["user_id"][0] == "1" and np.isnan(out["rating"][0]) and out["engaged"][0] == 1
