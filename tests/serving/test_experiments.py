"""Experiments on the live path over real gRPC, a real redis-server and the tiny version: arms in responses and
in the event log, stable assignment across servers and restarts, shares, hot reload, refused files, forced
arms, several versions in one process, shadow scoring that never changes a response, and canary rollback."""
from __future__ import annotations

import json
import pathlib
import time

import grpc
import pytest
import redis

from core.experiment import experiment_file
from feedback.export import ExportConfig, export_events
from protos.recsys.v1 import recommender_pb2 as pb
from serving.experiments import ExperimentsConfig
from serving.validation import RequestLimits, validate_recommend
from tests.serving.versions_util import copy_version

pytestmark = pytest.mark.integration

K = 10
T0 = 1_767_225_600


def write(path: pathlib.Path, raw: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(raw))
    tmp.replace(path)


def ab(name: str = "t", **extra) -> dict:
    return {"name": name, "arms": [{"name": "A", "share": 0.5},
                                   {"name": "B", "share": 0.5, "weights": {"engagement": 0.2, "quality": 1.0}}],
            **extra}


def wait_for(condition, timeout: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def recommend(stub, user: str, **kw) -> pb.RecommendResponse:
    return stub.Recommend(pb.RecommendRequest(user_id=user, num_results=K, **kw), timeout=30)


@pytest.fixture
def root(tmp_path, tiny_version) -> pathlib.Path:
    """An artifacts root holding the tiny version (a link, read-only) and nothing else yet."""
    r = tmp_path / "artifacts"
    r.mkdir()
    (r / tiny_version.name).symlink_to(tiny_version, target_is_directory=True)
    return r


@pytest.fixture
def serve(start, root):
    """serve(raw experiment or None, redis_url="", loader=None, **ExperimentsConfig) → (server, stub)."""
    def _serve(raw: dict | None, redis_url: str = "", loader=None, **config):
        if raw is not None:
            write(experiment_file(root), raw)
        server, stub = start(redis_url)
        server.start_experiments(root, ExperimentsConfig(**{"poll_s": 0.05, **config}), loader=loader)
        return server, stub
    return _serve


def metric(server, name: str, labels: dict | None = None) -> float:
    value = server.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_responses_carry_the_arm_and_its_blend(serve, known_users):
    server, stub = serve(ab())
    experiment = server.servicer.experiments.experiment
    seen = set()
    for user in known_users[:20]:
        response = recommend(stub, user)
        assert response.arm == experiment.assign(user)
        seen.add(response.arm)
        if response.arm == "B":
            assert (response.blend.engagement, response.blend.quality) == pytest.approx((0.2, 1.0))
        else:
            assert response.blend.engagement == pytest.approx(server.servicer.model.default_weights.engagement)
        assert recommend(stub, user).arm == response.arm  # sticky, also from the cache
    assert seen == {"A", "B"}
    assert metric(server, "recsys_experiment_requests_total", {"arm": "A"}) > 0


def test_assignment_is_the_same_across_servers_and_restarts(serve, start, root, known_users):
    users = known_users[:30] + [f"new-user-{n}" for n in range(30)]
    _, stub_one = serve(ab(salt="stable"))
    first = [recommend(stub_one, u).arm for u in users]
    _, stub_two = serve(None)  # a second server process on the same file
    assert [recommend(stub_two, u).arm for u in users] == first
    _, stub_three = serve(None)  # "restart": a fresh server
    assert [recommend(stub_three, u).arm for u in users] == first


def test_shares_on_10000_users(serve):
    server, _ = serve({"name": "t", "arms": [{"name": "A", "share": 0.7}, {"name": "B", "share": 0.3}]})
    limits = RequestLimits()
    counts = {"A": 0, "B": 0}
    for n in range(10_000):
        response, _ = server.servicer.answer(validate_recommend(pb.RecommendRequest(user_id=f"x{n}", num_results=3),
                                                                limits))
        counts[response.arm] += 1
    assert abs(counts["B"] - 3000) < 4 * (10_000 * 0.3 * 0.7) ** 0.5, counts  # 4 standard deviations


def test_remembered_buckets_assign_what_the_formula_assigns_through_a_ramp_and_a_new_salt(serve, root, monkeypatch):
    """The request path remembers each user's bucket (serving/experiments.py): the arm must still be
    Experiment.assign's under every layout (a canary ramping), for a new salt, and past the memory bound."""
    import serving.experiments as se

    monkeypatch.setattr(se, "_BUCKETS_KEPT", 500)
    raw = {"name": "t", "salt": "one", "arms": [{"name": "A", "share": 0.6}, {"name": "B", "share": 0.4}]}
    server, _ = serve(raw)
    experiments = server.servicer.experiments
    users = [f"x{n}" for n in range(1200)]
    for _ in range(2):  # computed, then remembered (and the memory cleared once past 500 users)
        assert [experiments.arm_of(u) for u in users] == [experiments.experiment.assign(u) for u in users]
    state = experiments._state
    assert 0 < len(state.buckets) <= 500
    for layout in ([(0, 100, "B"), (100, 10_000, "A")], [(0, 9_000, "B"), (9_000, 10_000, "A")]):
        state.layout = layout  # as the canary ramp replaces it
        assert [experiments.arm_of(u) for u in users] == [experiments.experiment.assign(u, layout) for u in users]
    write(experiment_file(root), {**raw, "salt": "two"})
    wait_for(lambda: experiments.experiment.salt == "two", what="the new salt")
    assert [experiments.arm_of(u) for u in users] == [experiments.experiment.assign(u) for u in users]


def test_hot_reload_and_a_bad_file_refused_while_the_old_one_runs(serve, root, known_users, caplog):
    server, stub = serve(ab())
    user = known_users[0]
    assert recommend(stub, user).arm in ("A", "B")
    path = experiment_file(root)
    write(path, {"name": "only-c", "arms": [{"name": "C", "share": 1.0}]})
    wait_for(lambda: recommend(stub, user).arm == "C", what="the new experiment")
    assert metric(server, "recsys_experiment_config_loaded_total") == 2
    for bad in ("{not json", json.dumps({"name": "x", "arms": [{"name": "A", "share": 0.4}]}),
                json.dumps({"name": "x", "arms": [{"name": "A", "share": 1.0, "version": "no-such-version"}]})):
        refused = metric(server, "recsys_experiment_config_refused_total")
        path.write_text(bad)
        wait_for(lambda r=refused: metric(server, "recsys_experiment_config_refused_total") == r + 1,
                 what="the refusal")
        assert recommend(stub, user).arm == "C"  # still the old experiment
    assert any("experiment file refused" in r.getMessage() and "still running: only-c" in r.getMessage()
               for r in caplog.records)
    path.unlink()
    wait_for(lambda: recommend(stub, user).arm == "", what="the experiment to stop")


def test_a_version_that_would_not_fit_the_memory_budget_is_refused(serve, root, tiny_version, caplog):
    copy_version(tiny_version, root, "tiny-b")
    server, stub = serve({"name": "big", "arms": [{"name": "A", "share": 0.5},
                                                  {"name": "B", "share": 0.5, "version": "tiny-b"}]},
                         memory_budget_mb=0.001)
    assert server.servicer.experiments.experiment is None
    assert metric(server, "recsys_experiment_config_refused_total") == 1
    message = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
    assert "tiny-b" in message and "--experiment-memory-budget-mb" in message
    assert recommend(stub, "anyone").arm == ""


def test_an_arm_serves_another_version_loaded_beside_the_served_one(serve, root, tiny_version, known_users):
    copy_version(tiny_version, root, "tiny-b")
    server, stub = serve({"name": "v", "arms": [{"name": "A", "share": 0.5},
                                                {"name": "B", "share": 0.5, "version": "tiny-b"}]})
    experiment = server.servicer.experiments.experiment
    assert experiment is not None
    for user in known_users[:12]:
        response = recommend(stub, user)
        assert response.model_version == ("tiny-b" if experiment.assign(user) == "B" else tiny_version.name)
    assert metric(server, "recsys_experiment_memory_mb") > 0


def test_force_arm_only_when_the_server_allows_it(serve, root, known_users):
    user = known_users[0]
    server, stub = serve(ab(allow_force=True))
    with pytest.raises(grpc.RpcError) as e:
        recommend(stub, user, force_arm="B")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--experiment-allow-force" in e.value.details()
    _, stub2 = serve(None, allow_force=True)
    assert recommend(stub2, user, force_arm="B").arm == "B"
    assert recommend(stub2, user, force_arm="A").arm == "A"
    with pytest.raises(grpc.RpcError) as e:
        recommend(stub2, user, force_arm="Z")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'Z' is not an arm" in e.value.details()
    write(experiment_file(root), ab())  # the experiment itself does not allow it
    wait_for(lambda: not server.servicer.experiments.experiment.allow_force, what="reload")
    with pytest.raises(grpc.RpcError):
        recommend(stub, user, force_arm="B")


def test_impressions_and_events_carry_the_arm_into_the_export_and_report(serve, redis_url, known_users, tmp_path):
    from workflows.experiments import ExperimentReportConfig, ExperimentTarget, ReportSpec, run_report

    server, stub = serve(ab(), redis_url)
    experiment = server.servicer.experiments.experiment
    events = []
    for n, user in enumerate(known_users[:16]):
        response = recommend(stub, user)
        item = response.items[0].item_id
        events.append(pb.Event(event_id=f"e{n}", user_id=user, item_id=item, type=pb.RATING, value=4.0,
                               timestamp=T0 + n, request_id=response.request_id, position=1))
    events.append(pb.Event(event_id="loose", user_id=known_users[0], item_id="x", type=pb.ENGAGEMENT, timestamp=T0))
    stub.LogEvents(pb.LogEventsRequest(events=events), timeout=10)
    assert server.servicer.served.flush()
    out = tmp_path / "events"
    client = redis.Redis.from_url(redis_url)
    export_events(ExportConfig(redis_url=redis_url, output=str(out)), client)
    client.close()
    from workflows.experiments import read_events

    frame = read_events(out)
    served = frame[frame["type"] == "impression"]
    assert len(served) == 16 * K
    assert all(arm == experiment.assign(user) for user, arm in zip(served["user_id"], served["arm"]))
    engaged = frame[frame["type"].isin(["rating", "engagement"])]
    assert all(arm == experiment.assign(user) for user, arm in zip(engaged["user_id"], engaged["arm"]))
    result = run_report(ExperimentReportConfig(ExperimentTarget(file=str(server.servicer.experiments.path)),
                                               ReportSpec(events=str(out), output=str(tmp_path / "report"))))
    arms = result["arms"]
    assert sum(a["clicks_at_k"] for a in arms.values()) == 16
    assert sum(a["impressions_at_k"] for a in arms.values()) == 16 * K
    assert arms["A"]["mean_rating"] == pytest.approx(4.0)
    for name in ("report.md", "report.json", "report.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


class _Broken:
    """A version that fails (or is slow): injected by the loader, delegating everything else."""

    def __init__(self, inner, name: str, fail: bool = True, delay_s: float = 0.0) -> None:
        self._inner, self.model_version, self._fail, self._delay = inner, name, fail, delay_s

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    def candidates(self, *args, **kwargs):
        time.sleep(self._delay)
        if self._fail:
            raise RuntimeError("injected failure of the canary version")
        return self._inner.candidates(*args, **kwargs)


def test_shadow_scores_off_the_path_and_never_changes_a_response(serve, start, root, tiny_version, pipeline,
                                                                  known_users):
    users = known_users[:15] + ["unknown-1", "unknown-2"]
    _, plain = start()
    expected = [list(recommend(plain, u).items) for u in users]
    copy_version(tiny_version, root, "tiny-shadow")
    server, stub = serve({"name": "s", "arms": [{"name": "A", "share": 1.0}],
                          "shadow": {"version": "tiny-shadow", "sample": 1.0, "k": 5}},
                         loader=lambda d: _Broken(pipeline, d.name, fail=False))
    got = [list(recommend(stub, u).items) for u in users]
    assert got == expected
    shadow = server.servicer.experiments.shadow
    assert shadow.drain()
    assert metric(server, "recsys_shadow_requests_total", {"result": "scored"}) == len(users)
    # The same weights on an identical model: full overlap.
    assert metric(server, "recsys_shadow_jaccard_sum") == pytest.approx(len(users))
    assert metric(server, "recsys_shadow_rbo_sum") == pytest.approx(len(users))
    # A failing shadow: errors counted, responses unchanged.
    shadow.configure(_Broken(pipeline, "tiny-shadow", fail=True), 1.0, 5)
    assert [list(recommend(stub, u).items) for u in users] == expected
    assert shadow.drain()
    assert metric(server, "recsys_shadow_requests_total", {"result": "error"}) == len(known_users[:15])


def test_a_failing_canary_is_rolled_back(serve, root, pipeline, known_users, caplog):
    (root / "tiny-canary").symlink_to(root / "tiny", target_is_directory=True)
    raw = {"name": "c", "control": "A", "arms": [{"name": "A", "share": 1.0}, {"name": "C", "share": 0.0,
                                                                              "version": "tiny-canary"}],
           "canary": {"arm": "C", "start": time.time(), "schedule": [[0, 0.5]], "window_s": 30, "min_requests": 5,
                      "max_error_rate": 0.1}}
    server, stub = serve(raw, loader=lambda d: _Broken(pipeline, d.name, fail=True))
    experiments = server.servicer.experiments
    failed_outside, failed_inside = 0, 0
    for user in known_users[:80]:
        arm = experiments.arm_of(user)
        try:
            recommend(stub, user)
        except grpc.RpcError:
            if arm == "C":
                failed_inside += 1
            else:
                failed_outside += 1
        if experiments.experiment.canary.rolled_back:
            break
    wait_for(lambda: experiments.experiment.canary.rolled_back, what="the rollback")
    assert failed_outside == 0 and failed_inside >= 5
    assert "error_rate" in experiments.experiment.canary.rolled_back["reason"]
    assert metric(server, "recsys_experiment_canary_rollbacks_total", {"arm": "C", "reason": "error_rate"}) == 1
    assert metric(server, "recsys_experiment_share", {"arm": "C"}) == 0
    assert any(getattr(r, "event", "") == "canary_rolled_back" for r in caplog.records)
    # the rollback is published in memory first, then written to the file under the same lock
    with experiments._lock:
        saved = json.loads(experiment_file(root).read_text())
    assert saved["canary"]["rolled_back"]["reason"].startswith("error_rate")
    for user in known_users[:30]:  # everyone is back on control
        assert recommend(stub, user).arm == "A"
