"""Reading Envoy's xDS requests leniently.

Envoy subscribes to a secret named after each TLS server name it sees, whatever its bytes, and
sends it as a proto3 `string`, which must be UTF-8: a ClientHello whose SNI is not UTF-8 makes
the whole request unparseable, and a strict server ends the stream. Envoy then reconnects and
subscribes to the same name again, forever, and no new name gets a certificate any more.

`lenient_delta_request` parses a request as it is when it can; otherwise it drops what cannot be
a resource name (a subscription, an unsubscription, a held version) and decodes Envoy's error
text with replacement characters, then parses what is left. The names dropped are logged; their
handshakes get no certificate and time out, and nothing else is affected.
"""

from __future__ import annotations

import logging

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

# DeltaDiscoveryRequest's fields, as numbered in envoy/service/discovery/v3/discovery.proto.
_TYPE_URL = 2
_SUBSCRIBE = 3
_UNSUBSCRIBE = 4
_INITIAL_VERSIONS = 5  # map<string, string>: entries with key 1, value 2
_NONCE = 6
_ERROR_DETAIL = 7  # google.rpc.Status: its message is field 2
_NAMES = (_SUBSCRIBE, _UNSUBSCRIBE)
_LENGTH_DELIMITED = 2


class WireError(ValueError):
    """Bytes that are not a protobuf message at all."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(data: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """The top-level fields of a message: (number, wire type, raw bytes of the whole field,
    payload of a length-delimited field or b"")."""
    out = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        payload = b""
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            payload = data[pos : pos + length]
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise WireError("truncated field")
        out.append((number, wire_type, data[start:pos], payload))
    return out


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LENGTH_DELIMITED) + _encode_varint(len(payload)) + payload


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _lossy(number: int, payload: bytes) -> bytes:
    """A length-delimited string field, with what is not UTF-8 replaced."""
    return _field(number, payload.decode("utf-8", "replace").encode())


def _status(payload: bytes) -> bytes:
    """google.rpc.Status with its message made UTF-8 (Envoy's error may quote a bad name)."""
    out = b""
    for number, wire_type, raw, inner in fields(payload):
        if number == 2 and wire_type == _LENGTH_DELIMITED and not _utf8(inner):
            out += _lossy(number, inner)
        else:
            out += raw
    return out


def sanitize_delta_request(data: bytes) -> tuple[bytes, list[bytes]]:
    """The request without the names that are not UTF-8 (those names are returned), every
    other string made UTF-8."""
    out = b""
    dropped = []
    for number, wire_type, raw, payload in fields(data):
        if wire_type != _LENGTH_DELIMITED:
            out += raw
        elif number in _NAMES and not _utf8(payload):
            dropped.append(payload)
        elif number == _INITIAL_VERSIONS:
            entry = {n: p for n, w, _, p in fields(payload) if w == _LENGTH_DELIMITED}
            if all(_utf8(v) for v in entry.values()):
                out += raw
            else:
                dropped.append(entry.get(1, b""))
        elif number in (_TYPE_URL, _NONCE) and not _utf8(payload):
            out += _lossy(number, payload)
        elif number == _ERROR_DETAIL:
            out += _field(number, _status(payload))
        else:
            out += raw
    return out, dropped


def lenient_delta_request(data: bytes) -> discovery_pb2.DeltaDiscoveryRequest:
    """Parse a DeltaDiscoveryRequest, leaving out what cannot be parsed (see the module)."""
    try:
        return discovery_pb2.DeltaDiscoveryRequest.FromString(data)
    except DecodeError:
        pass
    clean, dropped = sanitize_delta_request(data)
    for name in dropped:
        log.warning("ignoring a resource name that is not UTF-8: %r", name[:300])
    try:
        return discovery_pb2.DeltaDiscoveryRequest.FromString(clean)
    except DecodeError:
        # The node (field 1, on a stream's first request only) is the last string left.
        log.warning("ignoring an unparseable node description")
        return discovery_pb2.DeltaDiscoveryRequest.FromString(
            b"".join(raw for number, _, raw, _ in fields(clean) if number != 1)
        )
