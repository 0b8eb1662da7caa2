"""FAISS ItemIndex: exact search equals numpy, exclusions hold, artifacts round-trip or fail clearly."""
import json

import numpy as np
import pytest

from core.errors import ArtifactError, ArtifactMismatchError, UnknownItemError
from retrieval import IndexConfig, ItemIndex


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around a few centres: structure ANN indexes can exploit (unlike isotropic noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalogue():
    vectors = clustered(2000, 16, 20, seed=1)
    ids = np.array([f"item{i}" for i in range(len(vectors))])
    queries = clustered(50, 16, 20, seed=2)
    return ids, vectors, queries


def brute_force(vectors, queries, n, exclude_rows=None):
    scores = queries @ vectors.T
    if exclude_rows is not None:
        for q, rows in enumerate(exclude_rows):
            scores[q, list(rows)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return order, np.take_along_axis(scores, order, axis=1)


def test_flat_search_equals_brute_force_numpy(catalogue):
    ids, vectors, queries = catalogue
    index = ItemIndex.build(ids, vectors, IndexConfig())
    got_ids, got_scores = index.search(queries, 25)
    rows, scores = brute_force(vectors, queries, 25)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-5)
    # Compare as sets per rank position up to float ties: the exact scores must match and the
    # ids must be the ones numpy ranks there (no ties occur in continuous random vectors).
    assert (got_ids == ids[rows]).mean() > 0.999
    assert index.info["recall_at_n"] == pytest.approx(1.0)


def test_flat_search_with_exclusions_equals_brute_force_without_those_items(catalogue):
    ids, vectors, queries = catalogue
    index = ItemIndex.build(ids, vectors)
    rng = np.random.default_rng(0)
    # Exclude each query's true top items plus random ones, so the exclusions really bite.
    top, _ = brute_force(vectors, queries, 30)
    exclude_rows = [set(top[q, : rng.integers(0, 30)]) | set(rng.choice(len(ids), 20).tolist())
                    for q in range(len(queries))]
    exclude = [{ids[r] for r in rows} | {"not-an-item"} for rows in exclude_rows]
    got_ids, got_scores = index.search(queries, 10, exclude=exclude)
    rows, scores = brute_force(vectors, queries, 10, exclude_rows)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-5)
    assert (got_ids == ids[rows]).mean() > 0.999
    for q in range(len(queries)):
        assert not set(got_ids[q]) & exclude[q]


def test_excluded_items_never_come_back_even_when_little_is_left():
    vectors = clustered(30, 8, 3, seed=5)
    ids = np.array([str(i) for i in range(30)])
    index = ItemIndex.build(ids, vectors)
    exclude = [set(ids[:25]), set(ids), set()]
    got_ids, got_scores = index.search(clustered(3, 8, 3, seed=6), 10, exclude=exclude)
    assert set(got_ids[0][got_ids[0] != ""]) == set(ids[25:])          # only 5 items qualify
    assert list(got_ids[0][5:]) == [""] * 5 and np.isneginf(got_scores[0, 5:]).all()
    assert (got_ids[1] == "").all() and np.isneginf(got_scores[1]).all()  # everything excluded
    assert (got_ids[2] != "").all()
    assert (np.diff(got_scores[2]) <= 1e-6).all()                     # best first


def test_ivf_and_hnsw_record_recall_against_exact(catalogue):
    ids, vectors, queries = catalogue
    ivf = ItemIndex.build(ids, vectors, IndexConfig(factory="IVF16,Flat", nprobe=4, recall_n=50), queries=queries)
    hnsw = ItemIndex.build(ids, vectors, IndexConfig(factory="HNSW16", ef_search=64, recall_n=50), queries=queries)
    for index in (ivf, hnsw):
        assert index.info["recall_n"] == 50 and index.info["recall_queries"] == len(queries)
        assert 0.8 <= index.info["recall_at_n"] <= 1.0
    # More probes can only find more of the exact neighbours.
    ivf_all = ItemIndex.build(ids, vectors, IndexConfig(factory="IVF16,Flat", nprobe=16, recall_n=50), queries=queries)
    assert ivf_all.info["recall_at_n"] == pytest.approx(1.0)


