"""A user's ranked candidate set with both head scores: the unit that is cached and precomputed.

One entry serves any blend weights: the blender runs on the stored `engagement` and
`quality` at request time, so changing weights never re-runs retrieval or the ranker.
The Redis cache and the Beam batch job read and write exactly this encoding.

Wire format (little-endian), version 1:
  b"RC" | u8 format version | u32 n | u16 len(model_version) | model_version utf-8
  | f32[n] retrieval_scores | f32[n] engagement | f32[n] quality
  | u32 len(ids blob) | item ids utf-8 joined by "\\x00"
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np

_MAGIC = b"RC"
_FORMAT = 1
_HEAD = struct.Struct("<2sBIH")
_F32 = np.dtype("<f4")


# Every key of one user carries the hash tag {user_id}, so on a Redis Cluster they share a hash slot:
# the server reads a user's precomputed entry, cached entry and engagement counter
# (feedback.log.state_key) in one MGET, and the event log updates the user's state in one script.
# Nothing before the tag may contain "{" (model versions and the stream key do not).


def cache_key(model_version: str, user_id: str) -> str:
    """The key the server writes after computing a user's candidates online (value: `stamp(counter, bytes)`)."""
    return f"recsys:{model_version}:cache:{{{user_id}}}"


def precomputed_key(model_version: str, user_id: str) -> str:
    """The key the Beam batch job writes a user's precomputed candidates under."""
    return f"recsys:{model_version}:pre:{{{user_id}}}"


def recent_key(user_id: str) -> str:
    """The Redis list of a user's streamed engagements (item ids, newest first: LPUSH + LTRIM).

    Not versioned by model: the events are the user's, whichever version serves them; each
    request reads it and passes it to RecommendPipeline.candidates(recent=...).
    """
    return f"recsys:recent:{{{user_id}}}"


_STAMP = struct.Struct("<2sQ")
_STAMP_MAGIC = b"RV"


def stamp(counter: int, data: bytes) -> bytes:
    """A cached entry's value: the user's engagement counter it was computed at, then `CandidateSet.to_bytes()`.

    The reader compares the stamp with the counter it read in the same MGET: an entry computed
    before the user's latest engagement is a miss (serving/cache.py). Counter 0 is stored unstamped.
    """
    return data if counter == 0 else _STAMP.pack(_STAMP_MAGIC, counter) + data


def unstamp(raw: bytes) -> tuple[int, bytes]:
    """(the counter an entry was computed at, its candidate-set bytes); unstamped bytes (precomputed) → 0."""
    if raw[:2] == _STAMP_MAGIC and len(raw) >= _STAMP.size:
        return _STAMP.unpack_from(raw)[1], raw[_STAMP.size:]
    return 0, raw


class CorruptEntryError(ValueError):
    """Bytes that are not a candidate set of this format (corrupt, truncated or foreign)."""


@dataclasses.dataclass(frozen=True)
class CandidateSet:
    """Candidates for one user, in retrieval order.

    Attributes:
      item_ids: [n] item ids (str).
      retrieval_scores: [n] float32 inner products from the two-tower model.
      engagement: [n] float32 engagement head outputs in [0, 1].
      quality: [n] float32 quality head outputs in [0, 1].
      model_version: the artifact version that produced the scores.
    """

    item_ids: np.ndarray
    retrieval_scores: np.ndarray
    engagement: np.ndarray
    quality: np.ndarray
    model_version: str

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("retrieval_scores", "engagement", "quality"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"CandidateSet.{name} has {len(getattr(self, name))} values for {n} items")

    def __len__(self) -> int:
        return len(self.item_ids)

    def to_bytes(self) -> bytes:
        version = self.model_version.encode()
        ids = "\x00".join(map(str, self.item_ids)).encode()
        n = len(self.item_ids)
        return b"".join((
            _HEAD.pack(_MAGIC, _FORMAT, n, len(version)), version,
            np.asarray(self.retrieval_scores, dtype="<f4").tobytes(),
            np.asarray(self.engagement, dtype="<f4").tobytes(),
            np.asarray(self.quality, dtype="<f4").tobytes(),
            struct.pack("<I", len(ids)), ids,
        ))

    @classmethod
    def from_bytes(cls, data: bytes) -> CandidateSet:
        """Decodes `to_bytes` output; raises CorruptEntryError for anything else.

        The score arrays are read-only views into `data` (a candidate set is never modified).
        """
        try:
            magic, fmt, n, vlen = _HEAD.unpack_from(data, 0)
            if magic != _MAGIC or fmt != _FORMAT:
                raise CorruptEntryError(f"not a candidate set (magic {magic!r}, format {fmt})")
            off = _HEAD.size
            version = data[off:off + vlen].decode()
            off += vlen
            # One read-only float32 view of all three score arrays: no copies.
            scores = np.frombuffer(data, dtype=_F32, count=3 * n, offset=off).reshape(3, n)
            off += 12 * n
            (blen,) = struct.unpack_from("<I", data, off)
            off += 4
            if off + blen != len(data):
                raise CorruptEntryError("candidate set length mismatch")
            ids = np.array(data[off:].decode().split("\x00") if n else [], dtype=object)
            if len(ids) != n:
                raise CorruptEntryError(f"candidate set has {len(ids)} ids for {n} scores")
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            if isinstance(e, CorruptEntryError):
                raise
            raise CorruptEntryError(f"corrupt candidate set: {e}") from e
        return cls(ids, scores[0], scores[1], scores[2], version)
