"""Kafka helpers of the tests: unique names, is a broker answering, topic clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.support.paths import PROBE


def make_unique_name(prefix: str = "t") -> str:
    """A Kafka-safe name unique across tests and concurrent test sessions."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a Metadata request to ``host:port`` succeeds."""
    first = bootstrap.split(",")[0].split("://")[-1]
    result = subprocess.run(
        [sys.executable, str(PROBE), first, str(timeout)],
        capture_output=True,
        timeout=timeout + 10,
    )
    return result.returncode == 0


async def delete_topics_matching(bootstrap: str, match) -> int:
    """Deletes every topic whose name satisfies ``match`` (test clean-up); returns how many."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if match(t)]
        if names:
            await admin.delete_topics(names)
        return len(names)
    finally:
        await admin.close()


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> None:
    """Deletes every topic whose name starts with ``prefix`` (test clean-up)."""
    await delete_topics_matching(bootstrap, lambda t: t.startswith(prefix))
