"""Issue 18, parts 3 and 4: `recsys serve --processes N` fleets and independent replicas, as real processes.

- A fleet process killed (kill -9) under load is restarted with backoff while the others serve; the
  clients (the documented retry policy) see no failed call.
- Health says SERVING only when every process is ready (a process made slow to load holds it back).
- The port belongs to one fleet: a second `recsys serve`, or anything already listening, is refused.
- Startup errors (port in use, TLS certificate and key swapped, missing or broken version) are one line
  and exit 2, for one process and for a fleet.
- Replicas: two `recsys serve` behind the client's round-robin; one killed under load, no failed call.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from recsys.cli import main as recsys_main
from serving.ports import PortInUseError, claim_port
from serving.security import CLIENT_OPTIONS, channel_target, client_channel
from tests.conftest import free_port
from tests.serving.test_hotswap import free_ports, scrape
from tests.serving.versions_util import ClientLoop, copy_version, flip_byte, wait_for

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING


def own_connection(target: str) -> grpc.Channel:
    """The documented client channel, with a connection of its own (not shared with other channels to the
    same target), so several clients spread over a fleet's processes as separate machines would."""
    return client_channel(target, options=(*CLIENT_OPTIONS, ("grpc.use_local_subchannel_pool", 1)))


def serve_cmd(version_dir: pathlib.Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", "serve", "--artifacts", str(version_dir.parent), "--version",
            version_dir.name, "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--grace-s", "1",
            "--warmup-users", "1", "--watch-interval-s", "0", "--log-format", "json", *extra]


def spawn(cmd: list[str], log_path: pathlib.Path, env: dict | None = None) -> subprocess.Popen:
    with open(log_path, "w") as log_file:
        return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def log_events(log_path: pathlib.Path, event: str) -> list[dict]:
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    return [e for e in entries if e.get("event") == event]


