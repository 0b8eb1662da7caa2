"""Per-request fields appended to a memoized, already serialized response (the cache-hit fast path).

A memoized RecommendResponse is serialized once; each request then needs only its own
`request_id`. Protobuf parsers accept fields in any order and, for a non-repeated scalar or
string field, keep the LAST occurrence, so `memo_bytes + string_field(6, id)` parses to the
memo with that id set. When the appended fields have the message's highest field numbers, in
increasing order, and the memo leaves them unset, the result is also byte for byte what
`SerializeToString()` of the stamped message gives (upb writes fields in number order):
tests/serving/test_wire.py checks both against the slow path.
"""
from __future__ import annotations


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string_field(number: int, value: str) -> bytes:
    """The wire encoding of string field `number` set to `value` (tag, length, UTF-8 bytes); "" → b""
    (proto3 does not serialize an empty string, so neither does this)."""
    if not value:
        return b""
    data = value.encode("utf-8")
    tag = number << 3 | 2
    if tag < 0x80 and len(data) < 0x80:  # one-byte varints: every request id
        return bytes((tag, len(data))) + data
    return _varint(tag) + _varint(len(data)) + data
