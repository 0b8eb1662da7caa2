"""The `files` source: the inputs a user brings (CSV/Parquet, column maps, timestamps, inferred features)."""
import json

import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from features import FilesConfig, SplitConfig, infer_feature_kinds, load_files, split_interactions
from recsys.cli import main


def _csv(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _write(tmp_path, name, df):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return str(path)


def _data(capsys, *flags):
    """Runs `recsys data --source files ...` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["--log-level", "ERROR", "data", "--source", "files", *flags])
    out, err = capsys.readouterr()
    return code, out, err


INTERACTIONS = "user_id,item_id,timestamp,rating\na,x,1,5\nb,y,2,3\na,y,3,4\n"


def _error_cases(tmp_path):
    """(flags, fragments the one-line message must contain), one per mistake a user makes."""
    ok = _csv(tmp_path, "ok.csv", INTERACTIONS)
    header_only = _csv(tmp_path, "header_only.csv", "user_id,item_id,timestamp\n")
    empty = _csv(tmp_path, "empty.csv", "")
    bad_rating = _csv(tmp_path, "bad_rating.csv", "user_id,item_id,timestamp,rating\na,x,1,5\nb,y,2,five\n")
    bad_time = _csv(tmp_path, "bad_time.csv", "user_id,item_id,ts\na,x,2024-01-01T00:00:00Z\nb,y,yesterday\n")
    mixed_time = _csv(tmp_path, "mixed_time.csv", "user_id,item_id,timestamp\na,x,1700000000\nb,y,2024-01-01\n")
    bad_engaged = _csv(tmp_path, "bad_engaged.csv", "user_id,item_id,timestamp,engaged\na,x,1,1\nb,y,2,1\nc,z,3,yes\n")
    keyed = _csv(tmp_path, "keyed.csv", "customer,item_id,timestamp\na,x,1\n")
    users_bad_age = _csv(tmp_path, "users_bad_age.csv", "user_id,age\na,30\nb,old\n")
    users_header_only = _csv(tmp_path, "users_header_only.csv", "user_id,age\n")
    users_uid = _csv(tmp_path, "users_uid.csv", "uid,age\na,30\n")
    items = _csv(tmp_path, "items.csv", "item_id,brand\nx,p\ny,q\n")
    return [
        ([header_only], ["--interactions", "header_only.csv", "no data rows"]),
        ([empty], ["--interactions", "empty.csv", "the file is empty", "header row"]),
        ([bad_rating], ["bad_rating.csv", "'rating'", "'five'", "data row 2", "numbers"]),
        ([bad_time, "--column-map", "timestamp=ts"],
         ["bad_time.csv", "'ts' (mapped to timestamp)", "'yesterday'", "data row 2", "ISO-8601"]),
        ([mixed_time], ["mixed_time.csv", "'timestamp'", "mixes", "'1700000000' in data row 1", "one form"]),
        ([bad_engaged], ["bad_engaged.csv", "'engaged'", "'yes'", "data row 3"]),
        ([ok, "--users", users_bad_age, "--user-numeric", "age"],
         ["--users", "users_bad_age.csv", "'age'", "'old'", "data row 2", "--user-categorical"]),
        ([ok, "--users", users_header_only], ["--users", "users_header_only.csv", "no data rows"]),
        ([keyed, "--column-map", "usr_id=customer"], ["--column-map usr_id=customer", "did you mean 'user_id'"]),
        ([keyed, "--column-map", "user_id=custmer"], ["keyed.csv", "no column 'custmer'", "did you mean 'customer'"]),
        ([ok, "--users", users_uid], ["users_uid.csv", "no 'user_id' column", "did you mean 'uid'",
                                      "--users-column-map user_id=uid"]),
        ([ok, "--users", users_uid, "--users-column-map", "user-id=uid"],
         ["--users-column-map user-id=uid", "did you mean 'user_id'"]),
        ([ok, "--items", items, "--item-categorical", "brnd"], ["items.csv", "['brnd']", "did you mean 'brand'"]),
        ([ok, "--items-column-map", "item_id=sku"], ["--items-column-map", "no --items file"]),
    ]


@pytest.mark.parametrize("case", range(14))
def test_files_errors_exit_2_with_one_line_that_names_the_fix(tmp_path, capsys, case):
    cases = _error_cases(tmp_path)
    assert len(cases) == 14
    flags, fragments = cases[case]
    code, out, err = _data(capsys, "--interactions", *flags)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("recsys data: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_read_errors_are_data_errors_in_the_library_too(tmp_path):
    with pytest.raises(DataError, match="no data rows"):
        load_files(FilesConfig(interactions=_write(tmp_path, "h.parquet", pd.DataFrame(
            {"user_id": pd.Series([], dtype=str), "item_id": pd.Series([], dtype=str), "timestamp": []}))))
    unreadable = _csv(tmp_path, "ragged.csv", "user_id,item_id,timestamp\na,x,1\nb,y,2,9,9\n")
    with pytest.raises(DataError, match=r"ragged\.csv: cannot read it as CSV") as e:
        load_files(FilesConfig(interactions=unreadable))
    assert "\n" not in str(e.value)


def _epoch_log(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": rng.choice(list("abcdef"), n),
        "item_id": rng.choice(list("pqrstuvwxyz"), n),
        # Distinct whole seconds around 2024, so every form below names exactly these instants.
        "timestamp": 1_704_067_200 + rng.permutation(n) * 3_607,
        "rating": rng.integers(1, 6, n).astype(float),
    })


@pytest.mark.parametrize("form", ["Z", "offset", "naive", "date_space", "parquet_datetime_utc",
                                  "parquet_datetime_naive", "parquet_datetime_offset"])
def test_iso_timestamps_give_the_same_data_and_splits_as_epoch_seconds(tmp_path, form):
    epoch = _epoch_log()
    utc = pd.to_datetime(epoch["timestamp"], unit="s", utc=True)
    iso = epoch.copy()
    if form == "Z":
        iso["timestamp"] = utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    elif form == "offset":  # the same instants written in UTC+02:00
        iso["timestamp"] = utc.dt.tz_convert("Etc/GMT-2").dt.strftime("%Y-%m-%dT%H:%M:%S+02:00")
    elif form == "naive":
        iso["timestamp"] = utc.dt.strftime("%Y-%m-%dT%H:%M:%S")
    elif form == "date_space":
        iso["timestamp"] = utc.dt.strftime("%Y-%m-%d %H:%M:%S")
    elif form == "parquet_datetime_utc":
        iso["timestamp"] = utc
    elif form == "parquet_datetime_naive":
        iso["timestamp"] = utc.dt.tz_localize(None)
    else:
        iso["timestamp"] = utc.dt.tz_convert("America/New_York")
    ext = "parquet" if form.startswith("parquet") else "csv"
    a = load_files(FilesConfig(interactions=_write(tmp_path, "epoch.csv", epoch)))
    b = load_files(FilesConfig(interactions=_write(tmp_path, f"iso.{ext}", iso)))
    assert b.interactions["timestamp"].dtype == np.dtype("int64")
    np.testing.assert_array_equal(b.interactions["timestamp"].to_numpy(), epoch["timestamp"].to_numpy())
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    for cfg in (SplitConfig(test_fraction=0.25, val_fraction=0.2, min_user_interactions=2),
                SplitConfig(strategy="global_time", test_fraction=0.25, val_fraction=0.2)):
        sa, sb = split_interactions(a.interactions, cfg), split_interactions(b.interactions, cfg)
        for part in ("train", "validation", "test"):
            pd.testing.assert_frame_equal(getattr(sa, part), getattr(sb, part))
        assert len(sa.test) > 0


def test_iso_timestamps_normalise_zones_and_floor_fractions(tmp_path):
    path = _csv(tmp_path, "z.csv", "user_id,item_id,timestamp\n"
                                   "a,x,2024-01-01T00:00:00Z\n"
                                   "a,y,2024-01-01T02:00:00+02:00\n"
                                   "a,z,2023-12-31T19:00:00-05:00\n"
                                   "a,w,2024-01-01\n"
                                   "a,v,2024-01-01T00:00:00.999\n")
    ts = load_files(FilesConfig(interactions=path)).interactions["timestamp"]
    assert list(ts) == [1_704_067_200] * 5


def test_epoch_seconds_keep_their_old_meaning(tmp_path):
    path = _csv(tmp_path, "e.csv", "user_id,item_id,timestamp\na,x,881250949\na,y,881250949.7\n")
    assert list(load_files(FilesConfig(interactions=path)).interactions["timestamp"]) == [881250949, 881250949]


def test_each_file_has_its_own_column_map(tmp_path, capsys):
    inter = _csv(tmp_path, "clicks.csv", "customer,sku,when,stars,clicked\n"
                                         "c1,p1,2024-01-01T00:00:00Z,5,1\nc2,p2,2024-01-02T00:00:00Z,,false\n"
                                         "c1,p2,2024-01-03T00:00:00Z,4,true\n")
    users = _csv(tmp_path, "people.csv", "uid,job\nc1,eng\nc2,doc\n")
    items = _csv(tmp_path, "catalogue.csv", "product,make,cost\np1,acme,9.5\np2,zeta,3\n")
    cfg = FilesConfig(interactions=inter, users=users, items=items,
                      column_map=(("user_id", "customer"), ("item_id", "sku"), ("timestamp", "when"),
                                  ("rating", "stars"), ("engaged", "clicked")),
                      users_column_map=(("user_id", "uid"), ("occupation", "job")),
                      items_column_map=(("item_id", "product"), ("brand", "make"), ("price", "cost")),
                      user_categorical=("occupation",), item_categorical=("brand",), item_numeric=("price",))
    ds = load_files(cfg)
    assert list(ds.interactions["user_id"]) == ["c1", "c2", "c1"]
    assert list(ds.interactions["engaged"]) == [1, 0, 1]
    assert ds.interactions["rating"].isna().tolist() == [False, True, False]
    assert ds.users.loc["c2", "occupation"] == "doc"
    assert ds.items.loc["p1", "brand"] == "acme" and ds.items.loc["p2", "price"] == 3.0
    assert ds.items["price"].dtype == np.dtype("float64")
    assert ds.spec.user_categorical == ("occupation",) and ds.spec.item_numeric == ("price",)
    # The same maps as CLI flags; --column-map still means the interactions file.
    code, out, err = _data(capsys, "--interactions", inter, "--users", users, "--items", items,
                           "--column-map", "user_id=customer", "item_id=sku", "timestamp=when",
                           "--users-column-map", "user_id=uid", "--items-column-map", "item_id=product",
                           "--user-categorical", "job", "--item-categorical", "make", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["dataset"]["users"] == 2 and info["dataset"]["catalogue_items"] == 2
    assert info["dataset"]["user_features"] == ["job"] and info["dataset"]["item_features"] == ["make"]
    assert "inferred_columns" not in info  # flags were given for both files


def test_side_file_keyed_like_the_interactions_file_needs_one_map(tmp_path):
    inter = _csv(tmp_path, "i.csv", "uid,sku,timestamp\nu1,s1,1\nu2,s2,2\n")
    users = _csv(tmp_path, "u.csv", "uid,age\nu1,30\nu2,41\n")
    ds = load_files(FilesConfig(interactions=inter, users=users, column_map=(("user_id", "uid"), ("item_id", "sku")),
                                user_numeric=("age",)))
    assert ds.users.loc["u2", "age"] == 41.0


def test_mapping_onto_a_column_the_file_already_has_is_refused(tmp_path):
    inter = _csv(tmp_path, "i.csv", "user_id,customer,item_id,timestamp\nu1,c1,s1,1\n")
    with pytest.raises(DataError, match="already has a column 'user_id'"):
        load_files(FilesConfig(interactions=inter, column_map=(("user_id", "customer"),)))


def test_csv_ids_keep_leading_zeros(tmp_path):
    inter = _csv(tmp_path, "i.csv", "uid,item_id,timestamp\n007,0042,1\n7,42,2\n")
    users = _csv(tmp_path, "u.csv", "uid,age\n007,30\n7,41\n")
    ds = load_files(FilesConfig(interactions=inter, users=users, column_map=(("user_id", "uid"),),
                                users_column_map=(("user_id", "uid"),)))
    assert list(ds.interactions["user_id"]) == ["007", "7"]
    assert list(ds.interactions["item_id"]) == ["0042", "42"]
    assert ds.users.loc["007", "age"] == 30.0 and ds.users.loc["7", "age"] == 41.0


def test_infer_feature_kinds_follows_the_documented_rule():
    items = pd.DataFrame({
        "price": ["9.5", "3", "", "1e3"],             # CSV text, all numbers → numeric
        "stock": [1, 2, 3, 4],                        # numeric dtype → numeric
        "store_id": ["1", "2", "2", "3"],             # numbers, id-like name → categorical
        "storeId": [1, 2, 2, 3],                      # camelCase id, numeric dtype → categorical
        "zip": ["94043", "10001", "94043", "60601"],  # code-like name → categorical
        "plu": ["0042", "17", "17", "99"],            # a leading zero → categorical
        "paid": ["1", "0", "1", "1"],                 # ends in "id" but not "_id" → numeric
        "genres": ["Action|Comedy", "Drama", "", "Drama"],
        "title": ["Toy Story", "Four Rooms", "GoldenEye", "Get Shorty"],
        "category": ["Home & Garden", "Home & Garden", "Toys", "Toys"],
        "brand": ["acme", "zeta", "acme", "acme"],
        "promo": [True, False, True, True],
        "notes": [None, None, None, None],
        "added": pd.to_datetime(["2024-01-01"] * 4),
    })
    assert infer_feature_kinds(items, "item") == {
        "price": "numeric", "stock": "numeric", "store_id": "categorical", "storeId": "categorical",
        "zip": "categorical", "plu": "categorical", "paid": "numeric", "genres": "multi", "title": "text",
        "category": "categorical", "brand": "categorical", "promo": "categorical", "notes": "skipped (empty)",
        "added": "skipped (datetime)",
    }
    users = infer_feature_kinds(items[["price", "genres", "title", "brand"]], "user")
    assert users["price"] == "numeric" and users["brand"] == "categorical"
    assert users["genres"].startswith("skipped (multi-valued") and users["title"].startswith("skipped (free text")


def test_movielens_items_infer_titles_as_text_and_genres_as_multi(movielens):
    kinds = infer_feature_kinds(movielens.items[["title", "genres"]], "item")
    assert kinds == {"title": "text", "genres": "multi"}


def test_feature_files_without_flags_are_inferred_and_printed(tmp_path, capsys):
    inter = _csv(tmp_path, "i.csv", "user_id,item_id,timestamp\n"
                 + "".join(f"u{u},i{i},{u * 10 + i}\n" for u in range(4) for i in range(4)))
    users = _csv(tmp_path, "u.csv", "user_id,age,occupation,zip\nu0,30,eng,02139\nu1,41,doc,94043\n"
                                    "u2,,eng,10001\nu3,25,art,02139\n")
    items = _csv(tmp_path, "it.csv", "item_id,title,genres,price\ni0,Toy Story,Animation|Comedy,9.5\n"
                                     "i1,Four Rooms,Drama,3\ni2,GoldenEye,Action,\ni3,Get Shorty,Comedy,2\n")
    ds = load_files(FilesConfig(interactions=inter, users=users, items=items))
    assert ds.spec.user_categorical == ("occupation", "zip") and ds.spec.user_numeric == ("age",)
    assert ds.spec.item_text == ("title",) and ds.spec.item_multi == ("genres",)
    assert ds.spec.item_numeric == ("price",) and ds.spec.item_categorical == ()
    assert ds.users["age"].dtype == np.dtype("float64") and np.isnan(ds.users.loc["u2", "age"])
    assert ds.users.loc["u0", "zip"] == "02139"

    code, out, err = _data(capsys, "--interactions", inter, "--users", users, "--items", items)
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("inferred from")]
    assert lines == [
        f"inferred from --users {users} (no feature flags given): age → numeric, occupation → categorical, "
        f"zip → categorical",
        f"inferred from --items {items} (no feature flags given): title → text, genres → multi, price → numeric",
    ]
    assert "user features: occupation, zip, age; item features: price, genres, title" in out
    code, out, err = _data(capsys, "--interactions", inter, "--users", users, "--items", items, "--json")
    assert code == 0, err
    assert json.loads(out)["inferred_columns"]["--items"] == {
        "file": items, "columns": {"title": "text", "genres": "multi", "price": "numeric"}}


def test_feature_flags_win_over_inference(tmp_path, capsys):
    inter = _csv(tmp_path, "i.csv", INTERACTIONS)
    users = _csv(tmp_path, "u.csv", "user_id,age,occupation\na,30,eng\nb,41,doc\n")
    items = _csv(tmp_path, "it.csv", "item_id,title,year\nx,Toy Story,1995\ny,Four Rooms,1995\n")
    ds = load_files(FilesConfig(interactions=inter, users=users, items=items, item_categorical=("year",)))
    assert ds.spec.item_columns == ("year",)  # title is not used: the flag named this file's features
    assert ds.spec.user_numeric == ("age",) and ds.spec.user_categorical == ("occupation",)  # no flags: inferred
    assert set(ds.provenance["inferred_columns"]) == {"--users"}
    code, out, err = _data(capsys, "--interactions", inter, "--users", users, "--items", items,
                           "--item-categorical", "year")
    assert code == 0, err
    assert "inferred from --users" in out and "inferred from --items" not in out


def test_side_file_with_repeated_ids_names_the_rows(tmp_path):
    inter = _csv(tmp_path, "i.csv", INTERACTIONS)
    items = _csv(tmp_path, "it.csv", "item_id,brand\nx,p\ny,q\nx,r\n")
    with pytest.raises(DataError, match=r"it\.csv: item_id 'x' appears in data rows 1, 3"):
        load_files(FilesConfig(interactions=inter, items=items))


def test_parquet_side_table_saved_with_its_id_index_loads(tmp_path, movielens):
    inter = _write(tmp_path, "i.parquet", movielens.interactions.head(200))
    items = str(tmp_path / "items.parquet")
    movielens.items.to_parquet(items)  # indexed by item_id, as the Dataset keeps it
    ds = load_files(FilesConfig(interactions=inter, items=items))
    assert ds.items.loc["1", "title"] == "Toy Story"
    assert ds.spec.item_text == ("title",) and ds.spec.item_multi == ("genres",)
