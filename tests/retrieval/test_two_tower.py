"""Two-tower model: learns planted structure, exports faithfully, loads safely, answers for unknown users."""
import shutil
import types

import numpy as np
import pandas as pd
import pytest

from core.errors import ArtifactError, ArtifactMismatchError, InvalidRequestError
from core.layout import FEATURES_DIR, INDEX_DIR
from core.registry import finalize_version, start_version
from evaluation import RandomRecommender, build_eval_data, evaluate_models, retrieval_validator, top_k_excluding
from evaluation.two_tower import TwoTowerEvalConfig, TwoTowerRecommender
from features import (
    SplitConfig,
    SyntheticConfig,
    fit_feature_store,
    generate_synthetic,
    split_interactions,
    split_multi,
    tf_layers,
    tokenize_text,
)
from retrieval import (
    IndexConfig,
    ItemIndex,
    TwoTowerConfig,
    UserTower,
    export_model,
    load_items,
    load_retriever,
    train_two_tower,
)
from retrieval.train import causal_histories, engaged_pairs, last_items
from retrieval.two_tower import embed_in_batches

# No history here, so the raw `user_features` dict is the tower's whole input; the history
# input has its own test below.
TINY = TwoTowerConfig(embedding_dim=16, id_dim=16, feature_dim=8, epochs=6, patience=2, batch_size=256,
                      learning_rate=0.01, history_length=0, progress=False, seed=1)
