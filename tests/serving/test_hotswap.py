"""Hot swap: promote → the running server swaps without failing a request; bad versions are refused."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import registry
from core.errors import ArtifactMismatchError
from pipeline import cache_key
from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from serving import CacheConfig, HotSwapConfig, RecommendServer, RegistryWatcher, ServerConfig
from serving.security import client_channel
from tests.conftest import free_port
from tests.serving.versions_util import (
    ClientLoop,
    copy_version,
    flip_byte,
    point_current,
    rebuild_index,
    started,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry_root(trained_version, tmp_path_factory) -> pathlib.Path:
    """A registry with the session's tiny version (CURRENT; a symlink, so the shared `pipeline` is
    its loaded model) and v2, a sealed copy of it that the server sees as another version."""
    root = tmp_path_factory.mktemp("registry")
    (root / trained_version.name).symlink_to(trained_version, target_is_directory=True)
    copy_version(trained_version, root, "v2")
    registry.promote(root, trained_version.name)
    return root


@pytest.fixture
def swap_server(registry_root, pipeline, redis_url):
    """A server on the tiny version with a watcher on the registry (10 Hz), Redis without the near layer."""
    registry.promote(registry_root, pipeline.model_version)
    server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, workers=4, metrics_port=0),
                             CacheConfig(redis_url=redis_url, near_ttl_s=0))
    with started(server):
        server.set_model(pipeline)
        watcher = RegistryWatcher(lambda: registry.resolve_version(registry_root, "current"),
                                  set_model=server.set_model, served_version=server.served_version,
                                  metrics=server.metrics,
                                  config=HotSwapConfig(watch_interval_s=0.1, warmup_users=2)).start()
        try:
            yield server, watcher
        finally:
            watcher.stop()


def _loads(server, result: str) -> float:
    return server.metrics.value("recsys_model_loads_total", {"result": result})


def test_promote_swaps_without_failing_a_request_and_rollback_finds_the_old_cache(
        swap_server, registry_root, pipeline, known_users, redis_server):
    server, watcher = swap_server
    v1 = pipeline.model_version
    stub = pb_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    user = known_users[0]

    def ask() -> pb.RecommendResponse:
        return stub.Recommend(pb.RecommendRequest(user_id=user, num_results=5), timeout=30)

    assert ask().source == pb.ONLINE
    assert (ask().model_version, ask().source) == (v1, pb.CACHE)  # cached under v1's namespace
    with ClientLoop(f"127.0.0.1:{server.port}", known_users[1:21], clients=3) as loop:
        wait_for(lambda: len(loop.records) > 30, what="traffic on v1")
        registry.promote(registry_root, "v2")
        wait_for(lambda: "v2" in loop.versions(), what="responses from v2")
        seen = len(loop.records)
        wait_for(lambda: len(loop.records) > seen + 30, what="traffic on v2")
    assert loop.failures() == []
    assert loop.versions() == {v1, "v2"}
    for client in range(3):  # each client sees v1 then v2, never back
        versions = [r[3] for r in loop.records if r[0] == client]
        assert set(versions[versions.index("v2"):]) == {"v2"}
    assert server.metrics.value("recsys_model_info", {"version": "v2"}) == 1
    assert server.metrics.value("recsys_model_info", {"version": v1}) == 0
    assert _loads(server, "ok") == 1 and _loads(server, "refused") == 0

    after = ask()
    assert (after.model_version, after.source) == ("v2", pb.ONLINE)  # v1's entry was not read
    client = redis_server.client()
    assert client.exists(cache_key(v1, user)) and client.exists(cache_key("v2", user))
    registry.promote(registry_root, v1)  # rollback = promote the previous version
    wait_for(lambda: watcher.served_version() == v1, what="the rollback")
    back = ask()
    assert (back.model_version, back.source) == (v1, pb.CACHE)  # its entries are still there


def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(swap_server, registry_root, trained_version,
                                                                   pipeline, known_users):
    server, watcher = swap_server
    bad = copy_version(trained_version, registry_root, "v-corrupt")
    flip_byte(bad / "retrieval" / "items.npz")
    with pytest.raises(ArtifactMismatchError):
        registry.promote(registry_root, "v-corrupt")  # the first line of defence
    with ClientLoop(f"127.0.0.1:{server.port}", known_users[:10], clients=2) as loop:
        point_current(registry_root, "v-corrupt")  # bypassing promote: the server must refuse it itself
        wait_for(lambda: _loads(server, "refused") == 1, what="the refusal")
        seen = len(loop.records)
        wait_for(lambda: len(loop.records) > seen + 20, what="traffic after the refusal")
    assert loop.failures() == [] and loop.versions() == {pipeline.model_version}
    assert watcher.served_version() == pipeline.model_version
    time.sleep(0.3)  # several polls: a refused version is not retried while it is unchanged
    assert _loads(server, "refused") == 1
    assert server.metrics.value("recsys_model_refused_info", {"version": "v-corrupt"}) == 1
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    registry.promote(registry_root, "v2")  # a good version swaps in: the refusal is no longer current
    # served first (set_model), then counted (load_into): the swap is over once both show
    wait_for(lambda: watcher.served_version() == "v2" and _loads(server, "ok") == 1, what="the swap to v2")
    assert server.metrics.value("recsys_model_refused_info", {"version": "v-corrupt"}) == 0
    assert _loads(server, "refused") == 1 and _loads(server, "ok") == 1  # the counters keep the history


@pytest.mark.parametrize("mode, reason", [("drop_last", "the FAISS index holds"),
                                          ("shuffled", "does not hold items.npz's embedding")])
def test_index_out_of_step_with_the_embeddings_is_refused(swap_server, registry_root, trained_version, pipeline,
                                                          mode, reason, caplog):
    server, watcher = swap_server
    name = f"v-index-{mode}"
    bad = copy_version(trained_version, registry_root, name)
    rebuild_index(bad, mode)
    registry.promote(registry_root, name)  # checksums are consistent: only the server's check can catch it
    wait_for(lambda: _loads(server, "refused") == 1, what="the refusal")
    assert watcher.served_version() == pipeline.model_version
    assert any(reason in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    stub = pb_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    response = stub.Recommend(pb.RecommendRequest(user_id="nobody", num_results=3), timeout=30)
    assert response.model_version == pipeline.model_version


def test_load_into_needs_only_a_set_model_callable_and_the_metrics(trained_version, tmp_path):
    """No server: hotswap swaps through the callable it is given (the server imports hotswap, not the reverse)."""
    from core import layout
    from serving.hotswap import load_into
    from serving.metrics import ServingMetrics

    served, metrics = [], ServingMetrics()
    bad = copy_version(trained_version, tmp_path, "v-flipped")
    flip_byte(layout.items_file(bad))
    with pytest.raises(ArtifactMismatchError):
        load_into(served.append, metrics, bad)
    assert served == [] and metrics.value("recsys_model_loads_total", {"result": "refused"}) == 1
    model = load_into(served.append, metrics, trained_version, warmup_users=1)
    assert served == [model] and model.model_version == trained_version.name
    assert metrics.value("recsys_model_loads_total", {"result": "ok"}) == 1


def test_a_failed_initial_load_leaves_the_server_not_serving(registry_root, trained_version, tmp_path):
    from core.errors import ArtifactError

    bad = copy_version(trained_version, tmp_path, "v-bad")
    flip_byte(bad / "ranking" / "ranker.json", offset=5)
    server = RecommendServer(ServerConfig(host="127.0.0.1", port=0, metrics_port=0))
    with started(server):
        with pytest.raises(ArtifactError, match="v-bad"):
            server.load(bad)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING



def test_recsys_serve_follows_promote_and_rechecks_on_sighup(registry_root, trained_version, pipeline, tmp_path):
    """The real CLI process: --watch-interval-s picks up `recsys promote`; SIGHUP forces a re-check.

    A refused version is logged once by the watcher (it is not retried while unchanged), so
    a second refusal after SIGHUP shows the signal forced a check.
    """
    registry.promote(registry_root, pipeline.model_version)
    if not (registry_root / "v-hup").exists():
        flip_byte(copy_version(trained_version, registry_root, "v-hup") / "index" / "item_ids.npy")
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(registry_root), "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", "0", "--workers", "2", "--watch-interval-s", "0.2",
             "--warmup-users", "1", "--log-format", "json"], stdout=log_file, stderr=subprocess.STDOUT, env=env)

    def events(name: str) -> int:
        return log_path.read_text().count(f'"event": "{name}"')

    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                    health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        wait_for(serving, timeout=120, interval=0.2, what="recsys serve to report SERVING")
        stub = pb_grpc.RecommenderStub(channel)

        def version() -> str:
            return stub.Recommend(pb.RecommendRequest(user_id="nobody", num_results=1), timeout=10).model_version

        assert version() == pipeline.model_version
        from recsys.cli import main as recsys_main

        assert recsys_main(["promote", "v2", "--artifacts", str(registry_root)]) == 0
        wait_for(lambda: version() == "v2", timeout=120, interval=0.2, what="the swap to v2")
        point_current(registry_root, "v-hup")
        wait_for(lambda: events("model_refused") == 1, timeout=60, interval=0.1, what="the watcher's refusal")
        time.sleep(0.6)  # three more polls: no retry of an unchanged refused version
        assert events("model_refused") == 1
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: events("model_refused") == 2, timeout=60, interval=0.1, what="the SIGHUP re-check")
        assert version() == "v2"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_ports(n: int) -> int:
    """The first of `n` consecutive free loopback ports."""
    import socket

    for _ in range(50):
        first = free_port()
        socks = []
        try:
            for p in range(first, first + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def scrape(port: int, name: str, labels: str = "") -> float | None:
    """The value of sample `name{...labels...}` on http://127.0.0.1:port/metrics (None if absent or unreachable)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + "{" if labels else name) and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def served_version(port: int) -> str:
    """The version recsys_model_info names on the metrics port."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return re.findall(r'recsys_model_info\{version="([^"]+)"\} 1\.0', text)[0]


def test_blue_green_swap_answers_every_request_and_refuses_a_corrupt_version(registry_root, trained_version,
                                                                             pipeline, known_users, tmp_path):
    """`--swap-mode blue_green`: the new version's process loads before it listens, takes over the port,
    the old one drains; no client call fails; a corrupt version's process is refused, v2 keeps serving.
    Metrics stay on the same ports across generations; the supervisor counts the refusal and clears its
    refused gauge when the rollback swaps in."""
    import json

    registry.promote(registry_root, pipeline.model_version)
    if not (registry_root / "v-bg-bad").exists():
        flip_byte(copy_version(trained_version, registry_root, "v-bg-bad") / "retrieval" / "items.npz")
    port, metrics = free_port(), free_ports(2)  # process 0's metrics, the supervisor's
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(registry_root), "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", str(metrics), "--workers", "2", "--watch-interval-s", "0.2",
             "--warmup-users", "1", "--grace-s", "2", "--swap-mode", "blue_green", "--log-format", "json"],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    def fleet(event: str) -> list[dict]:
        """The supervisor's log entries of one event."""
        entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        return [e for e in entries if e.get("logger") == "serving.processes" and e.get("event") == event]

    try:
        wait_for(lambda: proc.poll() is None and len(fleet("model_swapped")) == 1, timeout=180, interval=0.2,
                 what="generation 0 to serve")
        metrics_versions = [served_version(metrics)]  # the fixed metrics port, before and after the swap
        target = f"127.0.0.1:{port}"
        # Clients retry as documented (serving.security.client_channel): a draining server
        # cancels the calls that race with its shutdown.
        with ClientLoop(target, known_users[:10], clients=3, channel_factory=client_channel) as loop:
            wait_for(lambda: pipeline.model_version in loop.versions(), what="answers from the first version")
            registry.promote(registry_root, "v2")
            wait_for(lambda: "v2" in loop.versions(), timeout=180, interval=0.2, what="answers from v2")
            wait_for(lambda: len(fleet("generation_stopped")) == 1, timeout=60, interval=0.2,
                     what="the old generation to drain and exit")
            metrics_versions.append(served_version(metrics))
            point_current(registry_root, "v-bg-bad")  # bypassing promote's own check
            wait_for(lambda: len(fleet("model_refused")) == 1, timeout=180, interval=0.2, what="the refusal")
            refused_at = time.monotonic()
            seen = len(loop.records)
            wait_for(lambda: len(loop.records) > seen + 20, what="traffic after the refusal")
            time.sleep(0.6)  # three more polls: an unchanged refused version is not retried
            # The supervisor counts the refusal (it is never a serving process's own load).
            assert scrape(metrics + 1, "recsys_model_loads_total", 'result="refused"') == 1
            assert scrape(metrics + 1, "recsys_model_refused_info", 'version="v-bg-bad"') == 1
            assert scrape(metrics, "recsys_model_info", 'version="v2"') == 1  # still serving v2, same port
            rollback_at = [time.monotonic()]
            registry.promote(registry_root, pipeline.model_version)  # roll back: a successful swap
            wait_for(lambda: len(fleet("model_swapped")) == 3, timeout=180, interval=0.2, what="the rollback")
            wait_for(lambda: scrape(metrics, "recsys_model_info", f'version="{pipeline.model_version}"') == 1,
                     timeout=30, interval=0.2, what="the rolled-back generation's metrics on the same port")
            assert scrape(metrics + 1, "recsys_model_refused_info", 'version="v-bg-bad"') is None  # cleared
            assert scrape(metrics + 1, "recsys_model_loads_total", 'result="ok"') == 3
        assert len(fleet("model_refused")) == 1
        assert loop.failures() == []
        assert {r[3] for r in loop.records if refused_at < r[1] < rollback_at[0]} == {"v2"}
        assert [e["model_version"] for e in fleet("model_swapped")] == [pipeline.model_version, "v2",
                                                                        pipeline.model_version]
        assert metrics_versions == [pipeline.model_version, "v2"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_path.read_text()[-3000:]
    assert fleet("processes_stopped")[0]["exitcodes"] == [0]
