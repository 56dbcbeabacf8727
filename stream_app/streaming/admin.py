"""What the worker asks the broker before it starts: its internal topics exist, and how
large a record batch each output topic accepts."""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream_app.config import Settings
from stream_app.streaming.batching import DEFAULT_BATCH_LIMIT
from stream_app.topics import describe_configs
from stream_app.vocabulary import OUTPUT_TOPICS, changelog_topic, repartition_topic

REPARTITION_RETENTION_S = 7 * 86400


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                               client_id=f"{settings.app_id}-setup",
                               **settings.aiokafka_security_kwargs())


async def ensure_internal_topics(settings: Settings, opts, timeout: float = 30.0) -> None:
    """Create the internal topics before Faust subscribes, and wait until the broker's
    metadata lists them: a topic Faust creates itself at start-up may be missing from the
    first metadata it subscribes with ("Ignoring missing topic"), and the worker would
    then never be assigned its partitions until the next metadata refresh. `opts` is the
    worker's StreamOptions."""
    repartition, changelog = repartition_topic(settings.app_id), changelog_topic(settings.app_id)
    admin = _admin(settings)
    await admin.start()
    try:
        wanted = {
            repartition: {"cleanup.policy": "delete",
                          "retention.ms": str(REPARTITION_RETENTION_S * 1000),
                          "max.message.bytes": str(opts.max_request_size)},
            changelog: {"cleanup.policy": "compact",
                        "max.message.bytes": str(opts.max_request_size)},
        }
        existing = set(await admin.list_topics())
        new = [NewTopic(name, opts.partitions, opts.replication_factor, topic_configs=cfg)
               for name, cfg in wanted.items() if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(list(wanted))
            ok = all(d.get("error_code", 0) == 0 and len(d.get("partitions", ())) > 0
                     for d in described)
            if ok:
                for d in described:
                    if len(d["partitions"]) != opts.partitions:
                        raise RuntimeError(
                            f"internal topic {d['topic']} has {len(d['partitions'])} "
                            f"partitions, the worker is configured for {opts.partitions}")
                return
            if time.monotonic() > deadline:
                raise RuntimeError("internal topics did not appear in the broker metadata")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def output_limits(settings: Settings) -> dict[str, int]:
    """The largest record batch each output topic accepts (its max.message.bytes, else
    the broker's default), read at start-up. Produced batches are cut below it and dead
    letters above it are truncated *before* sending: a rejected batch would stop the
    worker (and break the idempotent producer's sequence numbers)."""
    names = [settings.topic(t) for t in OUTPUT_TOPICS]
    admin = _admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [n for n in names if n in existing]
        configs = await describe_configs(admin, present) if present else {}
        limits = {}
        for name in names:
            value = configs.get(name, {}).get("max.message.bytes", (None, 0))[0]
            limits[name] = int(value) if value else DEFAULT_BATCH_LIMIT
        return limits
    finally:
        await admin.close()
