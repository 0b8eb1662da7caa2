"""`recsys monitor`: offline drift between two windows of data — figures, files, exit codes and user mistakes."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from drift import psi
from features import SyntheticConfig, generate_synthetic
from recsys.cli import main as recsys_main

DATA = ("--source", "synthetic", "--synthetic-num-users", "200", "--synthetic-num-items", "100",
        "--synthetic-num-interactions", "6000", "--synthetic-seed", "4")


@pytest.fixture(scope="module")
def dataset():
    return generate_synthetic(SyntheticConfig(num_users=200, num_items=100, num_interactions=6000, seed=4))


def monitor(tmp_path, *args: str) -> tuple[int, dict]:
    code = recsys_main(["--log-level", "WARNING", "monitor", *DATA, "--output", str(tmp_path / "report"), *args])
    path = tmp_path / "report" / "report.json"
    return code, (json.loads(path.read_text()) if path.exists() else {})


def by_name(report: dict) -> dict[str, dict]:
    return {f"{x['group']}/{x['quantity']}": x for x in report["drift"]}


def test_two_time_windows_of_the_same_population_do_not_drift(tmp_path, dataset):
    middle = int(dataset.interactions["timestamp"].median())
    code, report = monitor(tmp_path, "--reference-split", "all", "--reference-until", str(middle),
                           "--current-split", "all", "--current-since", str(middle))
    assert code == 0
    rows = by_name(report)
    assert {"input/segment", "input/activity", "input/history_length", "interaction/category",
            "interaction/item_type", "interaction/item_popularity", "interaction/rating",
            "interaction/engaged"} <= set(rows)
    assert rows["input/segment"]["psi"] < 0.1 and not rows["input/segment"]["drifted"]
    assert report["reference"]["rows"] + report["current"]["rows"] == len(dataset.interactions)
    for name in ("report.md", "psi.png", "distributions.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_exported_events_from_a_shifted_population_drift_and_fail_on_drift(tmp_path, dataset):
    users = dataset.users
    one = users.index[users["segment"] == users["segment"].iloc[0]]
    events = dataset.interactions[dataset.interactions["user_id"].isin(one)].copy()
    events["timestamp"] += 10**6
    path = tmp_path / "events.parquet"
    events.to_parquet(path)
    code, report = monitor(tmp_path, "--current-file", str(path), "--fail-on-drift")
    assert code == 1  # drifted and asked to fail
    segment = by_name(report)["input/segment"]
    assert segment["drifted"] and segment["n_current"] == len(events)
    # Hand check: reference = train rows' segments (top 20 categories + other), current = all one segment.
    from core.config import parse_config
    from workflows.data import DataConfig, load_split

    _, split = load_split(parse_config(DataConfig, list(DATA)))
    ref = users["segment"].reindex(split.train["user_id"]).astype(str)
    shares = ref.value_counts(normalize=True)
    live = (shares.index == str(users["segment"].iloc[0])).astype(float)
    assert segment["psi"] == pytest.approx(psi(shares.to_numpy(), np.append(live, 0.0)[:len(shares)]), rel=1e-9)
    assert report["rates"]["unknown_user_rate"] == pytest.approx(
        float((~events["user_id"].isin(set(split.train["user_id"]))).mean()))
    assert not math.isnan(by_name(report)["input/activity"]["ks"])


@pytest.mark.parametrize("args,message", [
    (["--current-file", "/no/such.parquet"], "--current-file: file not found: /no/such.parquet"),
    (["--current-since", "yesterday"], "--current-since 'yesterday': not an ISO-8601 date/time"),
    (["--reference-until", "1970-01-02"], "--reference-split train --reference-until 1970-01-02 selects no rows"),
    (["--psi-threshold", "0"], "--psi-threshold must be > 0"),
])
def test_user_mistakes_name_the_flag_and_exit_2(tmp_path, capsys, args, message):
    code, _ = monitor(tmp_path, *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_an_events_file_without_a_required_column_names_it(tmp_path, capsys, dataset):
    path = tmp_path / "events.csv"
    pd.DataFrame({"user_id": ["1"], "timestamp": [5]}).to_csv(path, index=False)
    code, _ = monitor(tmp_path, "--current-file", str(path))
    err = capsys.readouterr().err
    assert code == 2 and "missing required column(s) ['item_id']" in err and str(path) in err
