"""`recsys train`, `recsys index build` and `recsys evaluate --models two_tower`, run through the CLI entry point.

In-process (`recsys.cli.main`) so TensorFlow loads once; tests/recsys/test_cli.py covers the
subprocess behaviour shared by every command.
"""
import json

import pytest

from core import registry
from recsys.cli import main

DATA = ["--source", "synthetic", "--synthetic-num-users", "300", "--synthetic-num-items", "150",
        "--synthetic-num-interactions", "12000", "--synthetic-seed", "5"]
TINY = ["--retrieval-embedding-dim", "8", "--retrieval-id-dim", "8", "--retrieval-feature-dim", "4",
        "--retrieval-epochs", "2", "--retrieval-batch-size", "256", "--no-retrieval-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    # Only this stage: the full pipeline is trained once by the shared tiny_version fixture.
    code = main(["train", *DATA, *TINY, "--stages", "retrieval", "--artifacts", str(root), "--version", "v1"])
    assert code == 0
    return root


def test_train_writes_promotes_and_documents_a_version(trained):
    assert registry.current_version(trained) == "v1"
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
    assert registry.current_version(trained) == "v1"  # not promoted without --promote


def test_evaluate_reports_the_two_tower_beside_the_baselines(trained, tmp_path, capsys):
    code = main(["evaluate", *DATA, "--models", "random", "popularity", "two_tower", "--artifacts", str(trained),
                 "--report-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "two_tower" in out and "popularity" in out
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert "two_tower" in json.dumps(report)


@pytest.mark.parametrize("argv,message", [
    (["index", "build", "--version", "v1", "--factory", "Nope"], "--factory 'Nope' is not a valid"),
    (["index", "build", "--version", "v9"], "version 'v9' not found"),
    (["train", *DATA, "--retrieval-temperature", "0"], "--retrieval-temperature must be positive"),
    (["train", *DATA, *TINY, "--version", "v1"], "already exists"),
    (["evaluate", *DATA, "--models", "two_tower", "--synthetic-seed", "6"], "trained on different data"),
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
            "import recsys.commands.train, recsys.commands.index, evaluation.two_tower, retrieval; "
            "retrieval.TwoTowerConfig(); retrieval.IndexConfig(); "
            "print(sorted(m for m in ('tensorflow', 'faiss', 'tf_keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
