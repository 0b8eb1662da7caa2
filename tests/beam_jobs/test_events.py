"""The batch job with --events: each user's engagements in the event table merged into their history, bit for
bit what the online pipeline computes with the same `recent` on the same batches."""
from __future__ import annotations

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
