"""`recsys serve` as a real process (health, client, metrics, SIGTERM) and `recsys recommend`/`serve-demo`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.cli import main as recsys_main
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def wait_serving(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, f"recsys serve exited early: {process.stderr.read() if process.stderr else ''}"
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError("recsys serve did not report SERVING in time")


def sigterm_and_wait(process: subprocess.Popen, timeout: float) -> list[str]:
    """SIGTERMs `recsys serve`, asserts it exits 0 within `timeout`; the `event`s of its JSON log lines."""
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr
    return [json.loads(line).get("event") for line in stderr.splitlines() if line.startswith("{")]


def client(capsys, *args: str) -> tuple[int, str, str]:
    """`recsys recommend ...` in this process (the server is the real subprocess): (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = recsys_main(["recommend", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_serve_answers_the_cli_client_and_stops_gracefully_on_sigterm(trained_version, known_users, redis_url,
                                                                      capsys):
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(trained_version.parent), "--version",
         trained_version.name, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
         "--redis-url", redis_url, "--workers", "2", "--grace-s", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        wait_serving(port, process)
        target = f"127.0.0.1:{port}"
        code, out, err = client(capsys, "--target", target, "--user", known_users[0], "--json")
        assert code == 0, err
        answer = json.loads(out)
        assert answer["source"] == "ONLINE" and len(answer["items"]) == 10
        second = json.loads(client(capsys, "--target", target, "--user", known_users[0], "--json")[1])
        assert second["source"] == "CACHE" and second["items"] == answer["items"]
        code, out, _ = client(capsys, "--target", target, "--user", known_users[0], "-k", "3", "--explain")
        assert code == 0 and "from CACHE" in out and "r_rank" in out
        code, _, err = client(capsys, "--target", target, "--user", known_users[0], "-k", "0")
        assert code == 1 and "INVALID_ARGUMENT" in err and "num_results" in err
        code, out, err = client(capsys, "--target", target, "--user", known_users[0], "--json", "--blend-mode",
                                "additive", "--blend-transform", "identity", "--engagement-weight", "1",
                                "--quality-weight", "2")
        assert code == 0, err
        assert json.loads(out)["blend"] == {"engagement": 1.0, "quality": 2.0, "mode": "ADDITIVE",
                                            "transform": "IDENTITY"}
        code, out, err = client(capsys, "--target", target, "--user", known_users[0], "--json", "--blend-mode",
                                "additive", "--blend-transform", "logit", "--engagement-weight", "1",
                                "--quality-weight", "2")
        assert code == 0 and json.loads(out)["blend"]["transform"] == "LOGIT", err
        code, out, _ = client(capsys, "--target", target, "--item", answer["items"][0]["item_id"], "-k", "3")
        assert code == 0 and out.startswith(f"items similar to {answer['items'][0]['item_id']}")
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "recsys_cache_hit_ratio" in body and 'recsys_model_info{version="tiny"} 1.0' in body
    finally:
        events = sigterm_and_wait(process, timeout=30)
    assert "model_loaded" in events and events[-1] == "shutdown"


def test_recommend_blend_mode_needs_the_weights(capsys):
    code, _, err = client(capsys, "--user", "u1", "--blend-mode", "multiplicative")
    assert code == 2 and "--blend-mode needs --engagement-weight and --quality-weight" in err


def test_serve_refuses_an_unknown_version_with_a_clear_message(trained_version, capsys):
    code = recsys_main(["serve", "--artifacts", str(trained_version.parent), "--version", "no-such-version",
                        "--port", "0", "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("recsys serve: error:") and "no-such-version" in err and "Traceback" not in err


def test_recommend_without_a_server_says_unavailable(capsys):
    code, _, err = client(capsys, "--target", f"127.0.0.1:{free_port()}", "--user", "u1", "--timeout", "1")
    assert code == 1
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


def test_serve_demo_shows_online_cache_reweighted_and_fallback_answers(trained_version, capsys):
    assert recsys_main(["serve-demo", "--artifacts", str(trained_version.parent), "--version",
                        trained_version.name]) == 0
    out = capsys.readouterr().out
    assert "cache: redis-server started" in out and "health: SERVING" in out
    sections = out.split("\n$ recsys recommend ")[1:]
    # two known users × (online, cached, re-weighted), fallback, similar items; then the events part: the
    # first user after two engagements, a brand-new user before and after three events
    assert len(sections) == 2 * 3 + 2 + 3
    rows = [[line.split() for line in s.splitlines()[3:] if line.split()[:1] and line.split()[0].isdigit()]
            for s in sections]
    sources = [[row[-2] for row in r] for r in rows]
    assert [set(s) for s in sources[:6]] == [{"ONLINE"}, {"CACHE"}, {"CACHE"}] * 2
    assert sources[6] == ["FALLBACK"] * 5 and sources[7] == ["INDEX"] * 5
    assert sources[8:] == [["ONLINE"] * 5, ["FALLBACK"] * 5, ["EVENTS"] * 5]
    engaged = {row[1] for row in rows[1][:2]}  # the two items the user engaged with (top of the cached list)
    assert not engaged & {row[1] for row in rows[8]}
    assert all(row[-1] == trained_version.name for r in rows for row in r)
    assert "online computations 4, fallbacks 2, Redis faults 0" in out
    # the events are shown as the `recsys events log` commands that send them (and sent the same way)
    assert out.count("\n$ recsys events log --target 127.0.0.1:") == 2 + 2 + 3
    assert "accepted 2, duplicates 0" in out and "accepted 0, duplicates 2" in out and "accepted 3, duplicates 0" in out
    assert out.rstrip().endswith("stopped the server and redis-server")


def test_building_the_cli_imports_no_tensorflow_faiss_or_beam():
    """`recsys --help` stays fast: serve/recommend/serve-demo import their heavy modules when run."""
    code = ("import sys; from recsys.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'faiss', 'apache_beam') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_demo_without_redis_server_uses_the_in_process_cache_and_says_so(trained_version, known_users,
                                                                              monkeypatch, capsys):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "redis-server" else real_which(name))
    assert recsys_main(["serve-demo", "--artifacts", str(trained_version.parent), "--version", trained_version.name,
                        "--users", known_users[0], "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "cache: in-process LRU (redis-server is not installed" in out
    assert out.count("$ recsys recommend ") == 3 + 2 and "online computations 1" in out
    assert out.rstrip().endswith("stopped the server")


def _three_free_ports() -> int:
    """A port P such that P, P + 1 and P + 2 are free (process i of --processes 2 serves metrics on P + i, the
    supervisor on P + 2)."""
    from tests.serving.test_hotswap import free_ports

    return free_ports(3)


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_serve_processes_share_one_port_and_stop_together(trained_version, known_users, redis_url):
    """--processes 2: two servers on one port (SO_REUSEPORT), both answering, both stopped by one SIGTERM."""
    import re

    from protos.recsys.v1 import recommender_pb2 as pb
    from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    port, metrics_port = free_port(), _three_free_ports()
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(trained_version.parent), "--version",
         trained_version.name, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
         "--redis-url", redis_url, "--workers", "2", "--grace-s", "2", "--processes", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        wait_serving(port, process)
        deadline = time.monotonic() + 120
        while not all('recsys_model_info{version="tiny"} 1.0' in _metrics(m) for m in (metrics_port, metrics_port + 1)):
            assert time.monotonic() < deadline, "both processes should load the model"
            time.sleep(0.5)
        for i in range(24):  # a fresh connection each: the kernel spreads connections over the processes
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                answer = pb_grpc.RecommenderStub(ch).Recommend(
                    pb.RecommendRequest(user_id=known_users[i % len(known_users)], num_results=5), timeout=60)
                assert len(answer.items) == 5 and answer.model_version == "tiny"
        served = []
        for m in (metrics_port, metrics_port + 1):
            found = re.search(r'recsys_requests_total\{code="OK",method="Recommend"\} (\d+)', _metrics(m))
            served.append(int(found.group(1)) if found else 0)
        assert sum(served) >= 24 and min(served) > 0, served
    finally:
        events = sigterm_and_wait(process, timeout=60)
    assert events.count("shutdown") == 2 and events[-1] == "processes_stopped"
    for m in (metrics_port, metrics_port + 1, metrics_port + 2):
        with pytest.raises(OSError):
            _metrics(m)


def test_serve_processes_need_a_fixed_port(trained_version, capsys):
    code = recsys_main(["serve", "--artifacts", str(trained_version.parent), "--version", trained_version.name,
                        "--port", "0", "--processes", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--processes > 1 needs a fixed --port" in err and "Traceback" not in err
