"""Two-tower retrieval model (TFRS): a user tower and an item tower over raw features.

Both towers take the raw feature dicts of `FeatureStore.user_features` / `item_features`
(string ids, categorical strings, multi-valued "a|b" strings, free text, float numerics)
and do every lookup inside the graph, with vocabularies fit on train (index 0 = OOV), so
the exported SavedModel answers for ids and tokens it never saw.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from core.tf_env import keras, tf, tfrs
from features import MULTI_VALUE_SEP, FeatureStore
from features.tf_layers import BagEmbedding, l2_regularizer, split_multi, string_lookup, tokenize
from retrieval.config import TwoTowerConfig

HISTORY = "history"  # user tower input: the user's recent engaged item ids, oldest first, joined by "|"


class Tower(keras.Model):
    """One tower: embeds an id and its side features, concatenates, projects to d.

    Input: the raw dict of `FeatureStore.user_features(ids)` or `item_features(ids)`, each
    value [b] (plus "history" for a user tower with history_length > 0: see `history_strings`).
    Output: [b, embedding_dim] float32 (unit-norm when config.normalize).
    """

    def __init__(self, features: FeatureStore, kind: Literal["user", "item"], config: TwoTowerConfig,
                 **kwargs) -> None:
        super().__init__(name=f"{kind}_tower", **kwargs)
        spec = features.spec
        self.kind = kind
        self.id_name = f"{kind}_id"
        self.normalize = config.normalize
        vocabs = features.vocabularies
        self.id_lookup = string_lookup(vocabs[self.id_name])
        # Training only: this share of users are shown as the OOV id, so the OOV row is trained and the
        # tower learns to embed a user from history and side features alone — what an unknown user
        # with streamed events gets at serving time.
        self.id_dropout = config.user_id_dropout if kind == "user" else 0.0
        self._seed = config.seed
        self.id_embedding = keras.layers.Embedding(len(vocabs[self.id_name]), config.id_dim,
                                                   embeddings_regularizer=l2_regularizer(config.l2), name=f"{kind}_id_embedding")
        use = config.user_features if kind == "user" else config.item_features
        categorical = (spec.user_categorical if kind == "user" else spec.item_categorical) if use else ()
        numeric = (spec.user_numeric if kind == "user" else spec.item_numeric) if use else ()
        multi = spec.item_multi if (use and kind == "item") else ()
        text = spec.item_text if (use and kind == "item") else ()
        # A column whose train vocabulary is empty carries no signal; leave it out.
        self.categorical = {c: keras.Sequential([string_lookup(vocabs[c]), keras.layers.Embedding(
            len(vocabs[c]), config.feature_dim, embeddings_regularizer=l2_regularizer(config.l2))], name=f"{c}_embedding")
            for c in categorical if vocabs[c].tokens}
        self.multi = {c: BagEmbedding(vocabs[c], config.feature_dim, config.l2, name=f"{c}_bag")
                      for c in multi if vocabs[c].tokens}
        self.text = {c: BagEmbedding(vocabs[c], config.feature_dim, config.l2, name=f"{c}_words")
                     for c in text if vocabs[c].tokens}
        self.numeric = {c: features.numeric_stats.get(c, (0.0, 1.0)) for c in numeric}
        # Recent history: a bag of the user's last engaged items (its own item-id table).
        self._history_length = config.history_length if kind == "user" else 0
        self.history_bag = (BagEmbedding(vocabs["item_id"], config.id_dim, config.l2, name="history_bag")
                            if kind == "user" and config.history_length > 0 else None)
        self.hidden = [keras.layers.Dense(h, activation="relu") for h in config.hidden]
        self.projection = keras.layers.Dense(config.embedding_dim, name="projection")

    @property
    def history_length(self) -> int:
        return self._history_length

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The raw feature keys this tower reads."""
        history = (HISTORY,) if self.history_bag is not None else ()
        return (self.id_name, *self.categorical, *self.multi, *self.text, *self.numeric, *history)

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        ids = self.id_lookup(inputs[self.id_name])
        if training and self.id_dropout > 0:
            drop = tf.random.uniform(tf.shape(ids), seed=self._seed) < self.id_dropout
            ids = tf.where(drop, tf.zeros_like(ids), ids)
        parts = [self.id_embedding(ids)]
        for c, layer in self.categorical.items():
            parts.append(layer(inputs[c]))
        for c, layer in self.multi.items():
            parts.append(layer(split_multi(inputs[c])))
        for c, layer in self.text.items():
            parts.append(layer(tokenize(inputs[c])))
        for c, (mean, std) in self.numeric.items():
            x = (tf.cast(inputs[c], tf.float32) - mean) / (std or 1.0)
            parts.append(x[:, None])
        if self.history_bag is not None:
            parts.append(self.history_bag(split_multi(inputs[HISTORY])))
        x = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        for layer in self.hidden:
            x = layer(x)
        x = self.projection(x)
        return tf.math.l2_normalize(x, axis=1) if self.normalize else x


class TwoTowerModel(tfrs.Model):
    """User tower × item tower trained with in-batch softmax (tfrs.tasks.Retrieval).

    Each training example is one engaged (user, item) pair; the other items in the batch
    are its negatives, so popular items are over-sampled as negatives and pushed down.
    With logQ on, each candidate's logit is lowered by log p(item), the probability that
    it appears in a batch (its train frequency), which undoes that sampling bias (Yi et al.
    2019, "Sampling-bias-corrected neural modeling"); without it the model under-ranks
    popular items and loses to the popularity baseline on MovieLens.

    Batches are dicts {"user": user feature dict, "item": item feature dict,
    "log_q": [b] float32 log sampling probability of the item}.
    """

    def __init__(self, features: FeatureStore, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.user_tower = Tower(features, "user", config)
        self.item_tower = Tower(features, "item", config)
        self.task = tfrs.tasks.Retrieval(temperature=config.temperature, remove_accidental_hits=True)

    def compute_loss(self, inputs: dict, training: bool = False) -> tf.Tensor:
        users = self.user_tower(inputs["user"], training=training)
        items = self.item_tower(inputs["item"], training=training)
        # SamplingProbablityCorrection subtracts log(p); pass p = exp(log_q).
        q = tf.exp(inputs["log_q"]) if self.config.logq else None
        # Integer ids for accidental-hit removal: comparing [b, b] strings costs more than the step.
        ids = self.item_tower.id_lookup(inputs["item"]["item_id"])
        return self.task(users, items, candidate_sampling_probability=q, candidate_ids=ids, compute_metrics=False)


def embed_in_batches(tower: Tower, features: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Runs `tower` over a raw feature dict in batches; returns [n, d] float32."""
    n = len(next(iter(features.values())))
    out = []
    for start in range(0, n, batch_size):
        chunk = {k: tf.constant(_as_tensor_values(v[start:start + batch_size])) for k, v in features.items()
                 if k in tower.feature_names}
        out.append(tower(chunk, training=False).numpy())
    if not out:
        return np.zeros((0, tower.projection.units), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _as_tensor_values(values: np.ndarray) -> np.ndarray:
    """Object arrays of str → bytes-able str array TF accepts; numerics → float32."""
    if values.dtype == object or values.dtype.kind in "US":
        return values.astype(str)
    return values.astype(np.float32)


def history_strings(histories) -> np.ndarray:
    """[b] object array of "|"-joined item ids, the raw form of the "history" input."""
    return np.asarray([MULTI_VALUE_SEP.join(h) for h in histories], dtype=object)
