"""The evaluation report's engagement calibration on served test candidates (tiny version)."""
import json

import numpy as np
import pandas as pd
import pytest

from evaluation.calibration import expected_calibration_error
from evaluation.pipeline import served_calibration
from evaluation.report import write_report


def test_served_calibration_is_measured_on_the_served_candidates(pipeline, tiny_eval_data):
    test = tiny_eval_data.split.test
    d = served_calibration(pipeline, test)
    users = sorted(test.loc[test["engaged"] == 1, "user_id"].astype(str).unique())
    cands = pipeline.candidates(users)
    e = np.concatenate([c.engagement for c in cands]).astype(np.float64)
    pos = set(zip(test.loc[test["engaged"] == 1, "user_id"].astype(str), test.loc[test["engaged"] == 1, "item_id"].astype(str)))
    y = np.concatenate([[(u, str(i)) in pos for i in c.item_ids] for u, c in zip(users, cands)])
    assert d["candidate_pairs"] == len(e) and d["candidate_positives"] == int(y.sum()) > 0
    assert d["engagement_ece"] == pytest.approx(expected_calibration_error(e, y), rel=1e-12)
    assert sum(b["count"] for b in d["reliability_bins"]) == len(e) and len(d["reliability_bins"]) == 15
    assert d["mean_engagement"] == pytest.approx(e.mean()) and d["engaged_rate"] == pytest.approx(y.mean())
    assert d["engagement_calibrated"] is True  # the tiny version's training run fit a Platt map on validation
    assert 0 <= d["candidate_retrieval_auc"] <= 1 and 0 <= d["candidate_engagement_auc"] <= 1


def test_report_shows_the_reliability_table_and_png(pipeline, tiny_eval_data, tmp_path):
    d = served_calibration(pipeline, tiny_eval_data.split.test)
    results = pd.DataFrame({"ndcg@10": [0.1]}, index=pd.Index(["pipeline"], name="model"))
    paths = write_report(tmp_path, results, {}, {"head_diagnostics": {"pipeline": d}})
    md = paths.markdown.read_text()
    assert "## Engagement calibration: pipeline" in md and f"{d['engagement_ece']:.4f}" in md
    assert (tmp_path / "reliability_pipeline.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(paths.json.read_text())["config"]["head_diagnostics"]["pipeline"]
    assert len(saved["reliability_bins"]) == 15
