"""Warm start maps embedding rows by token across vocabularies: known ids keep their rows, new ids stay fresh."""
import numpy as np
import pytest

from core import layout
from core.errors import ArtifactError
from features import SyntheticConfig, fit_feature_store, generate_synthetic
from retrieval import TwoTowerConfig
from retrieval.train import build_model
from retrieval.warm import WarmStart, build, model_tables, save_tower_weights

CONFIG = TwoTowerConfig(embedding_dim=8, id_dim=8, feature_dim=4, history_length=5, epochs=1, progress=False)


@pytest.fixture(scope="module")
def two_stores():
    """An old store fit on the first half of the data and a new one on all of it (other row order, new ids)."""
    ds = generate_synthetic(SyntheticConfig(num_users=120, num_items=60, num_interactions=2500, seed=5))
    rows = ds.interactions.sort_values("timestamp", kind="stable")
    old = fit_feature_store(ds, rows.iloc[:150])
    new = fit_feature_store(ds, rows)
    return old, new


def test_known_ids_keep_their_rows_and_new_ids_stay_fresh(two_stores, tmp_path):
    old_store, new_store = two_stores
    old = build_model(old_store, CONFIG)
    build(old, old_store)
    save_tower_weights(old, tmp_path)
    old_store.save(layout.features_dir(tmp_path))
    new = build_model(new_store, CONFIG)
    build(new, new_store)
    fresh = {role: var.numpy().copy() for role, (var, _) in model_tables(new).items()}
    report = WarmStart(tmp_path)(new, new_store)

    for kind in ("user", "item"):
        old_vocab, new_vocab = old_store.vocabularies[f"{kind}_id"], new_store.vocabularies[f"{kind}_id"]
        assert old_vocab.tokens != new_vocab.tokens[: len(old_vocab.tokens)]  # rows really moved
        old_rows = old.user_tower.id_embedding.embeddings.numpy() if kind == "user" else \
            old.item_tower.id_embedding.embeddings.numpy()
        new_rows = new.user_tower.id_embedding.embeddings.numpy() if kind == "user" else \
            new.item_tower.id_embedding.embeddings.numpy()
        known = [t for t in new_vocab.tokens if t in set(old_vocab.tokens)]
        unseen = [t for t in new_vocab.tokens if t not in set(old_vocab.tokens)]
        assert known and unseen
        np.testing.assert_array_equal(new_rows[new_vocab.lookup(known)], old_rows[old_vocab.lookup(known)])
        np.testing.assert_array_equal(new_rows[new_vocab.lookup(unseen)], fresh[f"{kind}.id"][new_vocab.lookup(unseen)])
        np.testing.assert_array_equal(new_rows[0], old_rows[0])  # the OOV row
        table = report["tables"][f"{kind}.id"]
        assert table == {"rows": len(new_vocab), "carried": len(known) + 1, "fresh": len(unseen)}
    # the history bag reads the item vocabulary
    item_known = [t for t in new_store.vocabularies["item_id"].tokens if t in set(old_store.vocabularies["item_id"].tokens)]
    np.testing.assert_array_equal(
        new.user_tower.history_bag.embedding.embeddings.numpy()[new_store.vocabularies["item_id"].lookup(item_known)],
        old.user_tower.history_bag.embedding.embeddings.numpy()[old_store.vocabularies["item_id"].lookup(item_known)])
    # dense layers of the same shape are copied whole
    np.testing.assert_array_equal(new.user_tower.projection.kernel.numpy(), old.user_tower.projection.kernel.numpy())
    assert "item.projection.kernel" in report["dense_copied"] and report["fresh"] == []


def test_changed_width_stays_fresh_and_old_versions_are_refused(two_stores, tmp_path):
    old_store, new_store = two_stores
    old = build_model(old_store, CONFIG)
    build(old, old_store)
    save_tower_weights(old, tmp_path)
    old_store.save(layout.features_dir(tmp_path))
    import dataclasses
    new = build_model(new_store, dataclasses.replace(CONFIG, id_dim=12))
    report = WarmStart(tmp_path)(new, new_store)
    assert "user.id" in report["fresh"] and "item.id" in report["fresh"]
    with pytest.raises(ArtifactError, match="tower weights"):
        WarmStart(tmp_path / "nowhere")
