"""Wire formats of the streaming worker (internal topics, table values, outputs).

Nothing here does I/O; everything is unit-testable.

* **Repartition topic** (`{app_id}-patient-records`): stage 1 writes one *bundle* per
  target partition and batch (header `k: bundle`, no key): the valid records of that
  batch whose `patient_id` maps to the partition (`partition_for()`, CRC-32 of the UTF-8
  patient id, so the worker can tell which partition owns a table key after recovery),
  each framed as origin topic index (0 administrations, 1 E/M, 2 dispenses), the input's
  Kafka timestamp in ms (decision latency is measured from it), origin partition and
  offset (for a dead letter raised in stage 2), length, then the *original* input bytes
  unchanged (`encode_bundle` / `iter_bundle`). One message per partition instead of one
  per record spares stage 2 Faust's per-message cost (docs/performance.md).
  Tick messages (timed settle/close/retention work) have no key, an empty value and the
  header `k: tick`.
* **Table values**: a 21-byte header (`version`, which is also the layout of the state
  bytes, `next_due` as a double, NaN = nothing due, `written_us`, `open_days`) followed
  by `PatientState.to_bytes()`. The header lets the worker rebuild its due index and
  gauges after recovery without deserialising every state.
* **Outputs** (`Output`, `encode_decisions`): orjson of the engine's decision dicts,
  headers `content-type`, `schema` and (alerts) `work_queue`.
* **Dead letters**: contract.md §3 plus `raw_base64` when the value is not valid UTF-8.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from stream_app.engine import STATE_LAYOUT
from stream_app.vocabulary import ALERT, LINE

# Header name on the internal repartition topic: the message kind (bundle or tick).
H_KIND = "k"
TICK = b"tick"
BUNDLE = b"bundle"
BUNDLE_HEADERS = [(H_KIND, BUNDLE)]
BUNDLE_BYTES = 1024 * 1024  # a bundle is cut at about this size (one record may exceed it)
_FRAME = struct.Struct(">BqiqI")  # origin, ts_ms, partition, offset, length
FRAME_SIZE = _FRAME.size

CONTENT_TYPE = ("content-type", b"application/json")
LINE_SCHEMA = ("schema", b"chargecap.charge-line.v1")
ALERT_SCHEMA = ("schema", b"chargecap.correction-alert.v1")
LINE_HEADERS = [CONTENT_TYPE, LINE_SCHEMA]

_STATE_HEADER = struct.Struct(">BdqI")
# The header's version is the layout of the PatientState bytes after it.
STATE_VERSION = STATE_LAYOUT
STATE_VERSIONS = (STATE_LAYOUT,)
STATE_HEADER_SIZE = _STATE_HEADER.size


def partition_for(key: bytes, partitions: int) -> int:
    """Partition of a patient key on the repartition topic (and its table changelog)."""
    return zlib.crc32(key) % partitions


def encode_state(
    next_due: float | None, written_us: int, open_days: int, state_bytes: bytes
) -> bytes:
    due = math.nan if next_due is None else float(next_due)
    return _STATE_HEADER.pack(STATE_VERSION, due, written_us, open_days) + state_bytes


def decode_state_header(value: bytes) -> tuple[float | None, int, int]:
    """(next_due, written_us, open_days) of a stored table value."""
    version, due, written, open_days = _STATE_HEADER.unpack_from(value, 0)
    if version not in STATE_VERSIONS:
        raise ValueError(f"unknown table value version {version}")
    return (None if math.isnan(due) else due), written, open_days


def state_version(value: bytes) -> int:
    """The layout of the PatientState bytes of a stored table value."""
    return value[0]


def state_payload(value: bytes) -> memoryview | bytes:
    return value[STATE_HEADER_SIZE:]


TICK_HEADERS = [(H_KIND, TICK)]


def encode_bundle(frames) -> list[bytes]:
    """Bundle values for (origin, ts_ms, partition, offset, raw) records, in order, each
    value about BUNDLE_BYTES at most."""
    out: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    pack = _FRAME.pack
    for origin, ts_ms, partition, offset, raw in frames:
        if parts and size + len(raw) > BUNDLE_BYTES:
            out.append(b"".join(parts))
            parts, size = [], 0
        parts.append(pack(origin, ts_ms, partition, offset, len(raw)))
        parts.append(raw)
        size += _FRAME.size + len(raw)
    if parts:
        out.append(b"".join(parts))
    return out


def iter_bundle(value: bytes):
    """(origin, ts_ms, partition, offset, raw) of each record of a bundle value. Raises
    ValueError on a truncated bundle."""
    unpack = _FRAME.unpack_from
    head = _FRAME.size
    pos, end = 0, len(value)
    while pos < end:
        if pos + head > end:
            raise ValueError("truncated bundle frame")
        origin, ts_ms, partition, offset, n = unpack(value, pos)
        pos += head
        if pos + n > end:
            raise ValueError("truncated bundle record")
        yield origin, ts_ms, partition, offset, value[pos:pos + n]
        pos += n


def parse_headers(headers) -> dict[str, bytes]:
    """Faust gives headers as a list of (str, bytes) pairs or a mapping."""
    if not headers:
        return {}
    if isinstance(headers, dict):
        return headers
    return {k: v for k, v in headers}


@dataclass(slots=True)
class Output:
    """One message to produce: kind is vocabulary.LINE, ALERT or DEAD."""

    kind: str
    key: bytes | None
    value: bytes
    headers: list
    record: dict | None = None  # decision dict (lines/alerts) for metrics
    input_ts: float | None = None  # seconds; for decision latency
    partition: int = -1
    count_value: bool = True  # False for re-emissions after recovery


def encode_decisions(decided: Iterable) -> list[Output]:
    """The messages of stage 2's decisions (processor.Decided): charge lines and
    correction alerts."""
    dumps = orjson.dumps
    out = []
    for d in decided:
        dec = d.decision
        v = dec.value
        if dec.kind == LINE:
            out.append(Output(LINE, dec.key.encode(), dumps(v), LINE_HEADERS, v, d.input_ts,
                              d.partition, d.count_value))
        else:
            out.append(Output(ALERT, dec.key.encode(), dumps(v),
                              alert_headers(v.get("work_queue")), v, d.input_ts,
                              d.partition, d.count_value))
    return out


def alert_headers(work_queue: str | None) -> list:
    hs = [CONTENT_TYPE, ALERT_SCHEMA]
    if work_queue:
        hs.append(("work_queue", work_queue.encode()))
    return hs


def dead_letter_value(
    *,
    error_code: str,
    error: str,
    field: str | None,
    raw: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    truncate_to: int | None = None,
) -> bytes:
    """The dead-letter record of contract.md §3 (Kafka flavour).

    `raw` is the original value decoded as UTF-8 (invalid sequences replaced); when the
    value is not valid UTF-8, `raw_base64` carries the exact original bytes as well.
    `key` is the original key decoded the same way (`key_base64` when not UTF-8).
    `truncate_to`: last resort when the dead-letter topic refuses the full record
    (`max.message.bytes`): `raw` keeps the first bytes, `raw_truncated: true` and
    `raw_size` say so.
    """
    out: dict = {"error_code": error_code, "error": error, "field": field}
    if truncate_to is not None and raw is not None and len(raw) > truncate_to:
        # Only when the full dead letter is larger than the topic accepts.
        out["raw_truncated"] = True
        out["raw_size"] = len(raw)
        raw = raw[:truncate_to]
    raw_text, raw_b64 = _text_and_b64(raw)
    out["raw"] = raw_text
    if raw_b64 is not None:
        out["raw_base64"] = raw_b64
    out["topic"] = topic
    out["partition"] = partition
    out["offset"] = offset
    key_text, key_b64 = _text_and_b64(key)
    out["key"] = key_text
    if key_b64 is not None:
        out["key_base64"] = key_b64
    return orjson.dumps(out)


def _text_and_b64(b: bytes | None) -> tuple[str | None, str | None]:
    if b is None:
        return None, None
    try:
        return bytes(b).decode("utf-8"), None
    except UnicodeDecodeError:
        return bytes(b).decode("utf-8", errors="replace"), base64.b64encode(b).decode("ascii")
