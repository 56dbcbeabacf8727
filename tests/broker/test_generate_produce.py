"""`generate --produce` against the real broker: every message arrives, in order per key."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from stream_app.devtools import generate as g
from tests.support.paths import REPO


@pytest.mark.integration
def test_produce_to_kafka_and_consume_back(kafka_bootstrap, tmp_path):
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from tests.support.kafka import make_unique_name

    prefix = make_unique_name("gen") + "."
    stream = g.generate_stream(21, records=500, days=2, malformed_rate=0.03,
                               topic_prefix=prefix)
    expected = stream.messages
    assert 450 <= len(expected) <= 600
    topics = sorted({t for t, _, _ in expected})

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:  # different partition counts on purpose
            await admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1)
                                       for t, n in zip(topics, (3, 1, 2), strict=True)])
        finally:
            await admin.close()

    async def consume() -> list[tuple[str, bytes | None, bytes]]:
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=kafka_bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    group_id=None)
        await consumer.start()
        got = []
        try:
            deadline = time.monotonic() + 60
            while len(got) < len(expected) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    got.extend((r.topic, r.key, r.value) for r in records)
        finally:
            await consumer.stop()
        return got

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(topics)
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-m", "stream_app", "generate", "--produce", "--seed", "21",
             "--records", "500", "--days", "2", "--malformed-rate", "0.03",
             "--broker", f"kafka://{kafka_bootstrap}", "--topic-prefix", prefix,
             "--rate", "400"],
            capture_output=True, cwd=REPO, env=env, timeout=180)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        assert proc.stdout == b""
        err = proc.stderr.decode(errors="replace")
        assert f"produced {len(expected)} of {len(expected)}" in err
        assert "messages sent" in err  # progress lines (>= 1 s at 400 msg/s)
        assert not re.search(r"(pt|enc|mar|emn|rx|ord)-[0-9a-f]{6}-", err), "ids on stderr"
        got = asyncio.run(consume())
        assert Counter(got) == Counter(expected)
        # order is kept per topic (one producer, per-partition order; check per key)
        for topic in topics:
            sent = [(k, v) for t, k, v in expected if t == topic and k is not None]
            recv = [(k, v) for t, k, v in got if t == topic and k is not None]
            per_key_sent: dict[bytes, list[bytes]] = {}
            per_key_recv: dict[bytes, list[bytes]] = {}
            for k, v in sent:
                per_key_sent.setdefault(k, []).append(v)
            for k, v in recv:
                per_key_recv.setdefault(k, []).append(v)
            assert per_key_sent == per_key_recv
    finally:
        asyncio.run(delete())
