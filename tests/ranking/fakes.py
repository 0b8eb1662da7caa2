"""Test doubles shared by the ranking tests."""


def fake_user_tower():
    """Stands in for retrieval.Tower (history length 3): u = unit([number of history items it reads (≤ 3), 1])."""
    from core.tf_env import keras, tf
    from features.tf_layers import split_multi

    class FakeUserTower(keras.layers.Layer):
        history_length = 3
        feature_names = ("user_id", "history")

        def call(self, inputs, training=False):
            n = tf.cast(split_multi(inputs["history"]).row_lengths(), tf.float32)
            return tf.math.l2_normalize(tf.stack([n, tf.ones_like(n)], axis=1), axis=1)
    return FakeUserTower()
