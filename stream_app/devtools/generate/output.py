"""Where a generated stream goes: an NDJSON file (or stdout) or a Kafka producer."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from stream_app.devtools.generate.stream import GeneratedStream, Message


def write_ndjson(stream: GeneratedStream, path: str, include_malformed: bool) -> None:
    out = sys.stdout.buffer if path == "-" else open(path, "wb")  # noqa: SIM115
    try:
        buf: list[bytes] = []
        for line in stream.iter_ndjson(include_malformed):
            buf.append(line)
            if len(buf) >= 5000:
                buf.append(b"")
                out.write(b"\n".join(buf))
                buf.clear()
        if buf:
            buf.append(b"")
            out.write(b"\n".join(buf))
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()


def write_formatted(messages: list[Message], fmt: str, path: str) -> None:
    """`generate --format fhir|hl7v2` to a file (formats.encode_messages' messages): FHIR
    as NDJSON, a Bundle per line with the records FHIR cannot carry as canonical lines
    among them (replay reads both); HL7 v2 as an `.hl7` file of messages (segments ended
    by CR, CRLF between messages) and the other lines in `{path}.canonical.ndjson`."""
    from stream_app.vocabulary import TOPIC_HL7V2

    if fmt != "hl7v2":
        _write(path, b"".join(v + b"\n" for _t, _k, v in messages))
        return
    hl7 = [v for t, _k, v in messages if t.endswith(TOPIC_HL7V2)]
    other = [v for t, _k, v in messages if not t.endswith(TOPIC_HL7V2)]
    _write(path, b"".join(m + b"\r\n" for m in hl7))
    _write(f"{path}.canonical.ndjson", b"".join(v + b"\n" for v in other))


def _write(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as fh:
        fh.write(data)


async def produce(
    messages: list[Message],
    bootstrap_servers: str,
    *,
    rate: float = 0.0,
    duration: float | None = None,
    chunk: int = 2000,
    progress: bool = True,
    producer_kwargs: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send messages to Kafka in order; returns how many were acknowledged.

    `rate` > 0 paces the sends (messages per second); sends are batched: the futures of
    one chunk are gathered together, never one await per message. Progress goes to
    stderr once a second (counts only) unless `progress` is false; `on_progress(sent,
    total)` is called after every chunk (e.g. for the demo's live display). The producer
    is flushed and stopped at the end (also when cancelled).
    """
    from aiokafka import AIOKafkaProducer

    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "linger_ms": 20,
        "max_batch_size": 512 * 1024,
        "request_timeout_ms": 30000,
    }
    kwargs.update(producer_kwargs or {})
    producer = AIOKafkaProducer(**kwargs)
    await producer.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    next_report = t0 + 1.0
    sent = 0
    total = len(messages)
    if rate > 0:
        chunk = max(1, min(chunk, int(rate / 10) or 1))  # ~10 chunks per second
    try:
        i = 0
        while i < total:
            now = loop.time()
            if duration is not None and now - t0 >= duration:
                break
            if rate > 0:
                due = t0 + i / rate
                if due > now:
                    await asyncio.sleep(due - now)
            batch = messages[i:i + chunk]
            futures = []
            for topic, key, value in batch:
                futures.append(await producer.send(topic, value=value, key=key))
            await asyncio.gather(*futures)
            i += len(batch)
            sent = i
            if on_progress is not None:
                on_progress(sent, total)
            now = loop.time()
            if progress and now >= next_report:
                elapsed = now - t0
                print(f"generate: {sent}/{total} messages sent, "
                      f"{sent / elapsed:,.0f} msg/s, {elapsed:.0f} s", file=sys.stderr)
                next_report = now + 1.0
        await producer.flush()
    finally:
        await producer.stop()
    return sent
