"""Live drift monitoring (serving/monitor.py): window quantities, ratios and PSI/KS against the version's reference."""
from __future__ import annotations

import copy
import math

import pytest
from prometheus_client import CollectorRegistry

from pipeline.profile import INPUT, PREDICTION, load_reference
from protos.recsys.v1 import recommender_pb2 as pb
from serving.monitor import LiveMonitor


def answer(model, user: str, k: int = 10, exclude=()) -> tuple[pb.RecommendResponse, str]:
    """What the servicer answers (the same blend path), without gRPC."""
    if not model.is_known_user(user):
        ids, scores = model.popular_items(k)
        return pb.RecommendResponse(model_version=model.model_version, items=[
            pb.RecommendedItem(item_id=i, score=s) for i, s in zip(ids, scores)]), "fallback"
    cands = model.candidates([user])[0]
    ids, scores, order = model.blend_top_k(cands, model.default_weights, k, exclude)
    return pb.RecommendResponse(model_version=model.model_version, items=[
        pb.RecommendedItem(item_id=i, score=s, engagement=cands.engagement[j], quality=cands.quality[j])
        for i, s, j in zip(ids, scores, order)]), "online"


def gauges(monitor: LiveMonitor) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in monitor.compute() for s in f.samples}


def psis(values: dict, group: str) -> dict[str, float]:
    return {dict(k[1])["quantity"]: v for k, v in values.items()
            if k[0] == "recsys_drift_psi" and dict(k[1])["group"] == group}


def test_the_tiny_version_has_a_reference_profile(tiny_version):
    reference = load_reference(tiny_version)
    assert set(reference.groups[INPUT]) == {"segment", "activity", "history_length"}
    assert set(reference.groups[PREDICTION]) == {"engagement", "quality", "score", "item_popularity"}
    assert reference.meta["known_requests"] > 1000 and reference.meta["k"] == 10


def test_unshifted_traffic_stays_stable_and_a_shifted_population_drifts(pipeline, populations):
    unshifted, shifted = populations
    monitor = LiveMonitor(CollectorRegistry(), window=len(unshifted), min_samples=100)
    monitor.set_model(pipeline)
    for u in unshifted:
        monitor.record(u, 10, *answer(pipeline, u))
    stable = gauges(monitor)
    assert stable["recsys_drift_reference_loaded", (("version", "tiny"),)] == 1
    assert max(psis(stable, INPUT).values()) < 0.1, psis(stable, INPUT)
    assert max(psis(stable, PREDICTION).values()) < 0.1, psis(stable, PREDICTION)
    for u in shifted:
        monitor.record(u, 10, *answer(pipeline, u))
    drifted = gauges(monitor)
    assert psis(drifted, INPUT)["segment"] > 1.0
    ks = drifted["recsys_drift_ks", (("group", "input"), ("quantity", "activity"))]
    assert 0 <= ks <= 1


def test_window_ratios_count_unknown_fallback_short_and_empty_answers(pipeline, populations):
    users = populations[0][:4]
    monitor = LiveMonitor(CollectorRegistry(), window=100, min_samples=1)
    monitor.set_model(pipeline)
    for u in users:  # 4 known, full answers, cache-like sources
        response, _ = answer(pipeline, u, 5)
        monitor.record(u, 5, response, "cache")
    monitor.record("nobody-1", 5, *answer(pipeline, "nobody-1", 5))          # unknown → fallback
    monitor.record(users[0], 80, *answer(pipeline, users[0], 80))            # 80 asked, < 50 candidates: short
    everything = set(pipeline.candidates([users[1]])[0].item_ids)
    monitor.record(users[1], 5, *answer(pipeline, users[1], 5, everything))   # all excluded: empty (and short)
    g = gauges(monitor)
    assert g["recsys_window_requests", ()] == 7
    assert g["recsys_window_unknown_user_ratio", ()] == pytest.approx(1 / 7)
    assert g["recsys_window_fallback_ratio", ()] == pytest.approx(1 / 7)
    assert g["recsys_window_short_result_ratio", ()] == pytest.approx(2 / 7)
    assert g["recsys_window_empty_result_ratio", ()] == pytest.approx(1 / 7)
    assert g["recsys_window_cache_hit_ratio", ()] == pytest.approx(4 / 6)  # the fallback looks nothing up


