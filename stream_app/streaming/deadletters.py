"""Dead letters: building them (contract.md §3), fitting them to what the dead-letter topic
accepts, and sending them.

A dead letter carries the original value, which may be as large as the largest input the
worker accepts; the dead-letter topic may accept less. One larger than the topic's limit
is sent with `raw` truncated (codecs.dead_letter_value says so in the record) rather than
refused: a refused record would stop the worker.
"""

from __future__ import annotations

import asyncio
import logging

from stream_app.engine import DeadLetter
from stream_app.streaming import codecs
from stream_app.streaming.codecs import Output
from stream_app.vocabulary import DEAD

log = logging.getLogger(__name__)

DEAD_HEADERS = [codecs.CONTENT_TYPE, ("schema", b"chargecap.dead-letter.v1")]
TRUNCATED_RAW_BYTES = 256 * 1024
RECORD_OVERHEAD = 4096  # key, headers and record framing around a dead letter's value


def dead_letter_output(dl: DeadLetter, *, raw: bytes | None, topic: str, partition: int,
                       offset: int, key: bytes | None) -> Output:
    """The dead letter of a record (`topic`, `partition`, `offset`: where it was read)."""
    value = codecs.dead_letter_value(
        error_code=dl.error_code, error=dl.error, field=dl.field, raw=raw, topic=topic,
        partition=partition, offset=offset, key=key,
    )
    out = Output(DEAD, key, value, DEAD_HEADERS)
    out.record = {"dl": dl, "raw": raw, "topic": topic, "partition": partition,
                  "offset": offset}
    return out


def truncated_dead_letter(out: Output) -> Output:
    """The same dead letter with `raw` cut to TRUNCATED_RAW_BYTES (topic refused it)."""
    r = out.record
    dl = r["dl"]
    value = codecs.dead_letter_value(
        error_code=dl.error_code, error=dl.error, field=dl.field, raw=r["raw"],
        topic=r["topic"], partition=r["partition"], offset=r["offset"], key=out.key,
        truncate_to=TRUNCATED_RAW_BYTES,
    )
    return Output(DEAD, out.key, value, DEAD_HEADERS)


def fit_dead_letter(out: Output, topic_limit: int) -> Output:
    """`out`, or its truncated form when it is larger than the topic accepts."""
    if len(out.value) > topic_limit - RECORD_OVERHEAD:
        log.warning("dead letter larger than the topic accepts; sending it with raw "
                    "truncated")
        return truncated_dead_letter(out)
    return out


def refused_as_too_large(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return "TooLarge" in text or "too large" in text.lower()


class DeadLetterSender:
    """Sends dead letters through a Faust producer's `send` and waits once for all of
    them. A dead letter the topic refuses as too large is sent again with `raw`
    truncated; any other failure raises, which stops the worker before the batch's
    input offsets are committed (at-least-once)."""

    def __init__(self, send, topic: str, topic_limit: int) -> None:
        self.send_one = send  # faust Producer.send(topic, key, value, partition, ts, headers)
        self.topic = topic
        self.topic_limit = topic_limit

    async def send(self, dead: list[Output]) -> None:
        if not dead:
            return
        send, topic = self.send_one, self.topic
        futures = []
        for out in dead:
            fitted = fit_dead_letter(out, self.topic_limit)
            try:
                futures.append(await send(topic, fitted.key, fitted.value, None, None,
                                          fitted.headers))
            except Exception as exc:
                if not refused_as_too_large(exc):
                    raise
                futures.append(await self._send_truncated(out))
        results = await asyncio.gather(*futures, return_exceptions=True)
        retry = []
        for out, res in zip(dead, results, strict=True):
            if isinstance(res, BaseException):
                if not refused_as_too_large(res):
                    raise res
                retry.append(await self._send_truncated(out))
        if retry:
            await asyncio.gather(*retry)

    async def _send_truncated(self, out: Output):
        log.warning("dead letter larger than the topic accepts; sending it with raw truncated")
        t = truncated_dead_letter(out)
        return await self.send_one(self.topic, t.key, t.value, None, None, t.headers)
