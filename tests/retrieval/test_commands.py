"""`recsys train`, `recsys index build` and `recsys evaluate --models two_tower`, run through the CLI entry point.

The retrieval-only version is not promoted (serving cannot load it); `train --base-version`
completes it with a ranker trained on its retriever, which stays byte-identical.

In-process (`recsys.cli.main`) so TensorFlow loads once; tests/recsys/test_cli.py covers the
subprocess behaviour shared by every command.
"""
import contextlib
import io
import json

import pytest

from core import registry
from core.errors import ArtifactError
from recsys.cli import main

DATA = ["--source", "synthetic", "--synthetic-num-users", "300", "--synthetic-num-items", "150",
        "--synthetic-num-interactions", "12000", "--synthetic-seed", "5"]
TINY = ["--retrieval-embedding-dim", "8", "--retrieval-id-dim", "8", "--retrieval-feature-dim", "4",
        "--retrieval-epochs", "2", "--retrieval-batch-size", "256", "--no-retrieval-progress"]


@pytest.fixture(scope="module")
def trained_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    # Only this stage: the full pipeline is trained once by the shared tiny_version fixture.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", *DATA, *TINY, "--stages", "retrieval", "--artifacts", str(root), "--new-version", "v1"])
    assert code == 0
    return root, out.getvalue()


@pytest.fixture(scope="module")
def trained(trained_output):
    return trained_output[0]


def test_train_writes_and_documents_a_version_but_promotes_only_a_servable_one(trained_output):
    trained, printed = trained_output
    with pytest.raises(ArtifactError, match="no CURRENT pointer"):
        registry.current_version(trained)  # a retrieval-only version has no ranker: serving cannot load it
    assert "not promoted: serving cannot load it (no ranker)" in printed
    assert "--base-version v1" in printed
    manifest = registry.verify_version(trained / "v1")
    assert manifest["stages"] == ["retrieval"] and "ranking" not in manifest
    assert manifest["data"]["source"]["source"] == "synthetic"
    assert manifest["data"]["synthetic"]["num_users"] == 300
    r = manifest["retrieval"]
    assert r["config"]["embedding_dim"] == 8 and r["config"]["logq"] is True
    assert set(r["metrics"]["validation"]) == {"recall_at_100", "ndcg_at_10"}
    assert r["epochs_run"] >= 1 and r["training_seconds"] > 0
    i = manifest["index"]
    assert i["config"]["factory"] == "Flat" and i["recall_at_n"] == pytest.approx(1.0) and i["size"] == 150
    assert manifest["sizes"]["items"] == 150
    for path in ("features/features.json", "retrieval/items.npz", "retrieval/user_tower/saved_model.pb",
                 "index/index.faiss", "index/item_ids.npy", "index/index.json"):
        assert path in manifest["checksums"], path


def test_index_build_writes_a_new_version_and_keeps_the_rest(trained, capsys):
    code = main(["index", "build", "--artifacts", str(trained), "--version", "v1", "--new-version", "v2",
                 "--factory", "IVF4,Flat", "--nprobe", "2"])
    assert code == 0
    assert "version v2" in capsys.readouterr().out
    old, new = registry.verify_version(trained / "v1"), registry.verify_version(trained / "v2")
    assert new["parent_version"] == "v1" and new["index"]["config"]["factory"] == "IVF4,Flat"
    assert 0.0 < new["index"]["recall_at_n"] <= 1.0
    assert new["retrieval"] == old["retrieval"]
    shared = [k for k in old["checksums"] if not k.startswith("index/")]
    assert all(new["checksums"][k] == old["checksums"][k] for k in shared)
    assert not (trained / registry.POINTER).exists()  # not promoted without --promote


def test_evaluate_reports_the_two_tower_beside_the_baselines_on_its_own_data(trained, tmp_path, capsys):
    # No data flags: the data and split settings come from v1's manifest.
    code = main(["evaluate", "--models", "random", "popularity", "two_tower", "--artifacts", str(trained),
                 "--version", "v1", "--report-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "two_tower" in out and "popularity" in out
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert "two_tower" in json.dumps(report)
    assert report["config"]["data"] == registry.read_manifest(trained / "v1")["data"]


@pytest.mark.parametrize("argv,message", [
    (["index", "build", "--version", "v1", "--factory", "Nope"], "--factory 'Nope' is not a valid"),
    (["index", "build", "--version", "v9"], "version 'v9' not found"),
    (["train", *DATA, "--retrieval-temperature", "0"], "--retrieval-temperature must be positive"),
    (["train", *DATA, *TINY, "--new-version", "v1"], "already exists"),
    (["train", *DATA, "--version", "v1"], "name the version train writes with --new-version v1"),
    (["evaluate", "--version", "v1", "--models", "two_tower", "--synthetic-seed", "6"],
     "trained on other data settings (--synthetic-seed differ)"),
    (["train", "--base-version", "v1", "--synthetic-seed", "6"], "(--synthetic-seed differ)"),
    (["train", "--base-version", "v1", "--stages", "retrieval"], "nothing left to train"),
])
def test_user_mistakes_get_one_clear_line(trained, capsys, argv, message):
    code = main([*argv, "--artifacts", str(trained)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in trained.iterdir() if p.is_dir()) in (["v1"], ["v1", "v2"])


def test_building_the_cli_and_importing_retrieval_commands_does_not_load_tensorflow_or_faiss():
    """`recsys --help` and `recsys data` stay fast: TF and FAISS load only when a command runs."""
    import subprocess
    import sys

    code = ("import sys; from recsys.cli import build_parser; build_parser(); "
            "import recsys.commands.train, recsys.commands.index, evaluation.two_tower, retrieval, workflows.train; "
            "retrieval.TwoTowerConfig(); retrieval.IndexConfig(); "
            "print(sorted(m for m in ('tensorflow', 'faiss', 'tf_keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


RANKING = ["--ranking-id-dim", "8", "--ranking-feature-dim", "4", "--ranking-hidden", "16", "--ranking-head-hidden", "8",
           "--ranking-wide-buckets", "1009", "--ranking-history-length", "5", "--ranking-epochs", "1",
           "--no-ranking-progress", "--neg-source", "sampled", "--pipeline-num-candidates", "30"]


def test_train_base_version_reuses_the_retriever_byte_identical_and_trains_the_ranker(trained, capsys):
    """Last in this module: it adds (and promotes) v3 in the shared artifacts root."""
    # No data flags: v1's manifest gives them; sampled negatives: a ranker without candidate context.
    code = main(["train", "--artifacts", str(trained), "--base-version", "v1", "--new-version", "v3", *RANKING])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "reused byte-identical from v1" in out and "promoted (CURRENT)" in out
    base, new = registry.verify_version(trained / "v1"), registry.verify_version(trained / "v3")
    reused = [k for k in base["checksums"] if k.split("/")[0] in ("features", "retrieval", "index")]
    assert reused and all(new["checksums"][k] == base["checksums"][k] for k in reused)
    for k in reused:
        assert (trained / "v3" / k).read_bytes() == (trained / "v1" / k).read_bytes()
    assert new["base_version"] == "v1" and new["stages"] == ["ranking"]
    assert new["retrieval"] == base["retrieval"] and new["index"] == base["index"]
    assert new["data"] == base["data"]
    assert new["ranking"]["training"]["context"] is False
    assert registry.current_version(trained) == "v3"
    from pipeline import RecommendPipeline  # serving loads it

    pipe = RecommendPipeline.from_version_dir(trained / "v3")
    users = list(pipe.features.vocabularies["user_id"].tokens[:3])
    assert all(len(c.item_ids) > 0 for c in pipe.candidates(users))
