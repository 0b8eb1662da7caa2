"""The batch job with --events: each user's engagements in the event table merged into their history, bit for
bit what the online pipeline computes with the same `recent` on the same batches."""
from __future__ import annotations

import copy

import pytest

from beam_jobs.handlers import assign_batches
from pipeline import precomputed_key
from tests.beam_jobs.conftest import BATCH_SIZE, batch_score, in_memory, job_counters, redis_snapshot
from tests.features.events_table import write_events

pytestmark = pytest.mark.integration  # Beam's local runner and a redis-server

T0 = 1_700_000_000


def test_batch_entries_merge_the_event_table_like_the_online_pipeline(tiny_version, pipeline, train_users,
                                                                      own_redis, tmp_path):
    tokens = pipeline.features.vocabularies["item_id"].tokens
    rows, recent = [], {}
    for n, u in enumerate(train_users[::7]):  # users spread over every batch
        seen = pipeline.features.seen_items([u])[0]
        fresh = [i for i in tokens[n % 40:] if i not in seen][:3]
        rows += [(u, fresh[0], "engagement", T0 + n), (u, fresh[1], "impression", T0 + n + 1),
                 (u, fresh[2], "rating", T0 + n + 2, 5.0), (u, fresh[1], "engagement", T0 + 10**6)]
        recent[u] = (fresh[2], fresh[0])  # newest first; the last event is after --events-before
    events = write_events(tmp_path / "events", rows)
    output = tmp_path / "out"
    code = batch_score(tiny_version, "--redis-url", own_redis.url, "--output", str(output), "--events", str(events),
                       "--events-before", str(T0 + 10**5), *in_memory())
    assert code == 0
    assert job_counters(output)["users_scored"] == len(train_users)
    entries = redis_snapshot(own_redis)
    changed = 0
    for batch in assign_batches(train_users, BATCH_SIZE):
        want = pipeline.candidates(list(batch), recent=[recent.get(u, ()) for u in batch])
        got = [entries[precomputed_key(pipeline.model_version, u).encode()] for u in batch]
        assert got == [c.to_bytes() for c in want]
        plain = pipeline.candidates(list(batch))
        changed += sum(a.to_bytes() != b.to_bytes() for a, b in zip(want, plain))
    assert changed == len(recent)


def test_a_bad_event_table_fails_before_launch_naming_the_flag(tiny_version, tmp_path, capsys):
    (tmp_path / "ev.csv").write_text("user_id,item_id\nu1,i1\n")
    code = batch_score(tiny_version, "--output", str(tmp_path / "out"), "--events", str(tmp_path / "ev.csv"),
                       *in_memory())
    assert code == 2
    err = capsys.readouterr().err
    assert "--events" in err and "missing column(s) timestamp" in err and "Traceback" not in err


def test_unknown_users_with_events_get_the_new_user_scorer_like_the_online_pipeline(tiny_version, pipeline,
                                                                                   train_users, own_redis, tmp_path):
    tokens = list(pipeline.features.vocabularies["item_id"].tokens)
    users = train_users[:5] + ["beam-new-1", "beam-new-2", "beam-new-3"]
    rows = [("beam-new-1", tokens[3], "engagement", T0), ("beam-new-1", tokens[9], "rating", T0 + 1, 4.0),
            ("beam-new-2", tokens[20], "engagement", T0), ("beam-new-3", "no-such-item", "engagement", T0)]
    recent = {"beam-new-1": (tokens[9], tokens[3]), "beam-new-2": (tokens[20],), "beam-new-3": ("no-such-item",)}
    events = write_events(tmp_path / "events", rows)
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    output = tmp_path / "out"
    assert batch_score(tiny_version, "--redis-url", own_redis.url, "--output", str(output), "--events", str(events),
                       "--users", str(users_file), *in_memory()) == 0
    entries = redis_snapshot(own_redis)
    # Beam runs every user of a batch through the models and then answers the unknown users with events the
    # catalogue knows from the new-user scorer; the models' rows are compared with the same batch through the
    # model path (row-exact only for equal call sizes), the scorer's answers with the online pipeline's.
    bare = copy.copy(pipeline)
    bare.new_users = None
    scorer_users = {"beam-new-1", "beam-new-2"}
    for batch in assign_batches(users, BATCH_SIZE):
        through_models = bare.candidates(list(batch), recent=[recent.get(u, ()) for u in batch])
        for u, model_answer in zip(batch, through_models):
            got = entries[precomputed_key(pipeline.model_version, u).encode()]
            if u in scorer_users:
                online = pipeline.candidates([u], recent=[recent[u]])[0]
                assert got == online.to_bytes() == pipeline.new_user_candidates(recent[u]).to_bytes()
            else:  # known users, and beam-new-3 whose only event names no catalogue item: the models
                assert got == model_answer.to_bytes()
