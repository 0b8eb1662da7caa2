"""`recsys events log` (the LogEvents client) against a real server and redis-server, its retries and its
input errors; and the engagement counter across two real `recsys serve` processes sharing one Redis."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from recsys.cli import main as recsys_main
from recsys.commands.events import event_fields, send_events, to_proto
from tests.conftest import free_port
from tests.serving.test_cli import sigterm_and_wait, wait_serving

pytestmark = pytest.mark.integration

T0 = 1_767_225_600


def log_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = recsys_main(["events", "log", *args])
    out, err = capsys.readouterr()
    return code, out, err


def ids(response) -> list[str]:
    return [i.item_id for i in response.items]


def test_events_log_sends_one_event_and_a_rerun_is_a_duplicate(start, pipeline, known_users, redis_url, capsys):
    server, stub = start(redis_url)
    target = f"127.0.0.1:{server.port}"
    user = known_users[7]
    before = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10), timeout=30)
    clicked = before.items[0].item_id
    args = ("--target", target, "--user", user, "--item", clicked, "--type", "engagement", "--timestamp", str(T0),
            "--request-id", before.request_id, "--position", "1")
    code, out, err = log_cli(capsys, *args)
    assert code == 0, err
    assert "accepted 1, duplicates 0" in out
    after = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10), timeout=30)
    assert after.source == pb.ONLINE and clicked not in ids(after)  # the very next list reflects it
    code, out, _ = log_cli(capsys, *args)  # same fields → same default event id → deduplicated
    assert code == 0 and "accepted 0, duplicates 1" in out


def test_events_log_file_personalises_a_new_user(start, pipeline, redis_url, capsys, tmp_path):
    server, stub = start(redis_url)
    user = "cli-new-user"
    items = [str(i) for i in pipeline.index.item_ids[:3]]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps({"user_id": user, "item_id": i, "type": "rating", "value": 4,
                                          "timestamp": T0 + n}) for n, i in enumerate(items)) + "\n\n")
    assert stub.Recommend(pb.RecommendRequest(user_id=user, num_results=5), timeout=30).source == pb.FALLBACK
    code, out, err = log_cli(capsys, "--target", f"127.0.0.1:{server.port}", "--file", str(path), "--batch-size", "2")
    assert code == 0, err
    assert "sent 3 event(s): accepted 3, duplicates 0" in out
    got = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=5), timeout=30)
    assert got.source == pb.EVENTS and not set(items) & set(ids(got))


def test_the_server_refusing_a_batch_is_reported_with_its_message(start, redis_url, capsys):
    server, _ = start(redis_url)
    code, _, err = log_cli(capsys, "--target", f"127.0.0.1:{server.port}", "--user", "u" * 10_000, "--item", "i")
    assert code == 1 and "INVALID_ARGUMENT" in err and "events[0]" in err


class FlakyStub:
    """A real stub whose first `failures` LogEvents calls fail UNAVAILABLE before reaching the server."""

    def __init__(self, stub, failures: int) -> None:
        self.stub, self.failures, self.calls = stub, failures, 0

    def LogEvents(self, request, timeout=None):  # noqa: N802 (the gRPC method name)
        self.calls += 1
        if self.calls <= self.failures:
            raise _Unavailable()
        return self.stub.LogEvents(request, timeout=timeout)


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "injected"


def test_send_events_retries_unavailable_with_backoff_then_gives_up(start, known_users, redis_url):
    server, stub = start(redis_url)
    events = [to_proto(event_fields(known_users[8], "x", "impression", None, T0 + n)) for n in range(5)]
    waits: list[float] = []
    flaky = FlakyStub(stub, failures=2)
    assert send_events(flaky, events, batch_size=3, retries=3, backoff_s=0.1, sleep=waits.append) == (5, 0, 2)
    assert waits == [0.1, 0.2] and flaky.calls == 4  # batch 1: 2 failures + 1 success; batch 2: 1 call
    with pytest.raises(grpc.RpcError):
        send_events(FlakyStub(stub, failures=5), events, retries=2, sleep=waits.append)


@pytest.mark.parametrize("args, message", [
    (("--user", "u", "--item", "i", "--type", "rating"), "a rating needs a value (--value)"),
    (("--user", "u", "--item", "i", "--value", "abc"), "value must be a number"),
    (("--item", "i"), "needs a user id and an item id"),
    (("--user", "u", "--item", "i", "--file", "x.jsonl"), "give --file or --user/--item, not both"),
    (("--file", "/no/such/file.jsonl"), "--file /no/such/file.jsonl"),
    (("--user", "u", "--item", "i", "--batch-size", "0"), "--batch-size must be >= 1"),
])
def test_bad_input_is_one_line_naming_the_flag(args, message, capsys):
    code, _, err = log_cli(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_bad_file_line_is_named(tmp_path, capsys):
    path = tmp_path / "e.jsonl"
    path.write_text('{"user_id": "u", "item_id": "i"}\n{"user_id": "u", "item": "i"}\n')
    code, _, err = log_cli(capsys, "--file", str(path))
    assert code == 2 and f"--file {path} line 2: unknown key(s) ['item']" in err
    path.write_text('{"user_id": "u", "item_id": "i"}\nnot json\n')
    code, _, err = log_cli(capsys, "--file", str(path))
    assert code == 2 and "line 2: not JSON" in err


# -- two server processes, one Redis ---------------------------------------------------------------
def _serve(trained_version, redis_url: str, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(trained_version.parent), "--version",
         trained_version.name, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
         "--redis-url", redis_url, "--workers", "2", "--grace-s", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return process, port


def test_an_engagement_logged_in_one_process_is_in_the_other_processes_very_next_recommend(
        trained_version, pipeline, known_users, redis_url, capsys):
    """Process A logs the engagement (CLI → LogEvents, then LogEvents directly); process B, which holds the
    user's previous list in its near cache, reflects it in its very next Recommend — no wait, no retry — in
    every one of many trials: B's read takes the user's counter in the same MGET as the entry (and a near-cache
    hit re-reads it), so an entry computed before the engagement is never used (ARCHITECTURE.md, "Across
    processes, precisely")."""
    (a, port_a), (b, port_b) = _serve(trained_version, redis_url), _serve(trained_version, redis_url)
    try:
        wait_serving(port_a, a)
        wait_serving(port_b, b)
        with grpc.insecure_channel(f"127.0.0.1:{port_a}") as ca, grpc.insecure_channel(f"127.0.0.1:{port_b}") as cb:
            stub_a, stub_b = pb_grpc.RecommenderStub(ca), pb_grpc.RecommenderStub(cb)

            def ask(stub, user):
                return stub.Recommend(pb.RecommendRequest(user_id=user, num_results=10), timeout=60)

            user = known_users[9]
            first = ask(stub_b, user)
            assert ask(stub_b, user).source == pb.CACHE  # B's near cache holds the batch-history list
            clicked = first.items[0].item_id
            code, out, err = log_cli(capsys, "--target", f"127.0.0.1:{port_a}", "--user", user, "--item", clicked,
                                     "--timestamp", str(T0))
            assert code == 0 and "accepted 1" in out, err
            on_b = ask(stub_b, user)
            assert clicked not in ids(on_b) and on_b.source == pb.ONLINE
            assert ids(ask(stub_a, user)) == ids(on_b)
            stale = []
            trials = 0
            for n in range(1, 4):  # users x engagements, each checked on B right after A's acknowledgement
                for user in known_users[10:20]:
                    before = ask(stub_b, user)
                    assert ask(stub_b, user).source == pb.CACHE
                    clicked = before.items[0].item_id
                    reply = stub_a.LogEvents(pb.LogEventsRequest(events=[pb.Event(
                        event_id=f"{user}-fresh-{n}", user_id=user, item_id=clicked, type=pb.ENGAGEMENT,
                        timestamp=T0 + n)]), timeout=10)
                    assert reply.accepted == 1
                    trials += 1
                    after = ask(stub_b, user)
                    if clicked in ids(after) or after.source != pb.ONLINE:
                        stale.append((user, n, after.source))
            assert trials == 30 and stale == []
    finally:
        for p in (a, b):
            sigterm_and_wait(p, timeout=30)
