"""feedback.log and feedback.export against a real redis-server: atomic idempotent appends, streamed
history, served lists, the Parquet export (exactly once, readable by --source files) and AOF durability."""
import json
import time

import pandas as pd
import pytest

from feedback import (
    Event,
    EventLog,
    EventLogConfig,
    EventLogUnavailableError,
    ExportConfig,
    ServedListLogger,
    export_events,
)
from pipeline import recent_key
from ranking import BlendWeights
from tests.conftest import RedisServer

pytestmark = pytest.mark.integration

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def ev(i: int, user: str = "u1", item: str | None = None, kind: str = "engagement", ts: int = T0, **kw) -> Event:
    return Event(f"e{i}", user, item or f"i{i}", kind, ts, **kw)


@pytest.fixture
def event_log(redis_url):
    log = EventLog(redis_url, EventLogConfig(recent_length=3))
    yield log
    log.close()


def test_append_writes_the_batch_and_a_replay_changes_nothing(event_log):
    client = event_log.client
    batch = [ev(0), ev(1, kind="impression", position=2, request_id="r1"), ev(2, kind="rating", value=4.0), ev(3)]
    assert event_log.append(batch)[:2] == (4, 0)
    before = {k: client.dump(k) for k in client.keys("*")}
    assert client.xlen("recsys:events") == 4
    accepted, duplicates, bumped = event_log.append(batch)
    assert (accepted, duplicates, bumped) == (0, 4, {})
    assert {k: client.dump(k) for k in client.keys("*")} == before
    # Engagements and ratings only, newest first, bounded to recent_length; the counter counts them.
    assert event_log.recent("u1") == ["i3", "i2", "i0"]
    assert event_log.version("u1") == 3
    assert event_log.version("nobody") == 0 and event_log.recent("nobody") == []
    # The list is trimmed lazily (at twice recent_length); readers still get the newest recent_length.
    for n in range(10, 17):
        event_log.append([ev(n)])
    assert event_log.recent("u1") == ["i16", "i15", "i14"]
    assert client.llen(recent_key("u1")) <= 6 and event_log.version("u1") == 10


def test_a_batch_mixing_new_and_seen_ids_writes_only_the_new(event_log):
    event_log.append([ev(0), ev(1)])
    accepted, duplicates, bumped = event_log.append([ev(1), ev(2, user="u2"), ev(2, user="u2")])
    assert (accepted, duplicates) == (1, 2)
    assert bumped == {"u2": 1}
    assert event_log.client.xlen("recsys:events") == 3


def test_redis_down_is_unavailable_and_nothing_is_written(own_redis):
    log = EventLog(own_redis.url, EventLogConfig(timeout_s=0.2))
    log.append([ev(0)])
    own_redis.stop()
    with pytest.raises(EventLogUnavailableError, match="nothing of this batch was written"):
        log.append([ev(1), ev(2)])
    own_redis.start()  # empty: no persistence in this fixture
    assert log.client.xlen("recsys:events") == 0
    assert log.append([ev(1), ev(2)])[:2] == (2, 0)
    log.close()


def served(log: EventLog, n_lists: int, clock=lambda: T0 + 60) -> ServedListLogger:
    logger = ServedListLogger(log, clock=clock)
    for r in range(n_lists):
        logger.log(f"req{r}", "u1", [f"i{r}", f"i{r + 1}", f"i{r + 2}"], "v1", "cache",
                   BlendWeights(1.0, 0.5, "multiplicative", "identity"))
    assert logger.flush()
    logger.close()
    return logger


