"""``topics apply`` on the real broker: creates, then reports unchanged; updates changed
configs and keeps other overrides; reports a partition mismatch without fixing it."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream_app.cli import main
from stream_app.topics import (
    CONFIG_UPDATED,
    CREATED,
    PARTITION_MISMATCH,
    UNCHANGED,
    apply_topics,
    load_topic_definitions,
)
from tests.support.contract import ALL_TOPICS, DAY_MS
from tests.support.kafka import delete_topics_with_prefix


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    return admin


async def _topic_configs(admin: AIOKafkaAdminClient, name: str) -> dict[str, str]:
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    [resource] = response.to_object()["resources"]
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


async def _wait_config(admin: AIOKafkaAdminClient, name: str, key: str, value: str) -> None:
    """Config changes reach the brokers' metadata asynchronously (KRaft): poll."""
    for _ in range(100):
        if (await _topic_configs(admin, name)).get(key) == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}: {key} never became {value}")


async def _partitions(admin: AIOKafkaAdminClient, name: str) -> int:
    [topic] = await admin.describe_topics([name])
    return len(topic["partitions"])


@pytest.fixture
async def prefix(kafka_bootstrap, topic_prefix):
    yield topic_prefix
    await delete_topics_with_prefix(kafka_bootstrap, topic_prefix)


@pytest.mark.integration
async def test_apply_creates_then_reports_unchanged(kafka_bootstrap, prefix):
    first = await apply_topics(kafka_bootstrap, prefix)
    assert {c.topic for c in first} == {prefix + name for name in ALL_TOPICS}
    assert [c.action for c in first] == [CREATED] * len(ALL_TOPICS)

    admin = await _admin(kafka_bootstrap)
    try:
        assert set(await admin.list_topics()) >= {prefix + n for n in ALL_TOPICS}
        defs = {d.name: d for d in load_topic_definitions()}
        for name, (_, policy, retention) in ALL_TOPICS.items():
            configs = await _topic_configs(admin, prefix + name)
            assert configs["cleanup.policy"] == policy
            if retention is not None:
                assert configs["retention.ms"] == str(retention)
            assert await _partitions(admin, prefix + name) == defs[name].partitions
    finally:
        await admin.close()

    second = await apply_topics(f"kafka://{kafka_bootstrap}", prefix)
    assert [(c.topic, c.action) for c in second] == [(c.topic, UNCHANGED) for c in first]


@pytest.mark.integration
async def test_changed_config_is_updated_and_other_overrides_kept(kafka_bootstrap, prefix):
    await apply_topics(kafka_bootstrap, prefix)
    name = prefix + "billing.dead-letters"
    admin = await _admin(kafka_bootstrap)
    try:
        # Someone changes retention by hand and adds an unrelated override.
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    name,
                    configs={
                        "cleanup.policy": "delete",
                        "retention.ms": "1000",
                        "max.message.bytes": "8388608",  # as defined: alter_configs
                        "segment.ms": "3600000",  # replaces every override at once
                    },
                )
            ]
        )
        await _wait_config(admin, name, "retention.ms", "1000")

        dry = await apply_topics(kafka_bootstrap, prefix, dry_run=True)
        assert [c.topic for c in dry if c.action == CONFIG_UPDATED] == [name]
        assert (await _topic_configs(admin, name))["retention.ms"] == "1000"

        changes = await apply_topics(kafka_bootstrap, prefix)
        updated = [c for c in changes if c.action == CONFIG_UPDATED]
        assert [c.topic for c in updated] == [name]
        assert updated[0].configs == {"retention.ms": ("1000", str(30 * DAY_MS))}
        assert all(c.action == UNCHANGED for c in changes if c.topic != name)

        configs = await _topic_configs(admin, name)
        assert configs["retention.ms"] == str(30 * DAY_MS)
        assert configs["segment.ms"] == "3600000"  # the operator's override stays

        again = await apply_topics(kafka_bootstrap, prefix)
        assert all(c.action == UNCHANGED for c in again)
    finally:
        await admin.close()


@pytest.mark.integration
async def test_partition_mismatch_is_reported_not_fixed(kafka_bootstrap, prefix):
    name = prefix + "ehr.em-services"
    admin = await _admin(kafka_bootstrap)
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"retention.ms": "1000"})])
        changes = await apply_topics(kafka_bootstrap, prefix)
        mine = [c for c in changes if c.topic == name]
        assert {c.action for c in mine} == {PARTITION_MISMATCH, CONFIG_UPDATED}
        mismatch = next(c for c in mine if c.action == PARTITION_MISMATCH)
        assert (mismatch.actual_partitions, mismatch.expected_partitions) == (1, 3)
        assert "not changed" in mismatch.detail
        assert all(c.action == CREATED for c in changes if c.topic != name)
        assert await _partitions(admin, name) == 1  # never recreated or extended

        again = await apply_topics(kafka_bootstrap, prefix)
        assert [c.action for c in again if c.topic == name] == [PARTITION_MISMATCH]
    finally:
        await admin.close()


@pytest.mark.integration
def test_cli_topics_apply(kafka_bootstrap, prefix, capsys, monkeypatch):
    monkeypatch.setenv("CHARGECAP_TOPIC_PREFIX", prefix)
    assert main(["topics", "apply", "--broker", f"kafka://{kafka_bootstrap}"]) == 0
    out = capsys.readouterr().out
    assert out.count("created") == len(ALL_TOPICS)
    assert f"{prefix}billing.charge-lines" in out

    monkeypatch.delenv("CHARGECAP_TOPIC_PREFIX")
    argv = ["topics", "apply", "--broker", kafka_bootstrap, "--topic-prefix", prefix]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("unchanged") == len(ALL_TOPICS)
    assert "created" not in out


