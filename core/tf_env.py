"""The one place TensorFlow is imported: forces Keras 2 (`tf_keras`), which TFRS needs.

`TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is first imported, so every module
that needs TensorFlow imports it from here: `from core.tf_env import tf, keras, tfrs`.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

if not tf.keras.__name__.startswith("tf_keras") and "tf_keras" not in getattr(tf.keras, "__file__", ""):
    # TensorFlow was imported elsewhere before this module, so tf.keras is Keras 3.
    raise ImportError(
        "TensorFlow was imported before core.tf_env, so it bound Keras 3; TFRS needs Keras 2. "
        "Set TF_USE_LEGACY_KERAS=1 in the environment or import core.tf_env first."
    )

import tensorflow_recommenders as tfrs  # noqa: E402


def set_seed(seed: int) -> None:
    """Seeds TensorFlow's global generator and makes ops deterministic where TF can."""
    keras.utils.set_random_seed(seed)


def limit_threads(intra_op: int = 0, inter_op: int = 0) -> bool:
    """Caps TensorFlow's thread pools (0 = TF's default); takes effect only before the first op runs.

    intra_op: threads one op (a matmul, a gather) may split over; inter_op: ops of one graph
    run concurrently. Returns False, without raising, when TensorFlow was already initialised
    with other values (they cannot change then; the caller decides whether to warn).
    """
    ok = True
    for value, get, put in ((intra_op, tf.config.threading.get_intra_op_parallelism_threads,
                             tf.config.threading.set_intra_op_parallelism_threads),
                            (inter_op, tf.config.threading.get_inter_op_parallelism_threads,
                             tf.config.threading.set_inter_op_parallelism_threads)):
        if not value or get() == value:
            continue
        try:
            put(value)
        except RuntimeError:  # "cannot be modified after initialization"
            ok = False
    return ok


__all__ = ["tf", "keras", "tfrs", "set_seed", "limit_threads"]
