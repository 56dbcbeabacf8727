"""The worker's Kafka producer: Faust's aiokafka producer, always idempotent, and the
aiokafka producer under it for batched sends.

acks=all and an idempotent producer without Faust's exactly_once mode: a produce retried
after a broker or network failure can then not write a message twice (a duplicate would
carry an equal, not a higher, revision). Faust asks `_settings_extra()` for these
settings only inside a transaction; the override gives them always.
"""

from __future__ import annotations

from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_app.streaming.seam.patch import overrides, require

IDEMPOTENT = {"acks": "all", "enable_idempotence": True}


@overrides(faust_aiokafka.Producer, "_settings_extra")
class IdempotentProducer(faust_aiokafka.Producer):
    def _settings_extra(self) -> dict[str, Any]:
        return dict(IDEMPOTENT)

    def kafka(self):
        """The started aiokafka producer (Faust has no public accessor)."""
        return self._ensure_producer()


def kafka_producer(app) -> Any:
    """The aiokafka producer under a started Faust app's producer."""
    producer = app.producer
    require(producer, "_ensure_producer")
    return producer._ensure_producer()


def new_batch_builder(producer, limit: int) -> BatchBuilder:
    """An empty record batch of at most `limit` bytes for an aiokafka producer (its own
    `create_batch()` takes no size, and its max_batch_size may exceed what a topic
    accepts: the broker applies max.message.bytes to the whole record batch)."""
    acc = producer._message_accumulator
    return BatchBuilder(min(limit, acc._batch_size), acc._compression_type)
