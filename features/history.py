"""Batch history + streamed engagements → the one history every model input reads.

The user tower's and the ranker's "history" inputs, the Beam job and offline evaluation
all build a user's history with `merge_history`, so a user's recent engagements mean the
same thing online and offline.
"""
from __future__ import annotations

from collections.abc import Container, Sequence


def merge_history(batch: Sequence[str], recent: Sequence[str], length: int,
                  known: Container[str] | None = None) -> tuple[str, ...]:
    """A user's batch history merged with their streamed engagements, oldest first.

    Args:
      batch: the train history, oldest first (FeatureStore.history order; taken as given,
        never filtered, so an empty `recent` returns exactly `batch[-length:]` for a
        history without repeats).
      recent: streamed engagements, NEWEST first (may repeat items, may hold ids the
        model does not know).
      length: how many items to keep (<= 0: none).
      known: if given, ids of `recent` not in it are dropped (an item without an
        embedding carries no history signal and would only take a slot).

    Returns:
      The last `length` distinct items of `batch` followed by `reversed(recent)`, each item
      once at its newest position, oldest first.
    """
    if length <= 0:
        return ()
    out: list[str] = []
    kept: set[str] = set()
    for item in recent:  # newest first
        item = str(item)
        if item in kept or (known is not None and item not in known):
            continue
        kept.add(item)
        out.append(item)
        if len(out) == length:
            return tuple(reversed(out))
    for item in reversed(batch):
        item = str(item)
        if item in kept:
            continue
        kept.add(item)
        out.append(item)
        if len(out) == length:
            break
    return tuple(reversed(out))
