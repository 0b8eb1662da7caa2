"""Artifacts, users and outputs addressed by URL through Beam's FileSystems (beam_jobs/files.py), on the
local runner: file:// URLs give exactly what plain paths give; a scheme without its filesystem is a
one-line error naming the flag and the extra to install."""
from __future__ import annotations

import json

import pytest

from beam_jobs import read_scores
from beam_jobs.files import resolve_url
from core.errors import DataError
from tests.beam_jobs.conftest import batch_score, in_memory, job_record


@pytest.mark.integration
def test_file_urls_give_the_outputs_of_plain_paths(scored, tiny_version, tmp_path):
    _, local_out = scored
    output = tmp_path / "by url"  # a space: the URL is percent-encoded
    code = batch_score(tiny_version, "--output", output.as_uri(), *in_memory())
    assert code == 0
    code = batch_score(tiny_version, "--artifacts", tiny_version.parent.as_uri(), "--output", output.as_uri(),
                       *in_memory())  # the version found under a file:// root too
    assert code == 0
    assert read_scores(output).equals(read_scores(local_out))
    assert job_record(output, redis_counters=False) == job_record(local_out, redis_counters=False)
    assert json.loads((output / "job.json").read_text())["config"]["output"] == str(output)


@pytest.mark.parametrize("flag, value, message", [
    ("--output", "gs://bkt/scores", "pip install 'apache-beam[gcp]'"),
    ("--users", "nosuch://bkt/ids.txt", "no Beam filesystem for nosuch://"),
    ("--artifacts", "gs://bkt/artifacts", "--artifacts gs://bkt/artifacts: no Beam filesystem for gs://"),
    ("--output", "file://otherhost/scores", "not on host 'otherhost'"),
])
def test_a_url_no_installed_filesystem_serves_is_an_error_naming_the_flag(tiny_version, flag, value, message,
                                                                         tmp_path, monkeypatch, capsys):
    from recsys.cli import main as recsys_main

    monkeypatch.chdir(tmp_path)
    rest = [] if flag == "--output" else ["--output", str(tmp_path / "out")]
    code = recsys_main(["batch-score", "--artifacts", str(tiny_version.parent), "--version", tiny_version.name,
                        *rest, flag, value])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and flag in err and "Traceback" not in err


def test_resolve_url_keeps_paths_and_maps_file_urls():
    assert resolve_url("--output", "") == ""
    assert resolve_url("--output", "rel/dir") == "rel/dir"
    assert resolve_url("--output", "file:///tmp/a%20b") == "/tmp/a b"
    assert resolve_url("--output", "file://localhost/tmp/x") == "/tmp/x"
    with pytest.raises(DataError, match="--users"):
        resolve_url("--users", "gs://b/ids.txt")


def test_a_runner_without_counters_is_reported_as_such_not_as_zeros():
    from beam_jobs import BatchScoreConfig
    from beam_jobs.pipeline import BatchScoreResult

    config = BatchScoreConfig(output="out", redis_url="redis://localhost:6379/0")
    result = BatchScoreResult(config, "v1", "/a/v1", 100, {}, None, 12.0, "DONE", "SomeRunner")
    text = result.summary()
    assert "NO counters" in text and "unknown (not zero)" in text and "0 users" not in text
    assert "failed_redis_users.txt" in text and result.ok  # losses cannot be counted; the file lists any
