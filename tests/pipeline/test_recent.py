"""RecommendPipeline with streamed engagements (`recent`): the merged history reaches the user tower and
the ranker, recent items are excluded, unknown users with known recent items are personalised, and
recent=None / empty leaves every answer bit-identical."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidRequestError
from features import MULTI_VALUE_SEP, merge_history
from ranking.model import HISTORY as RANKER_HISTORY
from retrieval.two_tower import HISTORY as TOWER_HISTORY


@pytest.fixture(scope="module")
def users(pipeline) -> list[str]:
    """Every train user, in vocabulary order."""
    return list(pipeline.features.vocabularies["user_id"].tokens)


def fresh_items(pipeline, user: str, n: int) -> list[str]:
    """n items the model knows that `user` did not engage with in train, most popular first."""
    seen = pipeline.features.seen_items([user])[0]
    return [i for i in pipeline.features.vocabularies["item_id"].tokens if i not in seen][:n]


def as_bytes(cands) -> list[bytes]:
    return [c.to_bytes() for c in cands]


def test_no_recent_or_empty_recent_is_bit_identical_on_every_user(pipeline, users):
    base = as_bytes(pipeline.candidates(users))
    assert as_bytes(pipeline.candidates(users, recent=[()] * len(users))) == base
    assert as_bytes(pipeline.candidates(users, recent=[[] for _ in users])) == base
    # ids the model and the catalogue do not know: nothing to merge, nothing to exclude
    assert as_bytes(pipeline.candidates(users, recent=[["no-such-item"]] * len(users))) == base
    # candidates_each reproduces one-user calls (not the batched call): compare it with its own no-recent answer
    each = as_bytes(pipeline.candidates_each(users[:40]))
    assert as_bytes(pipeline.candidates_each(users[:40], recent=[()] * 40)) == each
    assert as_bytes(pipeline.candidates_each(users[:40], recent=[["no-such-item"]] * 40)) == each


def test_merged_history_reaches_the_tower_and_the_ranker(pipeline, users):
    user = users[0]
    recent = fresh_items(pipeline, user, 3)  # newest first
    train = pipeline.features.seen[user]
    tower, ranker = pipeline.tower, pipeline.ranker
    assert tower.history_length > 0 and ranker.history_length > 0
    want_tower = MULTI_VALUE_SEP.join(merge_history(train, recent, tower.history_length))
    want_ranker = MULTI_VALUE_SEP.join(merge_history(train, recent, ranker.history_length))
    assert tower.user_inputs(pipeline.features, [user], [recent])[TOWER_HISTORY][0] == want_tower
    assert ranker.user_features(pipeline.features, [user], [recent])[RANKER_HISTORY][0] == want_ranker
    assert want_tower.endswith(MULTI_VALUE_SEP.join(reversed(recent)))
    # the embedding is the tower on exactly that input
    inputs = pipeline.features.user_features([user])
    inputs[TOWER_HISTORY] = np.array([want_tower], dtype=object)
    np.testing.assert_array_equal(pipeline.tower.embed_ids(pipeline.features, [user], [recent]),
                                  pipeline.tower.embed(inputs))
    assert not np.array_equal(pipeline.tower.embed_ids(pipeline.features, [user], [recent]),
                              pipeline.tower.embed_ids(pipeline.features, [user]))


def test_recent_changes_a_users_candidates_and_excludes_the_recent_items(pipeline, users):
    for user in users[:10]:
        before = pipeline.candidates([user])[0]
        recent = list(before.item_ids[:3])  # the user just engaged with their top 3 candidates
        after = pipeline.candidates([user], recent=[recent])[0]
        assert not set(recent) & set(after.item_ids)
        assert len(after) == len(before)
        # candidates in both lists are rescored: the ranker's history input changed
        common = [i for i in after.item_ids if i in set(before.item_ids)]
        b = dict(zip(before.item_ids, before.engagement))
        a = dict(zip(after.item_ids, after.engagement))
        assert any(a[i] != b[i] for i in common)
        # and retrieval scores move too: the user tower's history input changed
        br = dict(zip(before.item_ids, before.retrieval_scores))
        ar = dict(zip(after.item_ids, after.retrieval_scores))
        assert any(ar[i] != br[i] for i in common)


def test_unknown_user_with_known_recent_items_is_personalised(pipeline, users):
    assert pipeline.personalisable(users[0], [])
    assert not pipeline.personalisable("brand-new", [])
    assert not pipeline.personalisable("brand-new", ["no-such-item"])
    tokens = pipeline.features.vocabularies["item_id"].tokens
    a, b = list(tokens[:3]), list(tokens[-3:])
    assert pipeline.personalisable("brand-new", ["no-such-item", a[0]])
    cold = pipeline.candidates(["brand-new"])[0]
    got_a, got_b = pipeline.candidates(["brand-new", "brand-new"], recent=[a, b])
    assert not set(a) & set(got_a.item_ids) and not set(b) & set(got_b.item_ids)
    # different histories → different retrieval for the same (unknown) user id
    assert list(got_a.item_ids) != list(got_b.item_ids)
    assert not np.array_equal(got_a.retrieval_scores[:10], cold.retrieval_scores[:10])


def test_candidates_each_with_recent_equals_one_user_calls(pipeline, users):
    pipeline.batching_plan()
    picked = users[:33] + ["brand-new", "another-new"]
    recent = [fresh_items(pipeline, u, i % 4) if i % 3 else [] for i, u in enumerate(picked)]
    recent[-1] = ["no-such-item"]
    want = [pipeline.candidates([u], recent=[r])[0] for u, r in zip(picked, recent)]
    for size in (1, 2, 7, 9, len(picked)):
        got = pipeline.candidates_each(picked[:size], recent=recent[:size])
        assert as_bytes(got) == as_bytes(want[:size])
    exclude = [set(w.item_ids[:2]) for w in want[:5]]
    got = pipeline.candidates_each(picked[:5], exclude, recent[:5])
    assert as_bytes(got) == as_bytes(pipeline.candidates([u], [e], [r])[0] for u, e, r in
                                     zip(picked[:5], exclude, recent[:5]))


def test_recent_must_have_one_entry_per_user(pipeline, users):
    with pytest.raises(InvalidRequestError, match="recent has 1 entries for 2 users"):
        pipeline.candidates(users[:2], recent=[["x"]])
    with pytest.raises(InvalidRequestError, match="recent has 0 entries for 1 users"):
        pipeline.candidates_each(users[:1], recent=[])