def health(port: int) -> int | None:
    """The health status on a fresh connection; None when nothing answers."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return None


def stop(process: subprocess.Popen, log_path: pathlib.Path, timeout: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"recsys serve did not stop on SIGTERM: {log_path.read_text()[-2000:]}") from None
    return process.returncode


def fresh_calls(port: int, users: list[str], n: int) -> list[str]:
    """`n` Recommend calls, each on a new connection (so the kernel picks a process for each): the codes."""
    codes = []
    for i in range(n):
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            try:
                pb_grpc.RecommenderStub(ch).Recommend(pb.RecommendRequest(user_id=users[i % len(users)],
                                                                          num_results=5), timeout=30)
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)
    return codes


# -- part 4: a fleet survives losing a process -------------------------------------------------
def test_a_killed_fleet_process_is_restarted_with_backoff_and_no_call_fails(trained_version, known_users,
                                                                            redis_url, tmp_path):
    """--processes 2 under load from 4 clients: kill -9 one process, then its replacement while it loads.
    The supervisor restarts the slot each time (after 0.5 s, then 1 s: backoff doubling), counts the
    restarts, the other process keeps serving, and no client call fails (the documented retry policy).
    Meanwhile the port is refused to a second server."""
    port, metrics = free_port(), free_ports(3)  # processes 0 and 1, the supervisor at metrics + 2
    log_path = tmp_path / "fleet.log"
    process = spawn(serve_cmd(trained_version, port, "--processes", "2", "--metrics-port", str(metrics),
                              "--redis-url", redis_url), log_path)
    try:
        wait_for(lambda: process.poll() is None and log_events(log_path, "fleet_ready"), timeout=180, interval=0.2,
                 what="the fleet to be ready")
        assert health(port) == SERVING
        assert scrape(metrics + 2, "recsys_fleet_processes_ready") == 2
        pids = log_events(log_path, "processes_started")[0]["pids"]
        with ClientLoop(f"127.0.0.1:{port}", known_users[:20], clients=4, channel_factory=own_connection) as loop:
            wait_for(lambda: len(loop.records) > 40, what="traffic")
            os.kill(pids[0], signal.SIGKILL)
            wait_for(lambda: len(log_events(log_path, "process_restarted")) == 1, timeout=30, interval=0.05,
                     what="the first restart")
            # A crash loop: the replacement dies while it loads; the next restart waits twice as long.
            os.kill(log_events(log_path, "process_restarted")[0]["pid"], signal.SIGKILL)
            wait_for(lambda: len(log_events(log_path, "process_restarted")) == 2, timeout=30, interval=0.05,
                     what="the second restart")
            before = len(loop.records)  # while the replacement loads, the survivor serves everything
            wait_for(lambda: len(loop.records) > before + 20, what="traffic while one process restarts")
            wait_for(lambda: scrape(metrics + 2, "recsys_fleet_processes_ready") == 2, timeout=180,
                     interval=0.2, what="the restarted process to be ready")
            # A second server on the fleet's port is refused (the fleet holds the port's lock).
            second = subprocess.run(serve_cmd(trained_version, port), capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            assert second.returncode == 2 and "Traceback" not in second.stderr
            assert "another `recsys serve` already serves this port" in second.stderr.strip().splitlines()[-1]
            # The running clients keep their connections (to the survivor); new connections reach both.
            assert fresh_calls(port, known_users, 30) == ["OK"] * 30
            before = len(loop.records)
            wait_for(lambda: len(loop.records) > before + 40, what="traffic after the restarts")
        served = [scrape(metrics + i, "recsys_requests_total", 'code="OK",method="Recommend"') or 0 for i in (0, 1)]
        assert min(served) > 0, served  # the restarted process serves (on its slot's metrics port)
        assert loop.failures() == [], loop.failures()[:5]
        exits = log_events(log_path, "process_exited")
        assert [e["exitcode"] for e in exits] == [-9, -9]
        assert [e["restart_in_s"] for e in exits] == [0.5, 1.0]  # backoff doubles for deaths in a row
        assert scrape(metrics + 2, "recsys_fleet_restarts_total") == 2
        assert scrape(metrics + 2, "recsys_fleet_process_exits_total") == 2
        assert pids[1] == log_events(log_path, "processes_started")[0]["pids"][1]
        os.kill(pids[1], 0)  # the survivor was never restarted
    finally:
        code = stop(process, log_path)
    assert code == 0, log_path.read_text()[-3000:]
    assert log_events(log_path, "processes_stopped")[0]["exitcodes"] == [0, 0]


SLOW_LOAD = textwrap.dedent('''
    """Test-only: delays the model load of one fleet process (RECSYS_TEST_SLOW_PROCESS=name:seconds)."""
    import importlib.abc, importlib.util, os, sys

    name, _, seconds = os.environ.get("RECSYS_TEST_SLOW_PROCESS", "").partition(":")

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != "serving.hotswap":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                original = module.load_checked

                def slow(*args, **kwargs):
                    import multiprocessing, time
                    if multiprocessing.current_process().name == name:
                        time.sleep(float(seconds))
                    return original(*args, **kwargs)
                module.load_checked = slow
            spec.loader.exec_module = exec_module
            return spec

    if name:
        sys.meta_path.insert(0, _Hook())
''')


def test_health_says_serving_only_when_every_process_is_ready(trained_version, known_users, tmp_path):
    """Process 1 loads 12 s later than process 0 (an injected delay). Process 0 listens once loaded but
    reports NOT_SERVING until process 1 is ready too; from the first SERVING on, every fresh connection
    is answered."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_LOAD)
    port = free_port()
    log_path = tmp_path / "fleet.log"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RECSYS_TEST_SLOW_PROCESS": "recsys-serve-1:12"}
    process = spawn(serve_cmd(trained_version, port, "--processes", "2", "--metrics-port", "0"), log_path, env)
    statuses = []
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the fleet never reported SERVING"
            status = health(port)
            statuses.append(status)
            if status == SERVING:
                break
            time.sleep(0.05)
        codes = fresh_calls(port, known_users, 40)
    finally:
        code = stop(process, log_path)
    assert code == 0
    # Process 0 was up (answering health) while process 1 still loaded: NOT_SERVING, not SERVING.
    assert statuses.count(health_pb2.HealthCheckResponse.NOT_SERVING) >= 5, statuses
    assert codes == ["OK"] * 40
    assert len(log_events(log_path, "listening")) == 2


