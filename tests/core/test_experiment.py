"""The experiment file's validation, the documented user → arm hash, layouts under a ramping canary, and the
list-overlap measures (no server: core/experiment.py is pure Python)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from core.experiment import (
    ExperimentConfigError,
    bucket,
    jaccard,
    parse_experiment,
    rbo,
    read_experiment,
    write_experiment,
)


def ab(**extra) -> dict:
    return {"name": "t", "arms": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}], **extra}


def test_bucket_is_the_documented_sha256_formula():
    for user in ("u1", "user-42", "ü-é", ""):
        expected = int.from_bytes(hashlib.sha256(f"salt-1:{user}".encode()).digest()[:8], "big") % 10_000
        assert bucket("salt-1", user) == expected


def test_bucketing_is_the_same_in_another_process():
    users = [f"user-{n}" for n in range(200)]
    code = ("import json, sys; from core.experiment import bucket; "
            "print(json.dumps([bucket('s', u) for u in json.loads(sys.stdin.read())]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(users), capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == [bucket("s", u) for u in users]


def test_shares_on_10000_users_are_within_tolerance():
    e = parse_experiment({"name": "t", "arms": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.3},
                                                {"name": "C", "share": 0.2}]})
    arms = [e.assign(f"user-{n}") for n in range(10_000)]
    counts = {a: arms.count(a) for a in "ABC"}
    for a, share in (("A", 0.5), ("B", 0.3), ("C", 0.2)):
        # 4 binomial standard deviations: fails only when the hash or the layout is biased
        assert abs(counts[a] - 10_000 * share) < 4 * np.sqrt(10_000 * share * (1 - share)), counts
    assert stats.chisquare([counts[a] for a in "ABC"], [5000, 3000, 2000]).pvalue > 0.001


def test_different_salts_assign_independently():
    users = [f"user-{n}" for n in range(10_000)]
    one = parse_experiment(ab(salt="one"))
    two = parse_experiment(ab(salt="two"))
    table = np.zeros((2, 2))
    for u in users:
        table["AB".index(one.assign(u)), "AB".index(two.assign(u))] += 1
    assert stats.chi2_contingency(table).pvalue > 0.001, table  # independent
    same_salt = parse_experiment(ab(salt="one", name="other-name"))
    assert all(one.assign(u) == same_salt.assign(u) for u in users[:500])  # the salt alone decides


def test_a_ramping_canary_only_takes_users_from_control():
    e = parse_experiment({"name": "t", "control": "A", "arms": [
        {"name": "A", "share": 0.8}, {"name": "B", "share": 0.1}, {"name": "C", "share": 0.1}],
        "canary": {"arm": "C", "start": 1000, "schedule": [[0, 0.01], [60, 0.05], [120, 0.1]]}})
    users = [f"user-{n}" for n in range(5000)]
    before = {u: e.assign(u, e.layout(1001)) for u in users}
    after = {u: e.assign(u, e.layout(1200)) for u in users}
    assert e.shares(1001) == pytest.approx({"A": 0.89, "B": 0.1, "C": 0.01})
    assert e.shares(999) == pytest.approx({"A": 0.9, "B": 0.1, "C": 0.0})
    for u in users:
        if before[u] != after[u]:
            assert (before[u], after[u]) == ("A", "C")
        if before[u] in ("B", "C"):
            assert after[u] == before[u]  # sticky
    assert 0.07 < sum(a == "C" for a in after.values()) / len(users) < 0.13


@pytest.mark.parametrize("raw, message", [
    ({"name": "t", "arms": []}, "arms: a non-empty list"),
    (ab(extra_key=1), "unknown key(s) ['extra_key']"),
    ({"name": "t", "arms": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.6}]}, "shares must sum to 1"),
    ({"name": "t", "arms": [{"name": "A", "share": 0.5}, {"name": "A", "share": 0.5}]}, "names must be unique"),
    (ab(control="Z"), "control: 'Z' is not an arm"),
    ({"name": "t", "arms": [{"name": "A", "share": 1.0, "weights": {"engagement": 0.05}}]}, "arms[0].weights.engagement"),
    ({"name": "t", "arms": [{"name": "A", "share": 1.0, "weights": {"mode": "multiplicative", "transform": "log"}}]},
     "multiplicative mode takes 'identity'"),
    ({"name": "t", "arms": [{"name": "A", "share": 1.0, "version": "../etc"}]}, "arms[0].version"),
    (ab(canary={"arm": "A", "schedule": [[0, 0.1]]}), "canary cannot be the control"),
    (ab(canary={"arm": "B", "schedule": [[10, 0.1], [5, 0.2]]}), "offsets must increase"),
    (ab(shadow={"version": "v", "k": 0}), "shadow.k"),
    (ab(allow_force="yes"), "allow_force"),
])
def test_a_bad_file_is_refused_naming_the_key(raw, message):
    with pytest.raises(ExperimentConfigError) as e:
        parse_experiment(raw)
    assert message in str(e.value)


def test_round_trip_through_the_file(tmp_path):
    e = parse_experiment(ab(shadow={"version": "v2", "sample": 0.5, "k": 5},
                            canary={"arm": "B", "start": 5, "schedule": [[0, 0.1]]}))
    path = write_experiment(tmp_path / "experiment.json", e)
    assert read_experiment(path) == e
    assert read_experiment(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExperimentConfigError, match="bad.json: not valid JSON"):
        read_experiment(tmp_path / "bad.json")


def test_overlap_measures():
    a = ["1", "2", "3", "4"]
    assert jaccard(a, a) == 1.0 and rbo(a, a, 4) == pytest.approx(1.0)
    assert jaccard(a, ["5", "6"]) == 0.0 and rbo(a, ["5", "6", "7", "8"], 4) == 0.0
    assert jaccard(a, ["1", "2", "5", "6"]) == pytest.approx(2 / 6)
    # Same items, reversed: Jaccard 1, RBO < 1; a swap at the top costs more than one at the bottom.
    assert rbo(a, a[::-1], 4) < 1
    assert rbo(a, ["2", "1", "3", "4"], 4) < rbo(a, ["1", "2", "4", "3"], 4) < 1
    # Hand value at depth 2, p = 0.9: overlaps 0/1 then 2/2 → (0.1 · (0 + 0.9 · 1)) / (1 − 0.81)
    assert rbo(["1", "2"], ["2", "1"], 2) == pytest.approx(0.1 * 0.9 / 0.19)
