"""`recsys experiment set|show|stop|report` as a user runs them: subprocesses, files, exit codes and messages."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core import registry


def recsys(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "artifacts"
    (r / "v2").mkdir(parents=True)
    registry.finalize_version(r / "v2", {})
    return r


def test_set_show_stop(root):
    out = recsys("experiment", "set", "--artifacts", str(root), "--name", "qab", "--arms", "A=current:0.5",
                 "B=v2:0.5:0.2,1.0,multiplicative", "--shadow", "v2:0.1:5")
    assert out.returncode == 0, out.stderr
    saved = json.loads((root / "experiment.json").read_text())
    assert saved["arms"][1] == {"name": "B", "share": 0.5, "version": "v2", "weights": {
        "engagement": 0.2, "quality": 1.0, "mode": "multiplicative", "transform": "identity"}}
    assert saved["shadow"] == {"version": "v2", "sample": 0.1, "k": 5}
    shown = recsys("experiment", "show", "--artifacts", str(root))
    assert shown.returncode == 0 and "arm B" in shown.stdout and "buckets [0, 5000)" in shown.stdout
    assert recsys("experiment", "stop", "--artifacts", str(root)).returncode == 0
    assert not (root / "experiment.json").exists()
    assert "no experiment running" in recsys("experiment", "show", "--artifacts", str(root)).stdout


@pytest.mark.parametrize("argv, message", [
    (["--name", "x", "--arms", "A=current:0.5", "B=v2:0.6"], "shares must sum to 1"),
    (["--name", "x", "--arms", "A=current:1", "B=v9:0"], "version 'v9' is not a finished version"),
    (["--name", "x", "--arms", "A=current"], "expected VERSION:SHARE"),
    (["--name", "x", "--arms", "A=current:half"], "'half' is not a number"),
    (["--arms", "A=current:1"], "--name"),
    (["--name", "x", "--arms", "A=current:0.9", "C=v2:0.1", "--canary-arm", "C"], "--canary-schedule"),
    (["--from-json", "/no/such.json"], "--from-json /no/such.json: unreadable"),
])
def test_mistakes_get_one_clear_line_and_exit_2(root, argv, message):
    (root / "experiment.json").write_text("{}")  # must survive a refused set
    out = recsys("experiment", "set", "--artifacts", str(root), *argv)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and "Traceback" not in out.stderr
    assert (root / "experiment.json").read_text() == "{}"


def test_report_on_exported_events(root, tmp_path):
    from evaluation.simulator import aa_experiment, simulate_events
    from features.synthetic import SyntheticConfig, synthetic_truth

    truth = synthetic_truth(SyntheticConfig(num_users=300, num_items=80, num_interactions=1000, seed=1))
    frame = simulate_events(truth, aa_experiment("cli"), 500, k=5, seed=0)
    events = tmp_path / "events" / "date=2026-01-01"
    events.mkdir(parents=True)
    frame.to_parquet(events / "part-0.parquet")
    assert recsys("experiment", "set", "--artifacts", str(root), "--name", "aa", "--salt", "cli", "--arms",
                  "A=current:0.5", "B=current:0.5").returncode == 0
    out = recsys("experiment", "report", "--artifacts", str(root), "--events", str(tmp_path / "events"), "--k", "5",
                 "--output", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    assert "B vs A: CTR@5" in out.stdout and "sample ratio" in out.stdout
    result = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(result["arms"]) == {"A", "B"}
    assert "| A |" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
    missing = recsys("experiment", "report", "--artifacts", str(root), "--events", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no exported Parquet files" in missing.stderr