# -- part 4: the port belongs to one fleet ---------------------------------------------------------
def test_claim_port_refuses_a_second_claim_and_a_foreign_listener(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_LOCK_DIR", str(tmp_path))
    port = free_port()
    with claim_port("127.0.0.1", port):
        with pytest.raises(PortInUseError, match="another `recsys serve` already serves this port"):
            claim_port("127.0.0.1", port)
        with pytest.raises(PortInUseError, match="another `recsys serve`"):
            claim_port("0.0.0.0", port)  # per port, not per address: the two overlap
    claim_port("127.0.0.1", port).release()  # released: free again
    # A listener that is not ours, even one with SO_REUSEPORT (as any gRPC server sets): the probe
    # bind (without SO_REUSEPORT) fails, so the fleet never joins its group.
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        with pytest.raises(PortInUseError, match="already in use"):
            claim_port("127.0.0.1", port)
        with pytest.raises(PortInUseError, match="already in use"):
            claim_port("0.0.0.0", port)
    claim_port("127.0.0.1", port).release()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process under another user id")
def test_the_kernel_refuses_another_users_reuseport_bind_on_the_fleets_port(tmp_path):
    """The documented defence against a same-port hijack *after* the fleet bound: SO_REUSEPORT groups need
    one effective UID, so another user cannot join even with SO_REUSEPORT set."""
    port = free_port()
    with socket.socket() as ours:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ours.bind(("127.0.0.1", port))
        ours.listen()
        probe = (f"import os, socket; os.setgid(65534); os.setuid(65534); s = socket.socket(); "
                 f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
                 f"try:\n    s.bind(('127.0.0.1', {port})); print('joined')\nexcept OSError as e: print(e.errno)")
        other_user = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
        same_user = subprocess.run([sys.executable, "-c", probe.replace("os.setgid(65534); os.setuid(65534); ", "")],
                                   capture_output=True, text=True, timeout=30)
    import errno

    assert other_user.stdout.strip() == str(errno.EADDRINUSE), other_user.stderr
    assert same_user.stdout.strip() == "joined"  # why `recsys serve` also takes the port's lock and probes


# -- part 4: startup errors are one line, exit 2 -------------------------------------------------
@pytest.fixture(scope="module")
def swapped_pem(tmp_path_factory) -> tuple[str, str]:
    """(certificate, key) PEM files of a self-signed pair."""
    from tests.serving.test_security import _cert, _key, _write

    d = tmp_path_factory.mktemp("pem")
    key = _key()
    return _write(d / "cert.pem", cert=_cert("localhost", key)), _write(d / "key.pem", key=key)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_startup_errors_are_one_line_and_exit_2(trained_version, swapped_pem, tmp_path, capsys, monkeypatch,
                                                processes):
    monkeypatch.setenv("RECSYS_LOCK_DIR", str(tmp_path))
    cert, key = swapped_pem
    port = free_port()

    def serve(*extra: str, version: str = trained_version.name) -> tuple[int, str]:
        capsys.readouterr()
        code = recsys_main(["serve", "--artifacts", str(trained_version.parent), "--version", version, "--host",
                            "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--processes", processes,
                            *extra])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, err.strip().splitlines()[-1]

    with socket.socket() as taken:  # plain listener, no SO_REUSEPORT
        taken.bind(("127.0.0.1", port))
        taken.listen()
        code, line = serve()
        assert code == 2 and line == (f"recsys serve: error: --port {port}: the port is already in use on "
                                      "127.0.0.1 (another server listens there); choose another --port or stop "
                                      "that server")
    code, line = serve("--tls-cert", key, "--tls-key", cert)
    assert code == 2 and line == (f"recsys serve: error: --tls-cert {key} holds a private key and --tls-key {cert} "
                                  "a certificate: the two are swapped")
    code, line = serve("--tls-cert", cert, "--tls-key", cert)
    assert code == 2 and line.startswith(f"recsys serve: error: --tls-key {cert}: no private key in it")
    code, line = serve(version="no-such-version")
    assert code == 2 and line.startswith("recsys serve: error: version 'no-such-version' not found under")
    code, line = serve(version=str(tmp_path))  # a directory that is no version
    assert code == 2 and line.startswith("recsys serve: error:")


def test_a_fleet_whose_processes_cannot_load_the_version_exits_2_with_one_line(trained_version, tmp_path):
    """The version resolves but fails verification inside the server processes: the fleet stops, the
    supervisor prints the process's reason on one line and exits 2."""
    root = tmp_path / "root"
    root.mkdir()
    bad = copy_version(trained_version, root, "v-bad")
    flip_byte(bad / "retrieval" / "items.npz")
    cmd = serve_cmd(bad, free_port(), "--processes", "2", "--metrics-port", "0", "--log-format", "text")
    cmd.insert(cmd.index("serve"), "--log-level=ERROR")
    done = subprocess.run(cmd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys serve: error: server process ") and "version v-bad failed verification" in last, last


# -- part 3: replicas behind client-side round robin -------------------------------------------------------
def test_channel_target_turns_several_replicas_into_one_round_robin_target():
    assert channel_target("localhost:50051") == "localhost:50051"
    assert channel_target("dns:///recsys.internal:50051") == "dns:///recsys.internal:50051"
    assert channel_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(" 127.0.0.1:1 , localhost:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
    assert channel_target("ipv4:10.0.0.1:1,10.0.0.2:1") == "ipv4:10.0.0.1:1,10.0.0.2:1"
    from core.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="'127.0.0.1' is not host:port"):
        channel_target("127.0.0.1:1,127.0.0.1")


def test_replicas_behind_round_robin_lose_one_under_load_without_a_failed_call(trained_version, known_users,
                                                                               redis_url, tmp_path, capsys):
    """Two independent `recsys serve` (one Redis): the client config round-robins over both; one is killed
    (kill -9) under load from 3 clients: no call fails, the other takes every call; `recsys recommend`
    takes the same comma-separated target (and a DNS name)."""
    ports, metrics = [free_port(), free_port()], free_ports(2)
    logs = [tmp_path / f"replica{i}.log" for i in (0, 1)]
    replicas = [spawn(serve_cmd(trained_version, ports[i], "--metrics-port", str(metrics + i), "--redis-url",
                                redis_url), logs[i]) for i in (0, 1)]
    target = f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    try:
        for i in (0, 1):
            wait_for(lambda i=i: replicas[i].poll() is None and health(ports[i]) == SERVING, timeout=180,
                     interval=0.2, what=f"replica {i}")
        code = recsys_main(["recommend", "--target", target, "--user", known_users[0], "-k", "3", "--timeout", "30"])
        assert code == 0 and capsys.readouterr().out.count("\n") == 2 + 3
        assert recsys_main(["recommend", "--target", f"localhost:{ports[0]}", "--user", known_users[0]]) == 0
        with ClientLoop(target, known_users[:20], clients=3, channel_factory=own_connection) as loop:
            wait_for(lambda: len(loop.records) > 60, what="traffic")
            ok = [scrape(metrics + i, "recsys_requests_total", 'code="OK",method="Recommend"') or 0 for i in (0, 1)]
            assert min(ok) > 0, ok  # round robin: each client's calls go to both replicas
            replicas[1].kill()
            killed_at = len(loop.records)
            wait_for(lambda: len(loop.records) > killed_at + 100, timeout=60, what="traffic after the kill")
        assert loop.failures() == [], loop.failures()[:5]
        capsys.readouterr()
        assert recsys_main(["recommend", "--target", target, "--user", known_users[1], "--timeout", "30"]) == 0
    finally:
        for replica, log_path in zip(replicas, logs):
            stop(replica, log_path)


def test_a_blue_green_fleet_restarts_a_killed_process_of_the_serving_generation(trained_version, known_users,
                                                                                tmp_path):
    """blue_green: the replacement loads the serving generation's version, and the fixed metrics port of
    its slot relays the new process."""
    port, metrics = free_port(), free_ports(3)
    log_path = tmp_path / "fleet.log"
    process = spawn(serve_cmd(trained_version, port, "--processes", "2", "--metrics-port", str(metrics),
                              "--swap-mode", "blue_green"), log_path)
    try:
        wait_for(lambda: process.poll() is None and log_events(log_path, "fleet_ready"), timeout=180, interval=0.2,
                 what="the fleet to be ready")
        assert scrape(metrics, "recsys_model_info", 'version="tiny"') == 1
        os.kill(log_events(log_path, "processes_started")[0]["pids"][0], signal.SIGKILL)
        wait_for(lambda: log_events(log_path, "process_restarted"), timeout=30, what="the restart")
        wait_for(lambda: scrape(metrics + 2, "recsys_fleet_processes_ready") == 2, timeout=180, interval=0.2,
                 what="the restarted process to be ready")
        assert fresh_calls(port, known_users, 20) == ["OK"] * 20
        assert scrape(metrics, "recsys_model_info", 'version="tiny"') == 1  # slot 0's port: the new process
        assert scrape(metrics + 2, "recsys_fleet_restarts_total") == 1
        assert scrape(metrics + 2, "recsys_fleet_generation") == 0
    finally:
        code = stop(process, log_path)
    assert code == 0, log_path.read_text()[-3000:]
