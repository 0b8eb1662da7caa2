"""The bias-only rating baseline sits beside the ranker's quality head, on the same rows (tiny version)."""
import pytest

from evaluation import BiasRecommender, bias_baseline_metrics
from evaluation.pipeline import PipelineEvalConfig, PipelineRecommender


def test_head_diagnostics_report_the_bias_baseline_on_the_quality_heads_rows(pipeline, tiny_eval_data):
    rec = PipelineRecommender(PipelineEvalConfig(), pipeline)
    rec.fit(tiny_eval_data)
    d = rec.diagnostics
    assert {"quality_rmse", "quality_mae", "bias_baseline_rmse", "bias_baseline_mae"} <= set(d)
    # the same rated rows: every rated test engagement, counted once by each
    assert d["bias_baseline_rated"] == d["quality_rated"] > 0
    assert 0 < d["bias_baseline_mae"] <= d["bias_baseline_rmse"] < 4
    # and the same numbers as the `bias` model's diagnostics (one code path)
    bias = BiasRecommender()
    bias.fit(tiny_eval_data)
    assert bias.diagnostics["bias_baseline_rmse"] == pytest.approx(d["bias_baseline_rmse"], rel=1e-12)
    assert bias_baseline_metrics(tiny_eval_data.split, tiny_eval_data.split.test)["bias_baseline_rmse"] == \
        pytest.approx(d["bias_baseline_rmse"], rel=1e-12)
