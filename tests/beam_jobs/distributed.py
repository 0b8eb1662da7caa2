"""Real distributed back ends for the Beam tests, started and stopped by the tests on free loopback ports:
a Dask scheduler with worker processes, and Beam's portable job service with a worker pool.

Nothing here skips: a missing `dask`/`distributed` fails the test (scripts/setup.sh installs them).
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from tests.conftest import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
STARTUP_S = 60.0


def worker_env() -> dict[str, str]:
    """The environment of every process started here: this checkout importable, TensorFlow small and quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    # Beam's worker pool starts SDK workers as `python -c ...`: this interpreter's python first on PATH.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


class Processes:
    """Child processes (each in its own process group) stopped together, logs kept for a failure message."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=worker_env(), cwd=self.workdir,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n" + (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                         for name, _ in self.procs)

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class DaskCluster(Processes):
    """`dask scheduler` + `workers` × `dask worker --nthreads 1` processes (no nanny: one process each)."""

    def __init__(self, workdir: pathlib.Path, workers: int = 2) -> None:
        super().__init__(workdir)
        self.workers = workers
        self.address = ""

    def start_cluster(self) -> DaskCluster:
        import distributed  # noqa: F401 - fail here, loudly, when dask is missing

        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.start("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", str(port), "--no-dashboard", "--no-show"])
        for i in range(self.workers):
            self.start(f"worker{i}", [sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                                      "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                      "--memory-limit", "0", "--name", f"w{i}"])
        self.wait_for_workers()
        return self

    def wait_for_workers(self) -> None:
        from distributed import Client

        deadline = time.monotonic() + STARTUP_S
        while True:
            self.check_alive()
            try:
                with Client(self.address, timeout=5) as client:
                    client.wait_for_workers(self.workers, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Dask cluster did not come up: {e}\n{self.logs()}") from e
                time.sleep(0.5)

    def worker_pids(self) -> set[int]:
        return {p.pid for name, p in self.procs if name.startswith("worker")}


class PortableJobService(Processes):
    """Beam's local job service (`local_job_service_main`) and a worker pool (`worker_pool_main`): the job
    runs on PortableRunner with --environment_type EXTERNAL, its SDK workers in processes the pool forks."""

    def start_service(self) -> PortableJobService:
        self.job_port, self.pool_port = free_port(), free_port()
        self.start("job_service", [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                   "--port", str(self.job_port)])
        self.start("worker_pool", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                   f"--service_port={self.pool_port}"])
        self.wait_for_ports()
        return self

    def wait_for_ports(self) -> None:
        import socket

        deadline = time.monotonic() + STARTUP_S
        for port in (self.job_port, self.pool_port):
            while True:
                self.check_alive()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"port {port} never opened\n{self.logs()}") from None
                    time.sleep(0.3)

    def flags(self) -> list[str]:
        return ["--runner", "PortableRunner", f"--job_endpoint=localhost:{self.job_port}",
                "--environment_type=EXTERNAL", f"--environment_config=localhost:{self.pool_port}"]
