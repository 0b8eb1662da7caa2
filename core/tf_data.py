"""Shuffled, batched tf.data input from in-memory columns, sized for millions of rows.

`from_tensor_slices(columns).shuffle(n)` — the obvious pipeline — keeps every row of every
column as its own little tensor in the shuffle buffer: at 10M interactions the two-tower's
input alone reached 8 GiB that way. Here only row *indices* are shuffled; each batch of
indices then gathers its rows from whole-column tensors in one op per column. String
columns are stored once per distinct value (`pd.factorize`: int32 codes + the distinct
strings), so a user's segment repeated on a million rows costs 4 bytes a row, not a string.

The batches are exactly those of `from_tensor_slices(columns).shuffle(n, seed).batch(b)`:
`shuffle` draws its permutation from the seed and the buffer size alone, never from the
elements, so shuffling `range(n)` with the same seed gives the same order.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.tf_env import tf


def indexed_batches(columns: Any, batch_size: int, seed: int | None = None,
                    prefetch: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Batches of a nested structure (dicts/tuples) of [n] numpy arrays, rows shuffled when `seed` is set.

    Object and unicode arrays become tf.string (each value `str()`-ed, as `astype(str)` would);
    other arrays keep their dtype. Each epoch reshuffles (seeded), like `shuffle(...,
    reshuffle_each_iteration=True)`.
    """
    flat = tf.nest.flatten(columns)
    if not flat:
        raise ValueError("indexed_batches needs at least one column")
    n = len(flat[0])
    if any(len(v) != n for v in flat):
        raise ValueError(f"columns of different lengths: {sorted({len(v) for v in flat})}")
    tables, codes = [], []
    for v in flat:
        v = np.asarray(v)
        if v.dtype == object or v.dtype.kind in "US":
            code, uniques = pd.factorize(v)
            uniques = np.asarray(uniques, dtype=object).astype(str)
            missing = code < 0  # None / NaN: kept as str() spells each ("None", "nan"), like astype(str)
            if missing.any():
                extra_code, extra = pd.factorize(v[missing].astype(str))
                code[missing] = len(uniques) + extra_code
                uniques = np.concatenate([uniques, np.asarray(extra, dtype=str)])
            tables.append(tf.constant(uniques))
            codes.append(tf.constant(code.astype(np.int32 if len(uniques) < 2**31 else np.int64)))
        else:
            tables.append(tf.constant(v))
            codes.append(None)

    def gather(idx: tf.Tensor):
        out = [tf.gather(t, idx if c is None else tf.gather(c, idx)) for t, c in zip(tables, codes)]
        return tf.nest.pack_sequence_as(columns, out)

    ds = tf.data.Dataset.range(n)
    if seed is not None:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(gather).prefetch(prefetch)
