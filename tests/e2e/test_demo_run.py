"""The README's demo, run for real: every step of `recsys demo --quick` through the CLI entry point, in-process,
on a small synthetic dataset (300 users, 150 items, 6,000 interactions; the demo's default model sizes, 2 epochs).

Real outcomes, not exit codes alone: the trained version is promoted, the Beam job's Parquet agrees with the
online pipeline, the evaluation report holds NDCG in [0, 1] with the pipeline ahead of random (and the batch
output equal to the pipeline), and serve-demo answered from a real redis-server: ONLINE first, then CACHE.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from core import registry
from recsys.cli import main as recsys_main
from recsys.commands.demo import demo_steps
from tests.conftest import TINY_SYNTHETIC

# serve-demo starts redis-server and a gRPC server; batch-score runs a Beam pipeline; train takes ~30 s.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["--source", "synthetic", *TINY_SYNTHETIC]
K = 10
SOURCE = re.compile(r"\b(ONLINE|CACHE|PRECOMPUTED|FALLBACK|EVENTS|INDEX)\s+\S+\s*$")


def _sources(serve_output: str) -> list[tuple[str, set[str]]]:
    """(request line, sources of its answer rows) for each `$ recsys recommend` block serve-demo printed."""
    blocks = []
    for block in serve_output.split("\n$ recsys recommend")[1:]:
        lines = block.splitlines()
        sources = {m.group(1) for line in lines[1:] if (m := SOURCE.search(line))}
        blocks.append((lines[0].strip(), sources))
    return blocks


def test_the_demo_runs_end_to_end_on_a_small_synthetic_dataset(tmp_path: pathlib.Path, capsys) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it): serve-demo would fall back to "
                    "the in-process cache and this test would not exercise Redis")
    work = tmp_path / "demo-run"
    steps = demo_steps(work, quick=True, data_args=SMALL)
    out: dict[str, str] = {}
    for title, argv in steps:
        code = recsys_main(["--log-level", "WARNING", *argv])
        printed = capsys.readouterr()
        assert code == 0, f"step `recsys {argv[0]}` ({title}) exited {code}:\n{printed.out}\n{printed.err}"
        out[argv[0]] = printed.out
    assert list(out) == ["data", "train", "batch-score", "evaluate", "versions", "serve-demo"]
    assert "synthetic: 6,000 interactions" in out["data"]

    # train: one sealed, promoted version with every stage.
    artifacts = work / "artifacts"
    version = registry.current_version(artifacts)
    assert version and [p.name for p in artifacts.iterdir() if p.is_dir()] == [version]
    manifest = registry.verify_version(artifacts / version)
    assert manifest["stages"] == ["retrieval", "ranking"] and manifest["index"]["size"] == 150
    assert manifest["data"]["synthetic"]["num_users"] == 300
    assert f"* {version}" in out["versions"]

    # batch-score: Parquet for every train user, and its rows are the online pipeline's answers.
    from beam_jobs import read_scores
    from pipeline import RecommendPipeline

    df = read_scores(work / "batch")
    pipeline = RecommendPipeline.from_version_dir(artifacts / version)
    train_users = list(pipeline.features.vocabularies["user_id"].tokens)
    assert sorted(df["user_id"].unique()) == sorted(train_users)
    assert set(df["model_version"]) == {version}
    job = json.loads((work / "batch" / "job.json").read_text())["counters"]
    assert job["users_scored"] == len(train_users) and job["parquet_rows"] == len(df)
    for user in train_users[::25]:
        want_ids, want_scores, _ = pipeline.blend_top_k(pipeline.candidates([user])[0], pipeline.default_weights, K)
        rows = df.loc[(df["user_id"] == user) & (df["rank"] <= K)]
        assert list(rows["item_id"]) == list(want_ids) and len(want_ids) == K
        np.testing.assert_allclose(rows["score"], want_scores, rtol=1e-6)

    # evaluate: the report, NDCG in [0, 1], the pipeline ahead of random, the Beam output scored as the pipeline.
    report = json.loads((work / "reports" / "evaluation" / "report.json").read_text())
    metrics = report["metrics"]
    assert {"random", "popularity", "ease", "ease_recency", "itemknn", "two_tower", "pipeline",
                f"batch:{version}"} == set(metrics)
    for model, m in metrics.items():
        for name in ("ndcg@10", "ndcg_graded@10", "ndcg@100"):
            assert 0.0 <= m[name] <= 1.0, (model, name, m[name])
    assert metrics["pipeline"]["ndcg@10"] > 2 * metrics["random"]["ndcg@10"]
    for name in ("ndcg@10", "map@10", "recall@100"):
        assert metrics[f"batch:{version}"][name] == pytest.approx(metrics["pipeline"][name], abs=1e-9)
    assert (work / "reports" / "evaluation" / "sweep.json").exists()

    # serve-demo: a real redis-server; each known user answered ONLINE, then from the CACHE; unknown → FALLBACK.
    served = out["serve-demo"]
    assert "cache: redis-server started for this demo" in served and "health: SERVING" in served
    blocks = _sources(served)
    users = [line for line, _ in blocks[:8] if not line.startswith("--item") and "no-such-user" not in line]
    assert len(users) == 6  # two users × (first call, same again, quality-heavy weights)
    assert len(blocks) == 11  # + the events part: that user again, a brand-new user before and after
    assert [sources for _, sources in blocks[:3]] == [{"ONLINE"}, {"CACHE"}, {"CACHE"}]
    assert [sources for _, sources in blocks[3:6]] == [{"ONLINE"}, {"CACHE"}, {"CACHE"}]
    assert blocks[6] == ("--user no-such-user -k 5", {"FALLBACK"})
    assert blocks[7][1] == {"INDEX"}
    # Events (issue 13): the user's next list is recomputed with the engagements; a new user gets EVENTS.
    assert [sources for _, sources in blocks[8:]] == [{"ONLINE"}, {"FALLBACK"}, {"EVENTS"}]
    assert "→ accepted 2, duplicates 0" in served and "→ accepted 0, duplicates 2" in served
    assert "stopped the server and redis-server" in served
