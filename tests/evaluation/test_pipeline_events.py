"""Offline evaluation reads the merged history: an event table (`recsys events export`'s layout) merged per
user up to the cut-off, through the same RecommendPipeline.candidates(recent=...) the server calls."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from evaluation.pipeline import PipelineEvalConfig, PipelineRecommender
from tests.features.events_table import write_events


@pytest.fixture(scope="module")
def events(pipeline, tiny_eval_data, tmp_path_factory):
    """Events of 12 test users: two engagements before each one's first test interaction, an impression, and
    an engagement at that first test timestamp (which the default cut-off leaves out). Returns
    (directory, {user: expected recent newest first}, {user: recent with every event})."""
    data = tiny_eval_data
    test = data.split.test
    first = test.groupby(test["user_id"].astype(str))["timestamp"].min()
    users = [str(u) for u in data.user_ids[data.test_users[:12]]]
    tokens = pipeline.features.vocabularies["item_id"].tokens
    rows, expected, everything = [], {}, {}
    for n, u in enumerate(users):
        seen = pipeline.features.seen_items([u])[0]
        fresh = [i for i in tokens[n:] if i not in seen][:3]
        t = int(first[u])
        rows += [(u, fresh[0], "engagement", t - 50), (u, fresh[1], "rating", t - 10, 4.0),
                 (u, fresh[2], "impression", t - 5), (u, fresh[2], "engagement", t)]
        expected[u] = (fresh[1], fresh[0])
        everything[u] = (fresh[2], fresh[1], fresh[0])
    return write_events(tmp_path_factory.mktemp("events"), rows), expected, everything


def test_pipeline_candidates_merge_each_users_events_before_their_test_period(pipeline, tiny_eval_data, events):
    directory, expected, _ = events
    rec = PipelineRecommender(PipelineEvalConfig(events=str(directory), diagnostics=False), pipeline)
    rec.fit(tiny_eval_data)
    assert rec.recent == expected
    rows = tiny_eval_data.test_users[:20]  # 12 users with events, 8 without
    users = [str(u) for u in tiny_eval_data.user_ids[rows]]
    got = rec.candidate_sets(rows)
    want = pipeline.candidates(users, recent=[expected.get(u, ()) for u in users])
    assert [c.to_bytes() for c in got] == [c.to_bytes() for c in want]
    plain = PipelineRecommender(PipelineEvalConfig(diagnostics=False), pipeline)
    plain.fit(tiny_eval_data)
    before = plain.candidate_sets(rows)
    assert [c.to_bytes() for c in before[12:]] == [c.to_bytes() for c in got[12:]]
    for u, b, g in zip(users[:12], before, got):
        assert not set(expected[u]) & set(g.item_ids)
        assert b.to_bytes() != g.to_bytes()


def test_an_explicit_cut_off_replaces_the_per_user_one(pipeline, tiny_eval_data, events):
    directory, _, everything = events
    config = PipelineEvalConfig(events=str(directory), events_before=int(np.iinfo(np.int64).max), diagnostics=False)
    rec = PipelineRecommender(config, pipeline)
    rec.fit(tiny_eval_data)
    assert rec.recent == everything
    with pytest.raises(ValueError, match="--pipeline-events-before must be >= 0"):
        dataclasses.replace(config, events_before=-1)
