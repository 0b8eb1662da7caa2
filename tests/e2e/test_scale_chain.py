"""bench/scale.py's whole chain at a tiny size, for real: synthetic Parquet → `recsys train --source files`
(IVF-SQ8) → recall of the index vs exact → `recsys batch-score` (Beam DirectRunner) → `recsys serve` under a
gRPC load — each stage its own process, as at 10M. The table it writes must hold every stage's figures.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pandas as pd
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_scale_driver_runs_every_stage_and_reports_each(tmp_path):
    out = tmp_path / "scale"
    flags = ("--epochs 1 --no-retrieval-progress --no-ranking-progress --retrieval-embedding-dim 8 "
             "--retrieval-id-dim 8 --retrieval-feature-dim 4 --retrieval-batch-size 512 --ranking-batch-size 512 "
             "--ranking-id-dim 4 --ranking-feature-dim 2 --ranking-hidden 8 --ranking-head-hidden 4 "
             "--no-retrieval-refit --pipeline-num-candidates 50 --retrieval-eval-max-users 100 "
             "--ranking-selection-max-users 100 --retrieval-history-length 5 --ranking-history-length 5")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "run", "--sizes", "20000",
                           "--out", str(out), "--train-flags", flags, "--recall-queries", "200",
                           "--serve-requests", "20", "--serve-concurrency", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = json.loads((out / "n20000" / "stages.json").read_text())
    assert list(stages) == ["data", "train", "recall", "batch", "serve"]
    for name, rec in stages.items():
        assert rec["exit"] == 0, (name, (out / "n20000" / f"{name}.log").read_text()[-3000:])
        assert rec["peak_rss_mib"] > 0 and rec["cpu_s"] > 0
    data = stages["data"]["result"]
    assert data["rows"] == len(pd.read_parquet(out / "n20000" / "data" / "interactions.parquet")) == 20000
    recall = stages["recall"]["result"]
    assert recall["factory"].startswith("IVF") and recall["factory"].endswith("SQ8")
    # 100 items at this size: k = 100 is the whole catalogue and nprobe = nlist / 8 scans an eighth of it
    assert recall["k"] == 100 and recall["items"] == 100 and 0.0 < recall["recall_at_k"] <= 1.0
    serve = stages["serve"]["result"]
    assert serve["ok"] == 20 and serve["failed"] == 0
    scores = pd.concat([pd.read_parquet(f) for f in sorted((out / "n20000" / "scores").rglob("*.parquet"))])
    batch_users = (out / "n20000" / "batch_users.txt").read_text().split()
    assert set(scores["user_id"].astype(str)) == set(batch_users)
    table = (out / "scale.md").read_text()
    for name in stages:
        assert f"| {name} |" in table
