"""features.merge_history on hand-computed values, and FeatureStore.history / seen_items with `recent`."""
from __future__ import annotations

import pytest

from core.errors import InvalidRequestError
from features import merge_history


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
