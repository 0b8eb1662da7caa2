"""RecommendPipeline with streamed engagements (`recent`): the merged history reaches the user tower and
the ranker, recent items are excluded, unknown users with known recent items are personalised, and
recent=None / empty leaves every answer bit-identical."""
from __future__ import annotations

import copy

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


def model_path(pipeline):
    """The same version without its new-user scorer (a version trained before it, or --no-newuser-enabled):
    unknown users with events go through the model's OOV id and history bag."""
    bare = copy.copy(pipeline)
    bare.new_users = None
    return bare


def test_unknown_user_with_known_recent_items_is_personalised(pipeline, users):
    pipeline = model_path(pipeline)
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


def test_unknown_user_with_events_is_scored_by_the_new_user_scorer(pipeline, users, tiny_version):
    from core import layout
    from features.cooccurrence import ItemCooccurrence

    scorer = pipeline.new_users
    assert scorer is not None and layout.new_users_file(tiny_version).is_file()  # written by `recsys train`
    assert 0.0 <= scorer.weight <= 1.0 and 0.0 < scorer.decay <= 1.0
    assert ItemCooccurrence.load(layout.new_users_file(tiny_version)).cond.nnz == scorer.cond.nnz
    from core.registry import read_manifest
    record = read_manifest(tiny_version)["new_users"]  # the choice and its table, for the reader of the version
    assert (record["weight"], record["decay"]) == (scorer.weight, scorer.decay)
    assert record["simulated_users"] >= 20 and sum(r["chosen"] for r in record["table"]) == 1
    assert record["config"]["neighbors"] == 200 and layout.NEW_USERS_FILE in read_manifest(tiny_version)["checksums"]
    assert not pipeline.personalisable("brand-new", ["no-such-item"])
    tokens = list(pipeline.features.vocabularies["item_id"].tokens)
    events = tokens[5:8]
    assert pipeline.personalisable("brand-new", ["no-such-item", events[0]])
    got = pipeline.candidates(["brand-new"], [{tokens[0]}], recent=[events])[0]
    # by hand: the mixture of the fallback's reach with P(item | events), the events and `exclude` left out
    fb = pipeline.fallback_candidates
    reach = dict(zip(fb.item_ids, fb.engagement.astype(np.float64)))
    quality = dict(zip(fb.item_ids, fb.quality))
    mix = dict(zip(scorer.item_ids, scorer.engagement(np.array([reach[i] for i in scorer.item_ids]), events)))
    want = sorted((i for i in mix if i not in set(events) | {tokens[0]}), key=lambda i: (-mix[i], -reach[i],
                                                                                         list(mix).index(i)))
    want = want[:pipeline.config.num_candidates]
    assert list(got.item_ids) == want
    np.testing.assert_allclose(got.engagement, [min(max(mix[i], 0.0), 1.0) for i in want], rtol=1e-6)
    np.testing.assert_array_equal(got.quality, np.array([quality[i] for i in want], dtype=np.float32))
    assert got.model_version == pipeline.model_version
    # the order of the events matters through the decay (when the decay is < 1) and known users are untouched
    mixed = pipeline.candidates([users[0], "brand-new", users[1]], recent=[[], events, []])
    assert as_bytes([mixed[0], mixed[2]]) == as_bytes(pipeline.candidates([users[0], users[1]]))
    assert mixed[1].to_bytes() == pipeline.candidates(["brand-new"], recent=[events])[0].to_bytes()
    assert pipeline.candidates_each(["brand-new"], recent=[events])[0].to_bytes() == mixed[1].to_bytes()


def test_a_version_without_the_scorer_loads_and_uses_the_model_path(pipeline, tiny_version, tmp_path):
    import shutil

    from core import layout
    from pipeline import RecommendPipeline

    copy_dir = tmp_path / "old"
    shutil.copytree(tiny_version, copy_dir)
    layout.new_users_file(copy_dir).unlink()  # as a version trained before the scorer existed
    old = RecommendPipeline.from_version_dir(copy_dir, verify=False)
    assert old.new_users is None
    events = list(pipeline.features.vocabularies["item_id"].tokens[5:8])
    got = old.candidates(["brand-new"], recent=[events])[0]
    want = model_path(pipeline).candidates(["brand-new"], recent=[events])[0]
    assert list(got.item_ids) == list(want.item_ids)
    np.testing.assert_array_equal(got.engagement, want.engagement)


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
