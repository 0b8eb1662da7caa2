"""deploy/: the alert rules pass their `promtool test rules` unit tests, the scrape config is valid, and
the Grafana dashboard charts every metric an alert watches. A missing promtool is a failure (scripts/setup.sh
installs Debian's `prometheus` package), never a skip."""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run scripts/setup.sh (it installs Debian's `prometheus` package)")
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_their_promtool_unit_tests():
    out = run("test", "rules", "alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    firing = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if a["exp_alerts"]}
    assert alerts == firing
    assert {"RecsysInputDrift", "RecsysPredictionDrift", "RecsysFallbackSpike", "RecsysHighP99Latency",
            "RecsysErrorRate", "RecsysModelVersionRefused"} <= alerts


def test_a_broken_rule_fails_promtool(tmp_path):
    """The check can fail: a rule test that expects the wrong alert is reported."""
    (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text().replace("> 0.25", "> 0.9", 1))
    (tmp_path / "alerts_test.yml").write_text((PROMETHEUS / "alerts_test.yml").read_text())
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "RecsysInputDrift" in out.stdout + out.stderr


def test_the_scrape_config_is_valid():
    out = run("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_charts_every_alerted_metric():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerted = {m for g in rules["groups"] for r in g["rules"] for m in re.findall(r"\b(recsys_\w+|up)\b", r["expr"])}
    dashboard = json.loads((DEPLOY / "grafana" / "recsys-dashboard.json").read_text())
    charted = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert {m for m in alerted if not re.search(rf"\b{m}\b", charted)} == set()
    for metric in ("recsys_drift_ks", "recsys_window_unknown_user_ratio", "recsys_window_short_result_ratio",
                   "recsys_window_empty_result_ratio", "recsys_window_cache_hit_ratio", "recsys_cache_hit_ratio"):
        assert metric in charted
