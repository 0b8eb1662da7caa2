"""The features' definitions inside the TensorFlow graph, shared by both models.

`split_multi` and `tokenize` are `features.split_multi` / `features.tokenize_text` as TF
ops (tests/retrieval/test_two_tower.py checks they agree), `string_lookup` follows
`features.Vocabulary`'s index convention, and `BagEmbedding` embeds a multi-valued
feature, a title's words or a history. The two-tower (retrieval/) and the ranker
(ranking/) build their towers from these, so an exported model reads raw features exactly
as the feature store wrote them. Imported only by model code: `import features` stays
free of TensorFlow.
"""
from __future__ import annotations

from core.tf_env import keras, tf
from features.schema import MULTI_VALUE_SEP
from features.vocab import Vocabulary


def string_lookup(vocab: Vocabulary) -> keras.layers.StringLookup:
    """Token → id with features.Vocabulary's convention: index 0 is the OOV bucket, no mask token."""
    return keras.layers.StringLookup(vocabulary=list(vocab.tokens) or ["\x00"], num_oov_indices=1, mask_token=None)


def split_multi(x: tf.Tensor) -> tf.RaggedTensor:
    """features.split_multi in TF: 'Action|Comedy' → ['Action', 'Comedy'], empty tokens dropped."""
    parts = tf.strings.split(x, sep=MULTI_VALUE_SEP)
    return tf.ragged.boolean_mask(parts, tf.strings.length(parts) > 0)


def tokenize(x: tf.Tensor) -> tf.RaggedTensor:
    """features.tokenize_text in TF: lower-case [a-z0-9]+ words."""
    lowered = tf.strings.lower(x, encoding="utf-8")
    return tf.strings.split(tf.strings.strip(tf.strings.regex_replace(lowered, "[^a-z0-9]+", " ")))


def l2_regularizer(l2: float) -> keras.regularizers.Regularizer | None:
    """An L2 penalty of weight `l2` on an embedding table; None for 0."""
    return keras.regularizers.l2(l2) if l2 > 0 else None


class BagEmbedding(keras.layers.Layer):
    """Mean of the token embeddings of a ragged [b, (n)] string bag; zeros for an empty bag.

    Owns its lookup and table, or shares another feature's (`shared=(lookup, embedding)`,
    e.g. a history bag reusing the item id embedding).
    """

    def __init__(self, vocab: Vocabulary | None, dim: int, l2: float, shared: tuple | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if shared is not None:
            self.lookup, self.embedding = shared
        else:
            self.lookup = string_lookup(vocab)
            self.embedding = keras.layers.Embedding(len(vocab), dim, embeddings_regularizer=l2_regularizer(l2))

    def call(self, tokens: tf.RaggedTensor) -> tf.Tensor:
        ids = tf.ragged.map_flat_values(self.lookup, tokens)
        vectors = tf.ragged.map_flat_values(self.embedding, ids)  # [b, (n), dim]
        total = tf.reduce_sum(vectors, axis=1)
        count = tf.cast(tf.maximum(ids.row_lengths(), 1), total.dtype)[:, None]
        return total / count