def test_save_load_round_trips_results(tmp_path, catalogue):
    ids, vectors, queries = catalogue
    index = ItemIndex.build(ids, vectors, IndexConfig(factory="IVF16,Flat", nprobe=3))
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path)
    assert loaded.config == index.config and loaded.dim == 16 and len(loaded) == len(ids)
    exclude = [{ids[0]}] * len(queries)
    a, sa = index.search(queries, 7, exclude)
    b, sb = loaded.search(queries, 7, exclude)
    assert (a == b).all()
    np.testing.assert_array_equal(sa, sb)


def test_l2_metric_scores_are_negated_distances(catalogue):
    ids, vectors, queries = catalogue
    index = ItemIndex.build(ids, vectors, IndexConfig(metric="l2"))
    got_ids, got_scores = index.search(queries[:3], 5)
    d = ((queries[:3, None, :] - vectors[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1)[:, :5]
    assert (got_ids == ids[order]).all()
    np.testing.assert_allclose(got_scores, -np.take_along_axis(d, order, axis=1), rtol=1e-4, atol=1e-4)


def test_similar_items_excludes_itself_and_rejects_unknown_ids(catalogue):
    ids, vectors, _ = catalogue
    index = ItemIndex.build(ids, vectors, IndexConfig(factory="IVF16,Flat", nprobe=16))
    np.testing.assert_allclose(index.embedding("item7"), vectors[7], atol=1e-6)
    similar, scores = index.similar_items("item7", 5)
    assert "item7" not in set(similar) and len(similar) == 5
    expected, _ = brute_force(vectors, vectors[7:8], 6, [{7}])
    assert list(similar) == list(ids[expected[0][:5]])
    with pytest.raises(UnknownItemError, match="nope"):
        index.similar_items("nope", 3)
    assert "item7" in index and "nope" not in index


@pytest.mark.parametrize("kwargs,message", [
    ({"factory": "NoSuchIndex"}, "--factory 'NoSuchIndex' is not a valid"),
    ({"factory": "IVF4096,Flat"}, "could not be trained"),
])
def test_bad_factory_strings_get_a_clear_error(catalogue, kwargs, message):
    ids, vectors, _ = catalogue
    with pytest.raises(ValueError, match=message):
        ItemIndex.build(ids[:100], vectors[:100], IndexConfig(**kwargs))


def test_bad_inputs_are_rejected(catalogue):
    ids, vectors, queries = catalogue
    with pytest.raises(ValueError, match="must match row for row"):
        ItemIndex.build(ids[:10], vectors)
    with pytest.raises(ValueError, match="NaN"):
        ItemIndex.build(ids[:2], np.array([[np.nan, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="duplicates"):
        ItemIndex.build(np.array(["a", "a"]), vectors[:2])
    index = ItemIndex.build(ids, vectors)
    with pytest.raises(ValueError, match="dimension 8, the index 16"):
        index.search(np.zeros((1, 8), np.float32), 5)
    with pytest.raises(ValueError, match="one set per query"):
        index.search(queries[:2], 5, exclude=[set()])
    with pytest.raises(ValueError, match="IndexConfig|--factory"):
        IndexConfig(factory=" ")


def test_missing_or_corrupted_index_files_give_a_clear_error(tmp_path, catalogue):
    ids, vectors, _ = catalogue
    ItemIndex.build(ids, vectors).save(tmp_path / "ok")
    with pytest.raises(ArtifactError, match="missing item_ids.npy"):
        (tmp_path / "ok" / "item_ids.npy").rename(tmp_path / "moved.npy")
        ItemIndex.load(tmp_path / "ok")
    ItemIndex.build(ids, vectors).save(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "index.faiss").write_bytes(b"definitely not a faiss index")
    with pytest.raises(ArtifactError, match="cannot load the FAISS index"):
        ItemIndex.load(tmp_path / "corrupt")
    ItemIndex.build(ids, vectors).save(tmp_path / "mismatch")
    np.save(tmp_path / "mismatch" / "item_ids.npy", ids[:10])
    with pytest.raises(ArtifactMismatchError, match="holds 2000 vectors but the id map has 10"):
        ItemIndex.load(tmp_path / "mismatch")
    ItemIndex.build(ids, vectors).save(tmp_path / "badjson")
    (tmp_path / "badjson" / "index.json").write_text(json.dumps({"config": {"no_such_field": 1}}))
    with pytest.raises(ArtifactError):
        ItemIndex.load(tmp_path / "badjson")
