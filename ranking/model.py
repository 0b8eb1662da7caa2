"""Wide & deep multi-task ranker (Cheng et al. 2016) with an engagement and a quality head.

Input: one row per (user, item) pair, the raw features of `FeatureStore.user_features`
and `item_features` merged with the prefixes `u__` and `i__` (see `ranker_inputs`); every
lookup (vocabularies fit on train, index 0 = OOV; hashed crosses) runs inside the graph,
so the exported SavedModel takes raw strings and floats.

  wide:  Σ weights of hashed crossed categorical features (e.g. occupation × genre, user ×
         genre), one weight per head — memorisation of co-occurrences.
  deep:  embeddings of user/item ids, side features (bags averaged for multi-valued and
         text features) and the user's recent history (a bag of the item ids they engaged
         with in train, sharing the item id embedding), plus the element-wise products
         item·user and item·history → shared ReLU MLP bottom — generalisation.
  heads: engagement = σ(tower_e(bottom) + wide_e), quality = σ(tower_q(bottom) + wide_q);
         quality predicts the normalised rating (rating - 1) / 4 in [0, 1].
  fusion (a trained retriever given, unless config.retrieval_weight == 0): when not
         training, the engagement logit is z = logit_e + β · (s(u, i) - 1), s the
         retrieval model's score of the pair (a frozen copy of its user tower and item
         embeddings, see RetrievalAffinity; 1 = a perfect match of unit-norm towers) — the
         ranker's and the retriever's evidence multiplied as experts. Trained without it:
         on train rows the retriever's scores are in-sample (it was fit on those very
         engagements), so a learned weight would over-trust them; β is a non-trainable
         variable set after training (`set_serving`), chosen per training run on the
         validation carve (evaluation.selection; workflows.train).
  quality baseline (optional, `RatingBaseline`): the quality logit adds
         logit(clip(normalised μ + b_u + b_i, 0.01, 0.99)), the user+item bias rating
         baseline fit on train (frozen), so the quality head learns a residual on top of it;
         when serving the residual is scaled by γ ∈ [0, 1] (set_serving; chosen on validation
         RMSE, 0 = the bias baseline alone) — shrinkage that cannot do worse than the
         baseline on the data it was chosen on.
  stacking (optional, set_stacking): when not training, engagement = σ(w · x + c), a logistic
         regression over the heads' logits, s − 1 and StackInputs' features fit on the
         validation carve's served candidates (ranking.stacking) — replaces fusion and Platt.
  calibration: when not training, engagement = σ(a · z + b) (Platt, a > 0: the order is
         unchanged), (a, b) fit on the validation carve's served candidates so the served
         engagement is P(engaged | user, candidate); identity (1, 0) until `set_serving`.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from core.tf_env import keras, tf
from features import MULTI_VALUE_SEP, FeatureSpec, FeatureStore
from features.tf_layers import BagEmbedding, l2_regularizer, split_multi, string_lookup, tokenize
from ranking.config import RankerConfig
from ranking.stacking import STACK_FEATURES, ActivityStats, StackedEngagement

USER_PREFIX = "u__"
ITEM_PREFIX = "i__"
HISTORY = "history"  # the user's recent train items, MULTI_VALUE_SEP-joined: see user_inputs
HEADS = ("engagement", "quality")
RATING_MIN, RATING_MAX = 1.0, 5.0


def normalize_rating(rating: np.ndarray, scale: tuple[float, float] = (RATING_MIN, RATING_MAX)) -> np.ndarray:
    """Rating on `scale` (lo, hi; default 1-5) → [0, 1] quality label; NaN (unobserved) stays NaN."""
    lo, hi = scale
    return (np.asarray(rating, dtype=np.float64) - lo) / (hi - lo)


def denormalize_quality(quality: np.ndarray, scale: tuple[float, float] = (RATING_MIN, RATING_MAX)) -> np.ndarray:
    """Quality head output in [0, 1] → rating units on `scale` (lo, hi); default 1-5."""
    lo, hi = scale
    return lo + (hi - lo) * np.asarray(quality, dtype=np.float64)


def user_inputs(features: FeatureStore, user_ids: Sequence[str], history_length: int,
                leave_out: Sequence[str] | None = None,
                recent: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """The user half of the ranker's input: `features.user_features(user_ids)` + history.

    `history` [n] is each user's `history_length` most recent engaged item ids
    (FeatureStore.history: train items, merged with `recent[r]`, row r's streamed
    engagements newest first, when given), joined with MULTI_VALUE_SEP; omitted when
    history_length is 0. `leave_out[r]`, if given, is dropped from row r's history first:
    a training positive must not see itself in its own history, because a served candidate
    never does (seen items are excluded from candidates).
    """
    out = features.user_features(user_ids)
    if history_length <= 0:
        return out
    if leave_out is None:
        hist = features.history(user_ids, history_length, recent)
        out[HISTORY] = np.array([MULTI_VALUE_SEP.join(h) for h in hist], dtype=object)
        return out
    hist = features.history(user_ids, history_length + 1, recent)
    joined = []
    for h, item in zip(hist, leave_out):
        if item in h:
            h = tuple(x for x in h if x != item)
        joined.append(MULTI_VALUE_SEP.join(h[-history_length:]))
    out[HISTORY] = np.array(joined, dtype=object)
    return out


def ranker_inputs(user_features: Mapping[str, np.ndarray], item_features: Mapping[str, np.ndarray]) -> dict:
    """Merges the raw user and item feature dicts of n pairs into the ranker's input dict.

    Both dicts hold [n] arrays (row i of each is pair i); keys are prefixed `u__`/`i__`
    so a user and an item column of the same name cannot collide.
    """
    out = {USER_PREFIX + k: v for k, v in user_features.items()}
    out.update({ITEM_PREFIX + k: v for k, v in item_features.items()})
    return out


def input_specs(features: FeatureStore, history_length: int = 0) -> dict[str, tf.TensorSpec]:
    """The ranker's inputs: name → TensorSpec([None]) (strings, or float32 for numerics)."""
    spec = features.spec
    specs = {USER_PREFIX + "user_id": tf.TensorSpec([None], tf.string, name=USER_PREFIX + "user_id")}
    if history_length > 0:
        specs[USER_PREFIX + HISTORY] = tf.TensorSpec([None], tf.string, name=USER_PREFIX + HISTORY)
    for c in spec.user_categorical:
        specs[USER_PREFIX + c] = tf.TensorSpec([None], tf.string, name=USER_PREFIX + c)
    for c in spec.user_numeric:
        specs[USER_PREFIX + c] = tf.TensorSpec([None], tf.float32, name=USER_PREFIX + c)
    specs[ITEM_PREFIX + "item_id"] = tf.TensorSpec([None], tf.string, name=ITEM_PREFIX + "item_id")
    for c in (*spec.item_categorical, *spec.item_multi, *spec.item_text):
        specs[ITEM_PREFIX + c] = tf.TensorSpec([None], tf.string, name=ITEM_PREFIX + c)
    for c in spec.item_numeric:
        specs[ITEM_PREFIX + c] = tf.TensorSpec([None], tf.float32, name=ITEM_PREFIX + c)
    return specs


def default_crosses(spec: FeatureSpec) -> tuple[str, ...]:
    """Every (user_id or user categorical) × (item categorical or multi-valued) pair."""
    return tuple(f"{u}*{i}" for u, i in itertools.product(("user_id", *spec.user_categorical),
                                                          (*spec.item_categorical, *spec.item_multi)))


class _WideCrosses(keras.layers.Layer):
    """Σ over hashed crossed tokens of a learned [buckets, num_heads] weight: the wide logits.

    Each cross "a*b" turns a row's token of user column a and every token of item column
    b into the strings "a*b=tok_a\\x01tok_b", hashed (FarmHash) into `buckets` shared
    buckets; a row's wide logit for each head is the sum of its crossed tokens' weights.
    """

    def __init__(self, crosses: Sequence[tuple[str, str, bool]], buckets: int, l2: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crosses = tuple(crosses)  # (user input key, item input key, item column is multi-valued)
        self.buckets = buckets
        self.weights_table = keras.layers.Embedding(buckets, len(HEADS), embeddings_initializer="zeros",
                                                    embeddings_regularizer=l2_regularizer(l2), name="wide_weights")

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        batch = tf.shape(next(iter(inputs.values())))[0]
        rows, tokens = [], []
        for user_key, item_key, multi in self.crosses:
            left = inputs[user_key]
            right = split_multi(inputs[item_key]) if multi else tf.RaggedTensor.from_tensor(inputs[item_key][:, None])
            row = tf.cast(right.value_rowids(), tf.int32)
            crossed = tf.strings.join([f"{user_key}*{item_key}=", tf.gather(left, row), "\x01", right.flat_values])
            rows.append(row)
            tokens.append(crossed)
        ids = tf.strings.to_hash_bucket_fast(tf.concat(tokens, axis=0), self.buckets)
        weights = self.weights_table(ids)  # [total crossed tokens, heads]
        return tf.math.unsorted_segment_sum(weights, tf.concat(rows, axis=0), batch)  # [b, heads]


class RetrievalAffinity(keras.layers.Layer):
    """The retrieval model's score of each (user, item) row: user_tower(user) · item_embedding[item]  [b, 1].

    Frozen (no trainable weights): `user_tower` is the trained two-tower's user tower (a
    Keras layer taking the raw user feature dict, see retrieval.Tower), `item_ids` [m] and
    `item_embeddings` [m, d] its exported item vectors (items.npz), so s is exactly the
    FAISS inner-product score of the candidate. The tower reads the last min(its own
    history length, `history_length`) items of the ranker's history input: with a ranker
    history at least as long as the tower's (the defaults: 50 ≥ 20) s equals the FAISS
    score; a shorter one gives the tower a shorter history. Unknown items score 0.
    """

    def __init__(self, user_tower: keras.layers.Layer, item_ids: Sequence[str], item_embeddings: np.ndarray,
                 history_length: int, **kwargs) -> None:
        super().__init__(trainable=False, **kwargs)
        user_tower.trainable = False
        self.user_tower = user_tower
        self.feature_names = tuple(user_tower.feature_names)
        self.history_length = min(int(getattr(user_tower, "history_length", 0)), int(history_length))
        emb = np.asarray(item_embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(item_ids):
            raise ValueError(f"item_embeddings must be [{len(item_ids)}, d], got {emb.shape}")
        self.item_lookup = keras.layers.StringLookup(vocabulary=[str(i) for i in item_ids], num_oov_indices=1,
                                                     mask_token=None)
        table = np.vstack([np.zeros((1, emb.shape[1]), np.float32), emb])  # row 0: OOV
        self.item_table = self.add_weight(name="item_table", shape=table.shape, trainable=False,
                                          initializer=keras.initializers.Constant(table))

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        user = {}
        for name in self.feature_names:
            if name == HISTORY:
                if self.history_length > 0:
                    tokens = split_multi(inputs[USER_PREFIX + HISTORY])[:, -self.history_length:]
                    user[name] = tf.strings.reduce_join(tokens, axis=1, separator=MULTI_VALUE_SEP)
                else:
                    user[name] = tf.fill(tf.shape(inputs[USER_PREFIX + "user_id"]), "")
            else:
                user[name] = inputs[USER_PREFIX + name]
        u = self.user_tower(user, training=False)  # [b, d]
        v = tf.gather(self.item_table, self.item_lookup(inputs[ITEM_PREFIX + "item_id"]))  # [b, d]
        return tf.reduce_sum(u * v, axis=1, keepdims=True)


class StackInputs(keras.layers.Layer):
    """The stacked engagement model's features beyond the heads and the retrieval score [b, 7]
    (ranking.stacking.EXTRA_FEATURES, in that order), all frozen:

      sim_last, sim_recent5, sim_max20 — cosines of the candidate's retriever item vector with the
        user's latest history item's, with the normalised sum of the latest 5, and the largest
        over the latest 20 (0 without a history; history items unknown to the retriever count as
        zero vectors);
      log_item_count, log_item_recent, item_trend, log_user_count — ranking.stacking.ActivityStats
        of the training log (unknown ids: 0).
    """

    def __init__(self, item_ids: Sequence[str], item_embeddings: np.ndarray, stats, history_length: int,
                 **kwargs) -> None:
        super().__init__(trainable=False, **kwargs)
        emb = np.asarray(item_embeddings, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norms > 0, norms, 1.0)
        self.history_length = int(history_length)
        self.item_lookup = keras.layers.StringLookup(vocabulary=[str(i) for i in item_ids], num_oov_indices=1,
                                                     mask_token=None)
        self.item_table = self.add_weight(name="unit_item_table", shape=(len(emb) + 1, emb.shape[1]),
                                          trainable=False, initializer=keras.initializers.Constant(
                                              np.vstack([np.zeros((1, emb.shape[1]), np.float32), emb])))
        self.stat_item_lookup = keras.layers.StringLookup(vocabulary=[str(i) for i in stats.item_ids],
                                                          num_oov_indices=1, mask_token=None)
        item_values = np.asarray(stats.item_values, dtype=np.float32).reshape(len(stats.item_ids), -1)
        self.item_stats = self.add_weight(name="item_stats", shape=(len(item_values) + 1, item_values.shape[1]),
                                          trainable=False, initializer=keras.initializers.Constant(
                                              np.vstack([np.zeros((1, item_values.shape[1]), np.float32),
                                                         item_values])))
        self.stat_user_lookup = keras.layers.StringLookup(vocabulary=[str(u) for u in stats.user_ids],
                                                          num_oov_indices=1, mask_token=None)
        self.user_stats = self.add_weight(name="user_stats", shape=(len(stats.user_ids) + 1,), trainable=False,
                                          initializer=keras.initializers.Constant(
                                              np.r_[0.0, np.asarray(stats.user_values, np.float32)]))

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        v = tf.gather(self.item_table, self.item_lookup(inputs[ITEM_PREFIX + "item_id"]))  # [b, d] unit
        batch = tf.shape(v)[0]
        key = USER_PREFIX + HISTORY
        if self.history_length > 0 and key in inputs:
            tokens = split_multi(inputs[key])[:, -20:]
            vecs = tf.gather(self.item_table, self.item_lookup(tokens.flat_values))  # [total, d]
            rowids = tokens.value_rowids()
            dots = tokens.with_flat_values(tf.reduce_sum(vecs * tf.gather(v, rowids), axis=1))
            lengths = tokens.row_lengths()
            sim_last = tf.reduce_sum(dots[:, -1:], axis=1)
            recent = tokens[:, -5:]
            rvecs = tf.gather(self.item_table, self.item_lookup(recent.flat_values))
            rsum = tf.math.unsorted_segment_sum(rvecs, recent.value_rowids(), batch)
            sim_recent = tf.reduce_sum(tf.math.l2_normalize(rsum, axis=1) * v, axis=1)
            sim_max = tf.where(lengths > 0, tf.reduce_max(dots, axis=1), tf.zeros_like(sim_last))
        else:
            sim_last = sim_recent = sim_max = tf.zeros([batch], tf.float32)
        items = tf.gather(self.item_stats, self.stat_item_lookup(inputs[ITEM_PREFIX + "item_id"]))
        users = tf.gather(self.user_stats, self.stat_user_lookup(inputs[USER_PREFIX + "user_id"]))
        return tf.concat([tf.stack([sim_last, sim_recent, sim_max], axis=1), items, users[:, None]], axis=1)


class RatingBaseline(keras.layers.Layer):
    """The bias rating baseline μ + b_u + b_i as a frozen logit offset for the quality head [b, 1].

    `biases` = (μ, user ids [U], b_u [U], item ids [I], b_i [I]) in rating units (unknown
    ids: b = 0). Output: logit(clip((μ + b_u + b_i − lo) / (hi − lo), 0.01, 0.99)), so
    σ(offset + residual) is the baseline when the residual is 0.
    """

    def __init__(self, biases: tuple, scale: tuple[float, float] = (RATING_MIN, RATING_MAX), **kwargs) -> None:
        super().__init__(trainable=False, **kwargs)
        mu, users, b_u, items, b_i = biases
        self.mu, self.scale = float(mu), (float(scale[0]), float(scale[1]))
        self.user_lookup = keras.layers.StringLookup(vocabulary=[str(u) for u in users], num_oov_indices=1,
                                                     mask_token=None)
        self.item_lookup = keras.layers.StringLookup(vocabulary=[str(i) for i in items], num_oov_indices=1,
                                                     mask_token=None)
        self.user_bias = self.add_weight(name="user_bias", shape=(len(users) + 1,), trainable=False,
                                         initializer=keras.initializers.Constant(np.r_[0.0, np.asarray(b_u)]))
        self.item_bias = self.add_weight(name="item_bias", shape=(len(items) + 1,), trainable=False,
                                         initializer=keras.initializers.Constant(np.r_[0.0, np.asarray(b_i)]))

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        r = (self.mu + tf.gather(self.user_bias, self.user_lookup(inputs[USER_PREFIX + "user_id"]))
             + tf.gather(self.item_bias, self.item_lookup(inputs[ITEM_PREFIX + "item_id"])))
        q = tf.clip_by_value((r - self.scale[0]) / (self.scale[1] - self.scale[0]), 0.01, 0.99)
        return (tf.math.log(q) - tf.math.log1p(-q))[:, None]


class WideDeepRanker(keras.Model):
    """The ranker. call(inputs) → {"engagement": [b, 1], "quality": [b, 1]}, both in [0, 1].

    `inputs` is the dict of `ranker_inputs` (keys of `input_specs`), each value [b]. The
    heads keep a trailing unit axis so Keras applies per-example loss weights (the
    quality mask) row by row; the exported signature returns them as [b].
    """

    def __init__(self, features: FeatureStore, config: RankerConfig, retrieval: RetrievalParts | None = None,
                 rating_baseline: tuple | None = None, stack_stats=None, **kwargs) -> None:
        super().__init__(name="wide_deep_ranker", **kwargs)
        self.config = config
        self.rating_baseline = RatingBaseline(rating_baseline, name="rating_baseline") if rating_baseline else None
        # Retrieval fusion only with a retrieval model and β != 0 (< 0: β chosen later); otherwise the ranker alone.
        self.affinity = None
        if config.retrieval_weight != 0 and retrieval is not None:
            tower, item_ids, item_embeddings = retrieval
            self.affinity = RetrievalAffinity(tower, item_ids, item_embeddings, config.history_length,
                                              name="retrieval_affinity")
        # The stacked engagement model's graph features (ranking.stacking), with a retrieval model only.
        self.stack_inputs = None
        if self.affinity is not None and stack_stats is not None:
            self.stack_inputs = StackInputs(retrieval[1], retrieval[2], stack_stats, config.history_length,
                                            name="stack_inputs")
        spec, vocabs = features.spec, features.vocabularies
        self.specs = input_specs(features, config.history_length)
        self.embedders: dict[str, keras.layers.Layer] = {}
        self.bags: dict[str, tuple[keras.layers.Layer, bool]] = {}  # key → (bag layer, is text)
        for prefix, col, dim in ((USER_PREFIX, "user_id", config.id_dim), (ITEM_PREFIX, "item_id", config.id_dim),
                                 *((USER_PREFIX, c, config.feature_dim) for c in spec.user_categorical),
                                 *((ITEM_PREFIX, c, config.feature_dim) for c in spec.item_categorical)):
            if not vocabs[col].tokens:  # a column whose train vocabulary is empty carries no signal
                continue
            self.embedders[prefix + col] = keras.Sequential([
                string_lookup(vocabs[col]),
                keras.layers.Embedding(len(vocabs[col]), dim, embeddings_regularizer=l2_regularizer(config.l2))],
                name=f"{prefix}{col}_embedding")
        for c, is_text in ((c, False) for c in spec.item_multi):
            if vocabs[c].tokens:
                self.bags[ITEM_PREFIX + c] = (BagEmbedding(vocabs[c], config.feature_dim, config.l2,
                                                            name=f"i__{c}_bag"), is_text)
        for c in spec.item_text:
            if vocabs[c].tokens:
                self.bags[ITEM_PREFIX + c] = (BagEmbedding(vocabs[c], config.feature_dim, config.l2,
                                                            name=f"i__{c}_words"), True)
        item_key, user_key = ITEM_PREFIX + "item_id", USER_PREFIX + "user_id"
        self.history_bag = None
        if config.history_length > 0 and item_key in self.embedders:
            item_layers = self.embedders[item_key].layers
            self.history_bag = BagEmbedding(None, config.id_dim, config.l2, shared=(item_layers[0], item_layers[1]),
                                         name="u__history_bag")
        self.products = [(item_key, user_key)] if item_key in self.embedders and user_key in self.embedders else []
        self.numeric = {USER_PREFIX + c: features.numeric_stats.get(c, (0.0, 1.0)) for c in spec.user_numeric}
        self.numeric.update({ITEM_PREFIX + c: features.numeric_stats.get(c, (0.0, 1.0)) for c in spec.item_numeric})
        self.cross_keys = _resolve_crosses(spec, config.crosses or default_crosses(spec))
        self.wide = _WideCrosses(self.cross_keys, config.wide_buckets, config.l2, name="wide") if self.cross_keys else None
        self.bottom = []
        for h in config.hidden:
            self.bottom.append(keras.layers.Dense(h, activation="relu"))
            if config.dropout:
                self.bottom.append(keras.layers.Dropout(config.dropout, seed=config.seed))
        # Serving-time fusion weight β (config's when given, else 0 until chosen) and Platt
        # calibration (a, b) (identity until fit): set after training by set_serving.
        beta = max(config.retrieval_weight, 0.0) if self.affinity is not None else 0.0
        # The 4th value is the quality residual's serving scale (1 = as trained; 0 = the bias baseline alone).
        self.serving_params = self.add_weight(name="serving_params", shape=(4,), trainable=False,
                                              initializer=keras.initializers.Constant([beta, 1.0, 0.0, 1.0]))
        # The stacked engagement model: [on (0/1), intercept, weights over ranking.stacking.STACK_FEATURES].
        self.stack_params = self.add_weight(name="stack_params", shape=(2 + len(STACK_FEATURES),), trainable=False,
                                            initializer="zeros")
        self.towers = {head: keras.Sequential(
            ([keras.layers.Dense(config.head_hidden, activation="relu")] if config.head_hidden else [])
            + [keras.layers.Dense(1)], name=f"{head}_tower") for head in HEADS}

    def set_serving(self, retrieval_weight: float, calibration_a: float = 1.0, calibration_b: float = 0.0,
                    quality_residual_scale: float = 1.0) -> None:
        """Sets the serving-time β and Platt (a, b) of the engagement head, and the scale of the
        quality head's residual over its bias baseline (module docstring)."""
        if not (np.isfinite(quality_residual_scale) and 0 <= quality_residual_scale <= 1):
            raise ValueError(f"the quality residual scale must be in [0, 1], got {quality_residual_scale}")
        if retrieval_weight and self.affinity is None:
            raise ValueError(f"retrieval weight {retrieval_weight} needs a ranker built with the retrieval model")
        if not (np.isfinite(retrieval_weight) and retrieval_weight >= 0 and np.isfinite(calibration_b)
                and np.isfinite(calibration_a) and calibration_a > 0):
            raise ValueError(f"need β >= 0, a > 0 and b finite; got {retrieval_weight}, {calibration_a}, "
                             f"{calibration_b}")
        self.serving_params.assign([retrieval_weight, calibration_a, calibration_b, quality_residual_scale])

    def set_stacking(self, stacked: StackedEngagement | None) -> None:
        """Serves engagement = σ(the stacked model's logit) (ranking.stacking) instead of the fused,
        Platt-calibrated head; None = off."""
        if stacked is None:
            self.stack_params.assign(np.zeros(2 + len(STACK_FEATURES), np.float32))
            return
        if self.stack_inputs is None:
            raise ValueError("a stacked engagement model needs a ranker built with the retrieval model and activity stats")
        self.stack_params.assign(np.r_[1.0, stacked.intercept, stacked.weights].astype(np.float32))

    def stacking(self) -> StackedEngagement | None:
        """The stacked engagement model set by set_stacking, or None."""
        values = self.stack_params.numpy().astype(np.float64)
        if values[0] == 0:
            return None
        return StackedEngagement(tuple(float(w) for w in values[2:]), float(values[1]))

    def serving_values(self) -> dict[str, float]:
        """{"retrieval_weight": β, "calibration_a": a, "calibration_b": b, "quality_residual_scale": γ}
        as set by set_serving."""
        beta, a, b, g = (float(x) for x in self.serving_params.numpy())
        return {"retrieval_weight": beta, "calibration_a": a, "calibration_b": b, "quality_residual_scale": g}

    def logits(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        """Each head's logit [b, 1] (no fusion, no calibration, quality residual unscaled), plus
        "affinity" [b, 1] when fused and "quality_offset" [b, 1] (the bias baseline's logit) when set."""
        embedded = {key: layer(inputs[key]) for key, layer in self.embedders.items()}
        parts = list(embedded.values())
        # Explicit element-wise products: an MLP learns dot-product matches poorly on its own.
        parts.extend(embedded[a] * embedded[b] for a, b in self.products)
        if self.history_bag is not None:
            history = self.history_bag(split_multi(inputs[USER_PREFIX + HISTORY]))
            parts.extend([history, history * embedded[ITEM_PREFIX + "item_id"]])
        for key, (layer, is_text) in self.bags.items():
            parts.append(layer(tokenize(inputs[key]) if is_text else split_multi(inputs[key])))
        for key, (mean, std) in self.numeric.items():
            parts.append(((tf.cast(inputs[key], tf.float32) - mean) / (std or 1.0))[:, None])
        x = tf.concat(parts, axis=1)
        for layer in self.bottom:
            x = layer(x, training=training)
        wide = self.wide(inputs) if self.wide is not None else None
        out = {}
        for h, head in enumerate(HEADS):
            logit = self.towers[head](x)
            if wide is not None:
                logit = logit + wide[:, h:h + 1]
            if head == "quality" and self.rating_baseline is not None:
                out["quality_offset"] = self.rating_baseline(inputs)
                logit = logit + out["quality_offset"]
            out[head] = logit
        if self.affinity is not None and not training:
            out["affinity"] = self.affinity(inputs)
        if self.stack_inputs is not None and not training:
            out["stack_extra"] = self.stack_inputs(inputs)
        return out

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        logits = self.logits(inputs, training)
        engagement, quality = logits["engagement"], logits["quality"]
        if not training:
            beta, a, b, g = (self.serving_params[i] for i in range(4))
            if "affinity" in logits:
                engagement = engagement + beta * (logits["affinity"] - 1.0)
            engagement = a * engagement + b
            if "quality_offset" in logits:
                quality = logits["quality_offset"] + g * (quality - logits["quality_offset"])
            if "stack_extra" in logits:
                x = tf.concat([logits["engagement"], logits["affinity"] - 1.0, quality, logits["stack_extra"]], axis=1)
                stacked = tf.reduce_sum(x * self.stack_params[2:][None, :], axis=1, keepdims=True) + self.stack_params[1]
                on = self.stack_params[0]
                engagement = on * stacked + (1.0 - on) * engagement
        return {"engagement": tf.sigmoid(engagement), "quality": tf.sigmoid(quality)}


def _resolve_crosses(spec: FeatureSpec, crosses: Sequence[str]) -> list[tuple[str, str, bool]]:
    user_cols = ("user_id", *spec.user_categorical)
    item_cols = (*spec.item_categorical, *spec.item_multi, "item_id")
    out = []
    for cross in crosses:
        u, i = cross.split("*")
        if u not in user_cols:
            raise ValueError(f"--crosses {cross!r}: {u!r} is not a user categorical column; have {list(user_cols)}")
        if i not in item_cols:
            raise ValueError(f"--crosses {cross!r}: {i!r} is not an item categorical or multi-valued column; "
                             f"have {list(item_cols)}")
        out.append((USER_PREFIX + u, ITEM_PREFIX + i, i in spec.item_multi))
    return out


# (user tower layer, item ids [m], item embeddings [m, d]) of a trained two-tower: see RetrievalAffinity.
RetrievalParts = tuple[keras.layers.Layer, Sequence[str], np.ndarray]


def build_ranker(features: FeatureStore, config: RankerConfig = RankerConfig(),
                 retrieval: RetrievalParts | None = None, rating_baseline: tuple | None = None,
                 stack_stats: ActivityStats | None = None) -> WideDeepRanker:
    """A compiled WideDeepRanker for `features` (vocabularies fit on train).

    `retrieval` (unless config.retrieval_weight == 0) adds the retrieval score to the
    engagement logit when serving, weighted by β (set_serving; see the module docstring);
    None = the ranker alone. `rating_baseline` (μ, user ids, b_u, item ids, b_i): the quality
    head predicts a residual on that bias baseline (RatingBaseline); None = on its own.
    `stack_stats` (with `retrieval`): the graph also computes the stacked engagement model's
    features (StackInputs), served once set_stacking sets its weights.

    Losses: engagement — binary cross-entropy on `engaged`; quality — mean squared error
    on the normalised rating, weighted by a 0/1 mask so rows without an observed rating
    contribute nothing. Total = engagement_weight · L_e + quality_weight · L_q.
    """
    model = WideDeepRanker(features, config, retrieval, rating_baseline, stack_stats)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss={"engagement": keras.losses.BinaryCrossentropy(), "quality": keras.losses.MeanSquaredError()},
        loss_weights={"engagement": config.engagement_weight, "quality": config.quality_weight},
        weighted_metrics={"engagement": [keras.metrics.AUC(name="auc")],
                          "quality": [keras.metrics.RootMeanSquaredError(name="rmse")]},
    )
    model(_dummy_batch(model.specs))  # build every variable now, so saving and loading need no data
    return model


def _dummy_batch(specs: Mapping[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    return {k: tf.zeros([1], s.dtype) if s.dtype != tf.string else tf.constant([""]) for k, s in specs.items()}
