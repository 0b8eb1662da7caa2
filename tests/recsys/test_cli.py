"""The `recsys` command as a user runs it: a subprocess, exit codes and messages."""
import json
import subprocess
import sys

import pytest


def recsys(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    out = recsys("--help")
    assert out.returncode == 0
    assert "data" in out.stdout and "evaluate" in out.stdout


def test_data_describes_movielens_and_split():
    out = recsys("data", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["dataset"]["interactions"] == 100_000
    assert info["split"]["train"]["rows"] + info["split"]["test"]["rows"] == 100_000


@pytest.mark.parametrize("argv,message", [
    (["data", "--source", "files"], "--interactions is required"),
    (["data", "--source", "files", "--interactions", "/no/such.csv"], "--interactions: file not found: /no/such.csv"),
    (["data", "--test-fraction", "1.5"], "--test-fraction must be in (0, 1)"),
])
def test_user_mistakes_get_one_clear_line_and_exit_2(argv, message):
    out = recsys(*argv)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_flag_is_an_argparse_error():
    out = recsys("data", "--no-such-flag")
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr
