"""features.merge_history on hand-computed values, and FeatureStore.history / seen_items with `recent`."""
from __future__ import annotations

import pandas as pd
import pytest

from core.errors import DataError, InvalidRequestError
from features import merge_history, read_engagements, read_recent, recent_by_user
from tests.features.events_table import write_events


def test_recent_items_come_after_the_batch_newest_last():
    # recent is newest first: "z" is the newest engagement, so it ends the history.
    assert merge_history(("a", "b", "c"), ("z", "y"), 10) == ("a", "b", "c", "y", "z")


def test_a_repeated_item_keeps_its_newest_position():
    # "b" was seen in batch and again recently; "y" streamed twice (newest first: positions 0 and 2).
    assert merge_history(("a", "b", "c"), ("y", "b", "y"), 10) == ("a", "c", "b", "y")


def test_length_keeps_the_newest_items():
    assert merge_history(("a", "b", "c"), ("z", "y"), 3) == ("c", "y", "z")
    assert merge_history(("a", "b", "c"), ("z", "y", "x", "w"), 2) == ("y", "z")
    assert merge_history(("a", "b"), ("z",), 0) == ()
    assert merge_history(("a", "b"), ("z",), -1) == ()


def test_empty_recent_is_the_batch_tail():
    assert merge_history(("a", "b", "c"), (), 2) == ("b", "c")
    assert merge_history((), (), 5) == ()
    assert merge_history((), ("x", "x"), 5) == ("x",)


def test_unknown_recent_ids_are_dropped_only_when_known_is_given():
    known = {"a", "b", "c", "y"}
    assert merge_history(("a", "b"), ("q", "y", "r"), 10) == ("a", "b", "r", "y", "q")
    assert merge_history(("a", "b"), ("q", "y", "r"), 10, known) == ("a", "b", "y")
    # an unknown id does not take a slot of the length window
    assert merge_history(("a", "b", "c"), ("q", "y"), 2, known) == ("c", "y")
    # batch items are never filtered (the train history is passed through as it is)
    assert merge_history(("zz", "a"), (), 5, known) == ("zz", "a")


def test_feature_store_history_merges_recent_per_user(pipeline):
    store = pipeline.features
    user = next(u for u, items in store.seen.items() if len(items) >= 4)
    train = store.seen[user]
    fresh = next(i for i in store.vocabularies["item_id"].tokens if i not in train)
    got = store.history([user, "no-such-user", user], 3, [[fresh, "not-an-item", train[0]], [fresh], []])
    assert got[0] == tuple(x for x in train if x != train[0])[-1:] + (train[0], fresh)
    assert got[1] == (fresh,)
    assert got[2] == train[-3:]
    assert store.history([user], 3, None) == store.history([user], 3) == [train[-3:]]
    seen = store.seen_items([user, "no-such-user"], [["not-an-item", fresh], []])
    assert seen[0] == frozenset(train) | {fresh, "not-an-item"}
    assert seen[1] == frozenset()


def test_recent_must_match_the_users(pipeline):
    with pytest.raises(InvalidRequestError, match="recent has 1 entries for 2 users"):
        pipeline.features.history(["a", "b"], 3, [["x"]])
    with pytest.raises(InvalidRequestError, match="sequence of item ids"):
        pipeline.features.seen_items(["a"], ["x"])


# -- event tables read offline ---------------------------------------------------------------------------------
DAY = 86_400


@pytest.mark.parametrize("engaged_column", [True, False])
def test_read_recent_keeps_engagements_newest_first_up_to_the_cut_off(tmp_path, engaged_column):
    t0 = 1_700_000_000
    rows = [("u1", "a", "engagement", t0), ("u1", "b", "impression", t0 + 1), ("u2", "a", "rating", t0 + 2, 4.0),
            ("u1", "c", "rating", t0 + DAY, 5.0), ("u1", "a", "engagement", t0 + DAY + 5),
            ("u1", "d", "engagement", t0 + 3 * DAY)]
    write_events(tmp_path, rows, engaged_column)
    # three partitions, an impression, a repeat of "a": newest first, repeats kept (merge_history dedupes)
    assert read_recent(tmp_path) == {"u1": ("d", "a", "c", "a"), "u2": ("a",)}
    assert read_recent(tmp_path, before=t0 + 3 * DAY) == {"u1": ("a", "c", "a"), "u2": ("a",)}
    frame = read_engagements(tmp_path)
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert recent_by_user(frame, {"u1": t0 + DAY}) == {"u1": ("a",)}  # per-user cut-off; u2 has none → nothing


def test_read_engagements_drops_repeated_event_ids(tmp_path):
    write_events(tmp_path / "a", [("u1", "a", "engagement", 100), ("u1", "b", "engagement", 101)])
    write_events(tmp_path / "b", [("u1", "a", "engagement", 100), ("u1", "c", "engagement", 101)])  # e0, e1 again
    assert read_recent(tmp_path) == {"u1": ("b", "a")}


def test_a_bad_event_table_is_a_data_error_naming_the_flag_and_column(tmp_path):
    with pytest.raises(DataError, match="--events: file not found"):
        read_engagements(tmp_path / "missing")
    pd.DataFrame({"user_id": ["u"], "item_id": ["i"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"--pipeline-events .*missing column\(s\) timestamp, engaged \(or type\)"):
        read_engagements(tmp_path / "t.parquet", flag="--pipeline-events")
    pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": ["soon"], "engaged": [1]}).to_parquet(
        tmp_path / "s.parquet")
    with pytest.raises(DataError, match="timestamp must hold integer seconds"):
        read_engagements(tmp_path / "s.parquet")
