"""A real Prometheus (Debian's `prometheus`) scrapes a real RecommendServer and evaluates the shipped alert
rules: a shifted request population makes RecsysInputDrift pending; unshifted traffic raises no alert.

Prometheus runs on a free loopback port with a generated config (1 s scrape and evaluation intervals) that
loads deploy/prometheus/alerts.yml as shipped. The figures are printed (pytest -s) for bench/RESULTS.md.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from protos.recsys.v1 import recommender_pb2 as pb
from tests.conftest import free_port
from tests.serving.versions_util import wait_for

pytestmark = pytest.mark.integration

RULES = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
WINDOW = 200
QUIET = {"RecsysInputDrift", "RecsysPredictionDrift", "RecsysFallbackSpike", "RecsysErrorRate",
         "RecsysModelVersionRefused", "RecsysTargetDown"}


class Prometheus:
    def __init__(self, workdir: pathlib.Path, metrics_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run scripts/setup.sh (Debian's `prometheus` package)")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "recsys", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }))
        self.log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=60, interval=0.2, what="prometheus /-/ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {self.proc.returncode}; see {self.log.name}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query: str) -> float | None:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> dict[str, str]:
        return {a["labels"]["alertname"] + ":" + a["labels"].get("quantity", ""): a["state"]
                for a in self.api("alerts")["alerts"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def test_shifted_traffic_makes_the_drift_alert_pending_and_unshifted_traffic_does_not(start, populations, tmp_path):
    unshifted, shifted = populations
    server, stub = start(metrics_port=free_port(), monitor_window=WINDOW, monitor_min_samples=100,
                          monitor_interval_s=0.5)
    prometheus = Prometheus(tmp_path, server.config.metrics_port)
    try:
        wait_for(lambda: prometheus.value('up{job="recsys"}') == 1, timeout=30, interval=0.2, what="a first scrape")
        started = time.monotonic()
        for u in unshifted[:WINDOW]:
            stub.Recommend(pb.RecommendRequest(user_id=u, num_results=10), timeout=30)
        # Prometheus has scraped the full window and evaluated the rules on it several times over.
        wait_for(lambda: prometheus.value("recsys_window_requests") == WINDOW, timeout=30, interval=0.2,
                 what="the unshifted window in Prometheus")
        time.sleep(4)
        stable = {q: prometheus.value(f'max(recsys_drift_psi{{group="{q}"}})') for q in ("input", "prediction")}
        quiet = {k: v for k, v in prometheus.alerts().items() if k.split(":")[0] in QUIET}
        assert quiet == {}, quiet
        assert stable["input"] < 0.25 and stable["prediction"] < 0.25

        sent = time.monotonic()
        for u in shifted[:WINDOW]:
            stub.Recommend(pb.RecommendRequest(user_id=u, num_results=10), timeout=30)
        done = time.monotonic()
        state = wait_for(lambda: prometheus.alerts().get("RecsysInputDrift:segment") in ("pending", "firing")
                         and prometheus.alerts()["RecsysInputDrift:segment"], timeout=30, interval=0.2,
                         what="RecsysInputDrift pending in Prometheus")
        alerted = time.monotonic()
        drifted = prometheus.value('recsys_drift_psi{group="input",quantity="segment"}')
        assert drifted > 0.25
        print(f"\n[prometheus drift test] window {WINDOW}, min samples 100, scrape/eval 1 s: unshifted max PSI "
              f"input {stable['input']:.4f} prediction {stable['prediction']:.4f}, no alert; shifted segment PSI "
              f"{drifted:.3f} → RecsysInputDrift {state} {alerted - done:.1f} s after the last shifted request "
              f"({done - sent:.1f} s to send {WINDOW}); all alerts {prometheus.alerts()}; test body "
              f"{alerted - started:.1f} s")
    finally:
        prometheus.stop()