def read_output(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values("log_id", kind="stable").reset_index(drop=True)


def test_export_writes_day_partitions_with_impressions_as_negatives(event_log, redis_url, tmp_path):
    event_log.append([ev(0, ts=T0 - 10), ev(1, kind="rating", value=2.5, request_id="req0", position=2),
                      ev(2, kind="impression", position=1, request_id="x")])
    assert served(event_log, 2).written == 2
    out = tmp_path / "events"
    summary = export_events(ExportConfig(redis_url=redis_url, output=str(out)))
    assert (summary.entries, summary.rows, summary.duplicates) == (5, 9, 0)
    assert sorted(p.name for p in out.iterdir()) == ["_export", "date=2025-12-31", "date=2026-01-01"]
    df = read_output(out)
    assert list(df["event_id"]) == ["e0", "e1", "e2", "req0:1", "req0:2", "req0:3", "req1:1", "req1:2", "req1:3"]
    assert list(df["engaged"]) == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert list(df["position"]) == [0, 2, 1, 1, 2, 3, 1, 2, 3]
    assert df.loc[1, "rating"] == 2.5 and df["rating"].isna().sum() == 8
    served_rows = df[df["request_id"] == "req1"]
    assert set(served_rows["model_version"]) == {"v1"} and set(served_rows["source"]) == {"cache"}
    assert set(served_rows["blend"]) == {"1,0.5,multiplicative,identity"}
    assert json.loads((out / "_export/checkpoint.json").read_text())["entries"] == 5

    # --source files reads the directory as it is: the schema's columns, impressions as engaged = 0.
    from features import FilesConfig, load_files

    dataset = load_files(FilesConfig(interactions=str(out)))
    assert len(dataset.interactions) == 9
    assert int((dataset.interactions["engaged"] == 0).sum()) == 7


def test_export_is_incremental_and_a_rerun_after_a_crash_writes_no_duplicates(event_log, redis_url, tmp_path):
    out = tmp_path / "events"
    config = ExportConfig(redis_url=redis_url, output=str(out), chunk_events=2)
    event_log.append([ev(i) for i in range(5)])
    assert export_events(config).rows == 5
    event_log.append([ev(i) for i in range(5, 8)])
    # A crash after the files of a run were written but before its checkpoint: put the old one back.
    checkpoint = (out / "_export/checkpoint.json").read_text()
    assert export_events(config).rows == 3
    (out / "_export/checkpoint.json").write_text(checkpoint)
    rerun = export_events(config)
    assert (rerun.entries, rerun.rows, rerun.duplicates) == (3, 0, 3)
    assert export_events(config).entries == 0  # nothing new
    df = read_output(out)
    assert sorted(df["event_id"]) == sorted(f"e{i}" for i in range(8))
    # An event id logged again after its dedupe marker expired is still exported once.
    event_log.client.delete("recsys:events:seen:e0")
    assert event_log.append([ev(0)])[0] == 1
    assert export_events(config).duplicates == 1
    assert len(read_output(out)) == 8


def test_export_trim_drains_the_log(event_log, redis_url, tmp_path):
    event_log.append([ev(i) for i in range(4)])
    export_events(ExportConfig(redis_url=redis_url, output=str(tmp_path / "o"), trim=True))
    assert event_log.client.xlen("recsys:events") == 0
    event_log.append([ev(4)])
    assert export_events(ExportConfig(redis_url=redis_url, output=str(tmp_path / "o"), trim=True)).rows == 1


def test_acknowledged_events_survive_kill_9_through_the_aof(tmp_path):
    redis = RedisServer(tmp_path, appendonly=True).start()
    try:
        log = EventLog(redis.url)
        for i in range(0, 200, 20):
            log.append([ev(j, user=f"u{j % 7}") for j in range(i, i + 20)])
        time.sleep(1.5)  # appendfsync everysec: what was acknowledged more than a second ago is on disk
        redis.kill()
        redis.start()
        assert log.client.xlen("recsys:events") == 200
        assert log.append([ev(5, user="u5")])[:2] == (0, 1)  # the dedupe markers came back too
        log.close()
    finally:
        redis.stop()
    assert any(p.name.startswith("appendonly") for p in (tmp_path / "appendonlydir").iterdir())


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_user_versions_read_through_only_grow_and_expire(event_log):
    from feedback import UserVersions

    clock = FakeClock()
    versions = UserVersions(event_log, ttl_s=10.0, max_entries=2, clock=clock)
    assert versions.get("u1") == 0  # read from Redis, then held
    event_log.append([ev(0), ev(1)])
    assert versions.get("u1") == 0  # the copy is trusted for ttl_s (no pub/sub running here)
    assert versions.bump("u1", 1) == 1 and versions.bump("u1", 0) == 1  # never goes back
    clock.now = 10.5
    assert versions.get("u1") == 2  # expired: read again
    versions.get("u2")
    versions.get("u3")
    assert len(versions) == 2  # bounded


def test_user_versions_hear_other_processes_through_pub_sub(event_log):
    from feedback import UserVersions

    versions = UserVersions(event_log, ttl_s=3600.0).start()
    try:
        assert versions.wait_subscribed()
        assert versions.get("u1") == 0
        event_log.append([ev(0)])  # another process's LogEvents: only the PUBLISH reaches this one
        deadline = time.monotonic() + 5
        while versions.get("u1") != 1:
            assert time.monotonic() < deadline, "the counter update was not heard"
            time.sleep(0.005)
    finally:
        versions.close()


def test_recsys_events_export_cli_writes_and_reruns_cleanly(event_log, redis_url, tmp_path, capsys):
    from recsys.cli import main as recsys_main

    event_log.append([ev(i) for i in range(3)])
    argv = ["--log-level", "WARNING", "events", "export", "--redis-url", redis_url, "--output", str(tmp_path / "o")]
    assert recsys_main(argv) == 0
    assert "exported 3 log entries → 3 rows" in capsys.readouterr().out
    assert recsys_main(argv) == 0
    assert "exported 0 log entries → 0 rows" in capsys.readouterr().out
    assert recsys_main([*argv, "--chunk-events", "0"]) == 2
    assert "--chunk-events must be >= 1" in capsys.readouterr().err
