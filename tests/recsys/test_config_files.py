"""--config FILE.toml and --print-config for every `recsys` command, data settings from a version's manifest,
and one-line errors. All through the real CLI entry point, in-process (no TensorFlow loads) or as a subprocess."""
from __future__ import annotations

import subprocess
import sys

import pytest

from core import registry
from core.config import config_to_dict, parse_config
from recsys.cli import main
from workflows.data import DataConfig, SourceConfig
from workflows.train import TrainConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# Every command with some non-default flags: printing, loading back and printing again must agree.
COMMANDS = {
    "data": ["data", "--source", "synthetic", "--synthetic-num-users", "50", "--column-map", "user_id=cust",
             "--test-fraction", "0.25"],
    "train": ["train", "--retrieval-epochs", "3", "--ranking-hidden", "16", "8", "--stages", "ranking",
              "--no-promote", "--index-factory", "HNSW32", "--neg-source", "sampled", "--new-version", "x1"],
    "evaluate": ["evaluate", "--models", "popularity", "itemknn", "--ks", "5", "20", "--itemknn-neighbors", "7",
                 "--source", "synthetic"],
    "index build": ["index", "build", "--factory", "IVF4,Flat", "--nprobe", "2", "--new-version", "x2", "--promote"],
    "serve": ["serve", "--port", "0", "--redis-url", "redis://h:1/0", "--swap-mode", "blue_green", "--no-verify",
              "--log-format", "text"],
    "recommend": ["recommend", "--user", "u1", "-k", "3", "--context", "a=b", "c=d", "--exclude", "i1", "i2",
                  "--explain"],
    "serve-demo": ["serve-demo", "--users", "1", "2", "-k", "3"],
    "batch-score": ["batch-score", "--output", "o", "--direct-num-workers", "2", "--direct-running-mode",
                    "multi_processing", "--batch-size", "32"],
    "versions": ["versions", "--artifacts", "a", "--json"],
    "retrain": ["retrain", "--events", "ev", "--cutoff", "100", "--holdout-days", "7", "--warm-start", "--no-promote",
                "--ndcg-tolerance", "0.01", "--source", "synthetic", "--retrieval-epochs", "2"],
    "promote": ["promote", "v9", "--artifacts", "a"],
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--log-level", "WARNING", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def print_config(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv, "--print-config")
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_print_config_loads_back_to_the_same_config(name, tmp_path, capsys):
    argv = COMMANDS[name]
    words = name.split()
    printed = print_config(capsys, *argv)
    path = tmp_path / "config.toml"
    path.write_text(printed)
    assert print_config(capsys, *words, "--config", str(path)) == printed
    assert tomllib.loads(printed)  # valid TOML, one table per section


def test_printed_config_holds_the_flags_given(capsys):
    t = tomllib.loads(print_config(capsys, *COMMANDS["train"]))
    assert t["retrieval"]["epochs"] == 3 and t["ranking"]["hidden"] == [16, 8]
    assert t["run"]["stages"] == ["ranking"] and t["run"]["promote"] is False and t["run"]["new_version"] == "x1"
    assert t["index"]["factory"] == "HNSW32" and t["negatives"]["source"] == "sampled"
    assert t["data"]["source"]["source"] == "movielens-100k"  # untouched defaults are printed too
    d = tomllib.loads(print_config(capsys, *COMMANDS["data"]))
    assert d["data"]["files"]["column_map"] == {"user_id": "cust"} and d["data"]["synthetic"]["num_users"] == 50
    r = tomllib.loads(print_config(capsys, *COMMANDS["recommend"]))
    assert r["num_results"] == 3 and r["context"] == {"a": "b", "c": "d"} and r["exclude"] == ["i1", "i2"]
    b = tomllib.loads(print_config(capsys, *COMMANDS["batch-score"]))
    assert b["beam"] == {"runner": "", "direct_num_workers": 2, "direct_running_mode": "multi_processing"}
    assert tomllib.loads(print_config(capsys, *COMMANDS["promote"]))["version"] == "v9"


def test_a_config_file_is_the_same_config_as_its_flags(tmp_path, capsys):
    flags = COMMANDS["train"][1:]
    path = tmp_path / "train.toml"
    path.write_text(print_config(capsys, "train", *flags))
    assert parse_config(TrainConfig, ["--config", str(path)]) == parse_config(TrainConfig, flags)


def test_flags_given_override_the_file_and_the_rest_of_the_file_stays(tmp_path, capsys):
    path = tmp_path / "train.toml"
    path.write_text('[retrieval]\nepochs = 7\ntemperature = 0.5\n\n[data.split]\ntest_fraction = 0.3\n')
    t = tomllib.loads(print_config(capsys, "train", "--config", str(path), "--retrieval-epochs", "2"))
    assert t["retrieval"]["epochs"] == 2 and t["retrieval"]["temperature"] == 0.5
    assert t["data"]["split"]["test_fraction"] == 0.3
    assert t["retrieval"]["embedding_dim"] == 64  # neither file nor flag: the default


@pytest.mark.parametrize("text, closest", [
    ("[retrieval]\nembeding_dim = 3\n", "'retrieval.embedding_dim'"),
    ("[run]\nembedding_dim = 3\n", "'retrieval.embedding_dim'"),     # a key of another table
    ("[retreival]\nepochs = 3\n", "'retrieval'"),
    ("[data.split]\ntest_fracton = 0.3\n", "'data.split.test_fraction'"),
])
def test_an_unknown_key_names_the_closest_valid_key(text, closest, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, _, err = run(capsys, "train", "--config", str(path), "--print-config")
    assert code == 2
    assert err.startswith("recsys train: error: --config") and f"did you mean {closest}?" in err
    assert len(err.strip().splitlines()) == 1


def _fake_version(root, name="fake", **source) -> DataConfig:
    """A sealed version directory whose manifest holds data settings (no models: enough for --print-config)."""
    data = DataConfig(source=SourceConfig(source="synthetic"), **source)
    d = registry.start_version(root, name)
    (d / "features").mkdir()
    (d / "features" / "x").write_text("x")
    registry.finalize_version(d, {"data": config_to_dict(data)})
    return data


def test_evaluate_of_a_trained_model_takes_data_and_split_from_the_manifest(tmp_path, capsys):
    from features import SplitConfig, SyntheticConfig

    _fake_version(tmp_path, synthetic=SyntheticConfig(num_users=77, seed=5), split=SplitConfig(test_fraction=0.3))
    argv = ["evaluate", "--models", "popularity", "two_tower", "--artifacts", str(tmp_path), "--version", "fake"]
    printed = print_config(capsys, *argv)
    t = tomllib.loads(printed)
    assert t["data"]["source"]["source"] == "synthetic" and t["data"]["synthetic"]["num_users"] == 77
    assert t["data"]["split"]["test_fraction"] == 0.3
    assert t["models"]["two_tower"]["version_dir"] == str(tmp_path / "fake")
    # Its printed config (the same data settings, written out) loads back without --override-data.
    path = tmp_path / "evaluate.toml"
    path.write_text(printed)
    assert print_config(capsys, "evaluate", "--config", str(path)) == printed
    # Retyping a setting with the same value is fine; a different one needs --override-data.
    assert tomllib.loads(print_config(capsys, *argv, "--synthetic-num-users", "77"))["data"] == t["data"]
    code, _, err = run(capsys, *argv, "--test-fraction", "0.2", "--print-config")
    assert code == 2 and "--test-fraction differ" in err and "--override-data" in err
    over = tomllib.loads(print_config(capsys, *argv, "--test-fraction", "0.2", "--override-data"))
    assert over["data"]["split"]["test_fraction"] == 0.2 and over["data"]["synthetic"]["num_users"] == 77


def test_evaluate_of_baselines_alone_takes_the_data_flags(tmp_path, capsys):
    _fake_version(tmp_path)
    registry.promote(tmp_path, "fake")
    t = tomllib.loads(print_config(capsys, "evaluate", "--models", "popularity", "--artifacts", str(tmp_path),
                                   "--test-fraction", "0.4"))
    assert t["data"]["source"]["source"] == "movielens-100k" and t["data"]["split"]["test_fraction"] == 0.4


def test_train_base_version_takes_data_from_the_manifest(tmp_path, capsys):
    _fake_version(tmp_path)
    t = tomllib.loads(print_config(capsys, "train", "--artifacts", str(tmp_path), "--base-version", "fake"))
    assert t["data"]["source"]["source"] == "synthetic" and t["run"]["base_version"] == "fake"


@pytest.mark.parametrize("command", ["serve", "batch-score"])
def test_serve_and_batch_score_have_no_data_flags_the_version_gives_them(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--source", "synthetic", "--output", "o"])
    assert e.value.code == 2 and "unrecognized arguments: --source" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "(its features and manifest); there are no data flags" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, message", [
    (["train", "--retrieval-temperature", "0"], "recsys train: error: --retrieval-temperature must be positive"),
    (["train", "--index-nprobe", "0"], "recsys train: error: --index-nprobe, --index-ef-search"),
    (["train", "--epochs", "-1"], "recsys train: error: --epochs must be >= 0"),
    (["train", "--config", "/no/such.toml"], "recsys train: error: --config /no/such.toml: file not found"),
    (["index", "build", "--nprobe", "0"], "recsys index: error: --nprobe, --ef-search"),
    (["serve", "--port", "70000"], "recsys serve: error: --port/--metrics-port must be in [0, 65535]"),
    (["batch-score", "--output", "o", "--batch-size", "0"], "recsys batch-score: error: --batch-size must be >= 1"),
    (["batch-score", "--output", "o", "--direct-num-workers", "-1"], "--direct-num-workers must be >= 1"),
    (["recommend"], "recsys recommend: error: give one of --user (Recommend) or --item"),
    (["recommend", "--user", "u", "--engagement-weight", "1"], "give both --engagement-weight and --quality-weight"),
    (["evaluate", "--ks", "0"], "recsys evaluate: error: --ks must be positive"),
    (["data", "--test-fraction", "1.5"], "recsys data: error: --test-fraction must be in (0, 1)"),
    (["promote", "--artifacts", "/nonexistent"], "recsys promote: error: give the version to promote"),
])
def test_a_bad_value_is_one_line_and_exit_2(argv, message, capsys):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_bad_value_in_a_file_is_one_line_naming_its_flag(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[retrieval]\nepochs = "three"\n')
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "train", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "recsys train: error: --retrieval-epochs: expected an integer, got 'three'"


def test_recommend_imports_no_tensorflow():
    """The thin client: only gRPC and the generated stubs load (not TensorFlow, FAISS, Beam, pandas or Redis)."""
    from tests.conftest import free_port

    code = ("import sys; from recsys.cli import main; "
            f"code = main(['recommend', '--user', 'u1', '--target', '127.0.0.1:{free_port()}', '--timeout', '0.2']); "
            "print(code, sorted(m for m in ('tensorflow', 'tf_keras', 'faiss', 'apache_beam', 'pandas', 'redis') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(None, 1) == ["1", "[]\n"], (done.stdout, done.stderr)  # 1: UNAVAILABLE, no server