VALIDATOR = retrieval_validator()  # what `recsys train` selects epochs with


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on synthetic data with planted taste clusters, exported as a version."""
    dataset = generate_synthetic(SyntheticConfig(num_users=600, num_items=300, num_interactions=30_000, seed=7))
    split = split_interactions(dataset.interactions, SplitConfig())
    features = fit_feature_store(dataset, split.train)
    result = train_two_tower(features, split, TINY, VALIDATOR)
    root = tmp_path_factory.mktemp("artifacts")
    version = start_version(root, "v1")
    features.save(version / FEATURES_DIR)
    export_model(result.model, features, version)
    item_ids, embeddings = load_items(version)
    users = sorted(split.train["user_id"].unique())
    queries = UserTower.load(version).embed_ids(features, users)
    ItemIndex.build(item_ids, embeddings, IndexConfig(), queries).save(version / INDEX_DIR)
    finalize_version(version, {"retrieval": result.summary()})
    return types.SimpleNamespace(dataset=dataset, split=split, features=features, result=result, version=version,
                                 root=root)


def test_planted_structure_is_retrieved_far_better_than_random(trained):
    data = build_eval_data(trained.dataset, trained.split, trained.features)
    table = evaluate_models(data, [TwoTowerRecommender(TwoTowerEvalConfig(str(trained.version))),
                                   RandomRecommender()], ks=(10, 50))
    tt, rnd = table.loc["two_tower"], table.loc["random"]
    assert tt["ndcg@10"] > 3 * rnd["ndcg@10"]
    assert tt["recall@50"] > 1.5 * rnd["recall@50"]


def test_training_selects_epochs_on_validation_and_refits_on_train(trained):
    r = trained.result
    assert 1 <= r.best_epoch <= r.epochs_run <= TINY.epochs
    assert r.trained_on == "train" and r.final_epochs == r.best_epoch
    assert [h["epoch"] for h in r.history] == list(range(1, r.epochs_run + 1))
    best = max(h["val_recall_at_100"] for h in r.history)
    assert r.validation["recall_at_100"] == pytest.approx(best, abs=1e-6)


def test_evaluation_through_flat_index_equals_brute_force_ranking(trained):
    data = build_eval_data(trained.dataset, trained.split, trained.features)
    model = TwoTowerRecommender(TwoTowerEvalConfig(str(trained.version)))
    model.fit(data)
    rows = data.test_users[:100]
    got = model.recommend(rows, 20)
    users = embed_in_batches(trained.result.model.user_tower, trained.features.user_features(data.user_ids[rows]))
    items = embed_in_batches(trained.result.model.item_tower, trained.features.item_features(data.item_ids))
    expected = top_k_excluding(users @ items.T, data.train[rows], 20)
    assert (got == expected).mean() > 0.99  # float32 near-ties may swap neighbours
    assert not any(set(got[i]) & set(data.train[r].indices) for i, r in enumerate(rows))


def test_evaluator_scores_blocks_of_users_and_samples_users_on_request(trained):
    from retrieval import RetrievalEvaluator
    from retrieval.train import ScoreRows

    split, model = trained.split, trained.result.model
    full = RetrievalEvaluator(trained.features, split.fit, split.validation, 0, VALIDATOR)
    scores = full.scores(model)
    assert isinstance(scores, ScoreRows) and scores.shape == (len(full.user_ids), len(trained.features.catalogue))
    dense = np.asarray(scores)
    np.testing.assert_array_equal(scores[5:17], dense[5:17])
    assert full.evaluate(model) == VALIDATOR(dense, full.exclude, full.relevance)
    # A seeded sample of the held-out users: the same metrics as the full matrix's rows of those users.
    sampled = RetrievalEvaluator(trained.features, split.fit, split.validation, 0, VALIDATOR, max_users=40, seed=3)
    assert len(sampled.user_ids) == 40 and sampled.held_out_users == len(full.user_ids)
    rows = pd.Index(full.user_ids).get_indexer(sampled.user_ids)
    assert (rows >= 0).all() and list(sampled.user_ids) == sorted(sampled.user_ids)
    assert sampled.evaluate(model) == VALIDATOR(dense[rows], full.exclude[rows], full.relevance[rows])
    again = RetrievalEvaluator(trained.features, split.fit, split.validation, 0, VALIDATOR, max_users=40, seed=3)
    assert list(again.user_ids) == list(sampled.user_ids)
    assert len(RetrievalEvaluator(trained.features, split.fit, split.validation, 0, VALIDATOR,
                                  max_users=10**6).user_ids) == len(full.user_ids)


def test_export_load_round_trips_to_identical_embeddings(trained):
    model, features = trained.result.model, trained.features
    users = ["u0", "u5", "u42", "u599"]
    tower = UserTower.load(trained.version)
    np.testing.assert_allclose(tower.embed_ids(features, users),
                               embed_in_batches(model.user_tower, features.user_features(users)), atol=1e-6)
    item_ids, embeddings = load_items(trained.version)
    assert list(item_ids) == list(features.catalogue) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, embed_in_batches(model.item_tower, features.item_features(item_ids)),
                               atol=1e-6)
    assert tower.dim == embeddings.shape[1] == TINY.embedding_dim
    assert set(tower.input_names) == set(features.user_features([]))


def test_saved_model_answers_for_unknown_users_and_feature_values(trained):
    tower = UserTower.load(trained.version)
    raw = trained.features.user_features(["never-seen", "u1"])
    assert raw["segment"][0] == ""  # unknown user: empty categorical, mean numeric
    out = tower.embed(raw)
    assert out.shape == (2, TINY.embedding_dim) and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Two unknown ids with the same features share the OOV bucket, so the same embedding.
    other = tower.embed({**raw, "user_id": np.array(["also-new", "u1"], dtype=object),
                         "segment": np.array(["no-such-segment", "s1"], dtype=object)})
    assert np.isfinite(other).all()
    same = tower.embed(trained.features.user_features(["also-new"]))
    np.testing.assert_allclose(same[0], out[0], atol=1e-6)


def test_embed_rejects_missing_or_ragged_features(trained):
    tower = UserTower.load(trained.version)
    raw = trained.features.user_features(["u1", "u2"])
    with pytest.raises(InvalidRequestError, match="missing \\['segment'\\]"):
        tower.embed({k: v for k, v in raw.items() if k != "segment"})
    with pytest.raises(InvalidRequestError, match="same length"):
        tower.embed({**raw, "user_id": np.array(["u1"], dtype=object)})
    assert tower.embed({k: v[:0] for k, v in raw.items()}).shape == (0, TINY.embedding_dim)


def test_tf_tokenizers_match_the_feature_tokenizers():
    titles = ["Toy Story (1995)", "Léon: The Professional", "  Se7en  ", "", "Star Wars: Episode IV - A New Hope"]
    got = [[t.decode() for t in row] for row in tf_layers.tokenize(np.array(titles, dtype=object).astype(str)).to_list()]
    assert got == [tokenize_text(t) for t in titles]
    genres = ["Action|Comedy", "", "Drama", "a||b|"]
    got = [[t.decode() for t in row] for row in tf_layers.split_multi(np.array(genres)).to_list()]
    assert got == [split_multi(g) for g in genres]


def test_load_retriever_returns_matching_parts(trained):
    features, tower, index = load_retriever(trained.version)
    assert index.dim == tower.dim and len(index) == len(features.catalogue)
    ids, scores = index.search(tower.embed_ids(features, ["u3"]), 5, exclude=[features.seen_items(["u3"])[0]])
    assert (ids != "").all() and np.isfinite(scores).all()


def _copy(trained, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(trained.version, target)
    return target


def test_tampered_or_missing_artifacts_give_clear_errors(trained, tmp_path):
    tampered = _copy(trained, tmp_path, "tampered")
    with open(tampered / "retrieval" / "items.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactMismatchError, match="changed \\['retrieval/items.npz'\\]"):
        load_retriever(tampered)

    missing = _copy(trained, tmp_path, "missing")
    shutil.rmtree(missing / "retrieval" / "user_tower")
    with pytest.raises(ArtifactMismatchError, match="missing \\['retrieval/user_tower"):
        load_retriever(missing)
    with pytest.raises(ArtifactError, match="user tower SavedModel not found"):
        load_retriever(missing, verify=False)

    corrupt = _copy(trained, tmp_path, "corrupt")
    (corrupt / "retrieval" / "user_tower" / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="cannot load the user tower SavedModel"):
        UserTower.load(corrupt)

    no_manifest = _copy(trained, tmp_path, "no_manifest")
    (no_manifest / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json not found"):
        load_retriever(no_manifest)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_retriever(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="items.npz not found"):
        load_items(tmp_path / "nowhere")


def test_index_built_from_another_tower_is_refused(trained, tmp_path):
    other = _copy(trained, tmp_path, "other_dim")
    shutil.rmtree(other / INDEX_DIR)
    ids = trained.features.catalogue
    ItemIndex.build(ids, np.random.default_rng(0).normal(size=(len(ids), 8))).save(other / INDEX_DIR)
    finalize_version(other, {})
    with pytest.raises(ArtifactMismatchError, match="dimension 8 but the user tower outputs 16"):
        load_retriever(other)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="--temperature must be positive"):
        TwoTowerConfig(temperature=0)
    with pytest.raises(ValueError, match="--batch-size must be positive"):
        TwoTowerConfig(batch_size=0)


def test_logq_correction_restores_popular_items_that_in_batch_negatives_push_down(trained):
    """The switch is real: in-batch negatives over-sample popular items, so without logQ
    the model retrieves markedly less popular items than with it."""
    split, features = trained.split, trained.features
    short = dict(epochs=3, refit=False)
    pops = {}
    for logq in (True, False):
        model = train_two_tower(features, split, TwoTowerConfig(**{**TINY.__dict__, **short, "logq": logq}),
                                VALIDATOR).model
        users = embed_in_batches(model.user_tower, features.user_features(sorted(split.train["user_id"].unique())))
        items = embed_in_batches(model.item_tower, features.item_features(features.catalogue))
        top = np.argsort(-(users @ items.T), axis=1)[:, :10]
        pops[logq] = features.popularity(np.asarray(features.catalogue)[top.ravel()]).mean()
    assert pops[True] > 2 * pops[False]


def test_causal_histories_hold_only_earlier_items_and_serving_sees_the_last_train_items():
    df = pd.DataFrame({"user_id": ["a", "b", "a", "a", "b"], "item_id": ["1", "2", "3", "4", "5"],
                       "timestamp": [1, 1, 3, 2, 0], "engaged": [1, 1, 1, 1, 0]})
    pairs = engaged_pairs(df)  # time order; b's item 5 was not engaged
    assert list(pairs["item_id"]) == ["1", "2", "4", "3"]
    assert list(causal_histories(pairs, 2)) == ["", "", "1", "1|4"]
    assert list(last_items(df, ["a", "b", "nobody"], 2)) == ["4|3", "2", ""]


def test_history_input_is_exported_and_filled_by_user_inputs(small_synthetic, tmp_path):
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    features = fit_feature_store(small_synthetic, split.train)
    config = TwoTowerConfig(**{**TINY.__dict__, "epochs": 1, "refit": False, "history_length": 3})
    model = train_two_tower(features, split, config, VALIDATOR).model
    export_model(model, features, tmp_path)
    tower = UserTower.load(tmp_path)
    assert tower.history_length == 3 and "history" in tower.input_names
    users = ["u1", "u2", "new-user"]
    inputs = tower.user_inputs(features, users)
    assert list(inputs["history"]) == ["|".join(h) for h in features.history(users, 3)]
    assert inputs["history"][2] == ""
    np.testing.assert_allclose(tower.embed(inputs), embed_in_batches(model.user_tower, inputs), atol=1e-6)
    with pytest.raises(InvalidRequestError, match="missing \\['history'\\].*user_inputs"):
        tower.embed(features.user_features(users))


def test_training_is_reproducible_with_a_seed(small_synthetic):
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    features = fit_feature_store(small_synthetic, split.train)
    config = TwoTowerConfig(**{**TINY.__dict__, "epochs": 1})
    runs = [train_two_tower(features, split, config, VALIDATOR) for _ in range(2)]
    items = [embed_in_batches(r.model.item_tower, features.item_features(features.catalogue)) for r in runs]
    np.testing.assert_array_equal(items[0], items[1])
    assert runs[0].validation == runs[1].validation


def test_train_two_tower_needs_a_validator_when_the_split_has_validation_rows(small_synthetic):
    split = split_interactions(small_synthetic.interactions, SplitConfig())
    features = fit_feature_store(small_synthetic, split.train)
    with pytest.raises(ValueError, match="retrieval_validator"):
        train_two_tower(features, split, TINY)


def test_user_id_dropout_shows_a_share_of_training_users_as_the_oov_id_and_never_at_inference(small_synthetic):
    from core.tf_env import tf
    from retrieval.two_tower import Tower

    split = split_interactions(small_synthetic.interactions, SplitConfig())
    features = fit_feature_store(small_synthetic, split.train)
    tf.random.set_seed(0)
    tower = Tower(features, "user", TwoTowerConfig(**{**TINY.__dict__, "user_id_dropout": 0.5}))
    users = sorted(features.seen)[:400]
    raw = {k: tf.constant(v.astype(str) if v.dtype == object else v.astype("float32"))
           for k, v in features.user_features(users).items()}
    as_oov = {**raw, "user_id": tf.constant(["never-seen"] * len(users))}
    oov = tower(as_oov, training=False).numpy()
    inference = tower(raw, training=False).numpy()
    dropped = np.all(np.isclose(tower(raw, training=True).numpy(), oov), axis=1)
    assert not np.all(np.isclose(inference, oov), axis=1).any()
    assert 0.35 < dropped.mean() < 0.65
    with pytest.raises(ValueError, match="--user-id-dropout must be in"):
        TwoTowerConfig(user_id_dropout=1.0)