def test_too_few_samples_give_nan_not_an_alert(pipeline, populations):
    monitor = LiveMonitor(CollectorRegistry(), min_samples=50)
    monitor.set_model(pipeline)
    assert all(math.isnan(v) for v in psis(gauges(monitor), INPUT).values())  # empty window
    for u in populations[1][:49]:
        monitor.record(u, 10, *answer(pipeline, u))
    assert all(math.isnan(v) for v in psis(gauges(monitor), INPUT).values())
    monitor.record(populations[1][49], 10, *answer(pipeline, populations[1][49]))
    assert psis(gauges(monitor), INPUT)["segment"] > 1.0


def test_old_answers_and_other_versions_leave_the_window(pipeline, populations):
    now = [0.0]
    monitor = LiveMonitor(CollectorRegistry(), max_age_s=60, min_samples=1, clock=lambda: now[0])
    monitor.set_model(pipeline)
    for u in populations[0][:10]:
        monitor.record(u, 10, *answer(pipeline, u))
    assert gauges(monitor)["recsys_window_requests", ()] == 10
    now[0] = 61.0
    assert gauges(monitor)["recsys_window_requests", ()] == 0
    monitor.record(populations[0][0], 10, *answer(pipeline, populations[0][0]))
    other = copy.copy(pipeline)
    other.model_version = "next"
    monitor.set_model(other)  # a swap: answers stamped with the old version no longer count
    assert gauges(monitor)["recsys_window_requests", ()] == 0


def test_a_version_without_a_reference_still_reports_the_window(pipeline, populations):
    """Versions trained before profiles existed serve as before; monitoring says "no reference"."""
    old = copy.copy(pipeline)
    old.version_dir = None
    monitor = LiveMonitor(CollectorRegistry(), min_samples=1)
    monitor.set_model(old)
    for u in populations[1][:20]:
        monitor.record(u, 10, *answer(old, u))
    g = gauges(monitor)
    assert g["recsys_drift_reference_loaded", (("version", "tiny"),)] == 0
    assert psis(g, INPUT) == {} and g["recsys_window_requests", ()] == 20


@pytest.mark.integration
def test_the_server_records_answers_and_serves_the_gauges(start, pipeline, populations):
    server, stub = start(monitor_min_samples=20)
    for u in populations[1][:30] + ["nobody-2"]:
        stub.Recommend(pb.RecommendRequest(user_id=u, num_results=10), timeout=30)
    assert server.metrics.value("recsys_window_requests") == 31
    assert server.metrics.value("recsys_window_fallback_ratio") == pytest.approx(1 / 31)
    assert server.metrics.value("recsys_drift_psi", {"group": "input", "quantity": "segment"}) > 1.0
    off, stub_off = start(monitor=False)
    stub_off.Recommend(pb.RecommendRequest(user_id=populations[1][0], num_results=10), timeout=30)
    assert off.servicer.monitor is None and off.metrics.value("recsys_window_requests") == 0


@pytest.mark.integration
def test_a_version_trained_before_profiles_loads_serves_and_reports_no_reference(start, tiny_version, tmp_path,
                                                                                 populations):
    import shutil

    from core import registry
    from tests.serving.versions_util import copy_version

    old = copy_version(tiny_version, tmp_path, "v-old")
    shutil.rmtree(old / "monitoring")
    manifest = {k: v for k, v in registry.read_manifest(old).items()
                if k not in ("checksums", "version", "created", "git_sha", "monitoring")}
    registry.finalize_version(old, manifest)  # sealed as training sealed versions before issue 16
    server, stub = start()
    server.load(old)  # checksums verified, consistency checked, warmed: the missing profile is not an error
    response = stub.Recommend(pb.RecommendRequest(user_id=populations[0][0], num_results=10), timeout=30)
    assert response.model_version == "v-old" and len(response.items) == 10
    assert server.metrics.value("recsys_drift_reference_loaded", {"version": "v-old"}) == 0
    assert server.metrics.value("recsys_window_requests") == 1
    assert [s for f in server.metrics.registry.collect() for s in f.samples if s.name == "recsys_drift_psi"] == []
