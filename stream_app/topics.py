"""Topics as code: ``chargecap topics apply`` creates or updates the topics of ``topics/``.

Each ``topics/<name>.json`` defines one topic of contract.md §1 (name, partitions,
replication factor, configs, value schema). ``apply`` is idempotent:

* a missing topic is created with its partitions, replication factor and configs;
* an existing topic whose configs differ gets them updated (other per-topic overrides an
  operator set by hand are kept);
* a partition-count mismatch is reported and never "fixed" (adding partitions moves keys
  between partitions; removing them is impossible without deleting data);
* nothing is ever deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream_app.config import add_settings_arguments, kafka_bootstrap_servers, settings_from_args

CREATED = "created"
CONFIG_UPDATED = "config_updated"
UNCHANGED = "unchanged"
PARTITION_MISMATCH = "partition_mismatch"
ERROR = "error"

# Kafka error codes handled specially.
_TOPIC_ALREADY_EXISTS = 36
# config_source of DescribeConfigs v1+: 1 = DYNAMIC_TOPIC_CONFIG (a per-topic override).
_DYNAMIC_TOPIC_CONFIG = 1


@dataclass(frozen=True)
class TopicDef:
    """One topic definition file of ``topics/``."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)
    direction: str = ""
    key: str = ""
    value_schema: str | None = None
    value_format: str = ""  # topics whose values are not records (FHIR, HL7 v2)
    path: Path | None = None


@dataclass(frozen=True)
class Change:
    """What ``apply`` did (or found) for one topic."""

    topic: str  # the full (prefixed) name
    action: str  # created | config_updated | unchanged | partition_mismatch | error
    detail: str = ""
    # config_updated: {key: (old value or None, new value)}
    configs: Mapping[str, tuple[str | None, str]] = field(default_factory=dict)
    expected_partitions: int | None = None
    actual_partitions: int | None = None

    def __str__(self) -> str:
        text = f"{self.action:<18} {self.topic}"
        return f"{text}  {self.detail}" if self.detail else text


class TopicDefinitionError(ValueError):
    pass


def default_topics_dir() -> Path:
    """``CHARGECAP_TOPICS_DIR``, else the repository's ``topics/``, else ``./topics``."""
    env = os.environ.get("CHARGECAP_TOPICS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1] / "topics"
    if repo.is_dir():
        return repo
    return Path.cwd() / "topics"


def load_topic_definitions(topics_dir: Path | str | None = None) -> list[TopicDef]:
    """Reads every ``*.json`` directly in ``topics_dir`` (schemas live in a subfolder)."""
    directory = Path(topics_dir) if topics_dir is not None else default_topics_dir()
    files = sorted(directory.glob("*.json"))
    if not files:
        raise TopicDefinitionError(f"no topic definitions (*.json) in {directory}")
    defs = []
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TopicDefinitionError(f"{path}: not readable JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise TopicDefinitionError(f"{path}: must be a JSON object")
        name = doc.get("name")
        partitions = doc.get("partitions")
        replication = doc.get("replication_factor", 1)
        configs = doc.get("configs", {})
        if not isinstance(name, str) or not name:
            raise TopicDefinitionError(f"{path}: 'name' must be a non-empty string")
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise TopicDefinitionError(f"{path}: 'partitions' must be an integer >= 1")
        if not isinstance(replication, int) or isinstance(replication, bool) or replication < 1:
            raise TopicDefinitionError(f"{path}: 'replication_factor' must be an integer >= 1")
        if not isinstance(configs, dict):
            raise TopicDefinitionError(f"{path}: 'configs' must be an object")
        defs.append(
            TopicDef(
                name=name,
                partitions=partitions,
                replication_factor=replication,
                configs={str(k): _config_str(v) for k, v in configs.items()},
                direction=str(doc.get("direction", "")),
                key=str(doc.get("key", "")),
                value_schema=doc.get("value_schema"),
                value_format=str(doc.get("value_format", "")),
                path=path,
            )
        )
    names = [d.name for d in defs]
    if len(set(names)) != len(names):
        raise TopicDefinitionError(f"duplicate topic names in {directory}")
    return defs


def _config_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def describe_configs(
    admin: AIOKafkaAdminClient, names: Iterable[str]
) -> dict[str, dict[str, tuple[str | None, int]]]:
    """topic → {config: (value, config_source)}."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    if not resources:
        return {}
    out: dict[str, dict[str, tuple[str | None, int]]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise RuntimeError(
                    f"describe configs of {resource['resource_name']} failed: "
                    f"error {resource['error_code']} {resource['error_message'] or ''}".strip()
                )
            entries = {}
            for entry in resource["config_entries"]:
                source = entry.get("config_source")
                if source is None:  # DescribeConfigs v0: is_default instead of a source
                    source = 5 if entry.get("is_default") else _DYNAMIC_TOPIC_CONFIG
                entries[entry["config_names"]] = (entry["config_value"], source)
            out[resource["resource_name"]] = entries
    return out


async def apply_topics(
    bootstrap: str,
    prefix: str = "",
    topics_dir: Path | str | None = None,
    *,
    replication_factor: int | None = None,
    dry_run: bool = False,
    client_kwargs: Mapping[str, Any] | None = None,
    timeout_ms: int = 30_000,
) -> list[Change]:
    """Creates missing topics and updates differing configs; returns one Change per finding.

    ``bootstrap``: ``host:port`` or ``kafka://host:port``, comma-separated for several.
    ``prefix`` is prepended to every topic name. ``replication_factor`` overrides the
    definitions' (for production clusters). ``client_kwargs`` go to the aiokafka admin
    client (security settings: ``Settings.aiokafka_security_kwargs()``). With
    ``dry_run`` nothing is changed and the Changes say what would be done.
    """
    defs = load_topic_definitions(topics_dir)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka_bootstrap_servers(bootstrap),
        client_id="chargecap-topics",
        request_timeout_ms=timeout_ms,
        **dict(client_kwargs or {}),
    )
    await admin.start()
    try:
        return await _apply(admin, defs, prefix, replication_factor, dry_run, timeout_ms)
    finally:
        await admin.close()


async def _apply(
    admin: AIOKafkaAdminClient,
    defs: list[TopicDef],
    prefix: str,
    replication_factor: int | None,
    dry_run: bool,
    timeout_ms: int,
) -> list[Change]:
    changes: list[Change] = []
    wanted = {prefix + d.name: d for d in defs}
    existing = set(await admin.list_topics())

    # 1. Create what is missing.
    missing = [name for name in wanted if name not in existing]
    if missing and not dry_run:
        new_topics = [
            NewTopic(
                name,
                wanted[name].partitions,
                replication_factor or wanted[name].replication_factor,
                topic_configs=dict(wanted[name].configs),
            )
            for name in missing
        ]
        response = (await admin.create_topics(new_topics, timeout_ms=timeout_ms)).to_object()
        for err in response["topic_errors"]:
            name, code = err["topic"], err["error_code"]
            if code == 0:
                changes.append(_created(name, wanted[name], replication_factor))
            elif code == _TOPIC_ALREADY_EXISTS:
                existing.add(name)  # created concurrently: check it like any other
            else:
                changes.append(
                    Change(name, ERROR, f"create failed: error {code} {err['error_message'] or ''}")
                )
    elif missing:
        changes.extend(_created(name, wanted[name], replication_factor) for name in missing)

    created = [c.topic for c in changes if c.action == CREATED]
    if created and not dry_run:
        await _wait_for_topics(admin, created, timeout_ms)

    # 2. Compare what exists (never describe missing topics: Metadata may auto-create them).
    present = sorted(name for name in wanted if name in existing)
    if not present:
        return _ordered(changes, wanted)
    described = {t["topic"]: t for t in await admin.describe_topics(present)}
    configs = await describe_configs(admin, present)
    to_alter: list[ConfigResource] = []
    for name in present:
        definition = wanted[name]
        actual_partitions = len(described.get(name, {}).get("partitions", []))
        mismatch = actual_partitions != definition.partitions
        if mismatch:
            changes.append(
                Change(
                    name,
                    PARTITION_MISMATCH,
                    f"has {actual_partitions} partitions, definition says "
                    f"{definition.partitions}; not changed (would move keys between partitions)",
                    expected_partitions=definition.partitions,
                    actual_partitions=actual_partitions,
                )
            )
        current = configs.get(name, {})
        diff = {
            key: (current.get(key, (None, 0))[0], value)
            for key, value in definition.configs.items()
            if current.get(key, (None, 0))[0] != value
        }
        if not diff:
            if not mismatch:
                changes.append(Change(name, UNCHANGED))
            continue
        # AlterConfigs replaces the topic's whole set of overrides: keep the others.
        overrides = {
            key: value
            for key, (value, source) in current.items()
            if source == _DYNAMIC_TOPIC_CONFIG and value is not None
        }
        overrides.update(definition.configs)
        to_alter.append(ConfigResource(ConfigResourceType.TOPIC, name, configs=overrides))
        changes.append(
            Change(
                name,
                CONFIG_UPDATED,
                ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(diff.items())),
                configs=diff,
            )
        )
    if to_alter and not dry_run:
        failed = {}
        for response in await admin.alter_configs(to_alter):
            for resource in response.to_object()["resources"]:
                if resource["error_code"]:
                    failed[resource["resource_name"]] = (
                        f"config update failed: error {resource['error_code']} "
                        f"{resource['error_message'] or ''}".strip()
                    )
        await _wait_for_configs(
            admin, {r.name: r.configs for r in to_alter if r.name not in failed}, timeout_ms
        )
        changes = [
            Change(c.topic, ERROR, failed[c.topic]) if c.action == CONFIG_UPDATED and c.topic in failed else c
            for c in changes
        ]
    return _ordered(changes, wanted)


async def _wait_for_topics(admin: AIOKafkaAdminClient, names: list[str], timeout_ms: int) -> None:
    """Waits until the broker's metadata shows every new topic with a leader per partition.

    KRaft commits a creation before every broker's metadata cache has it; callers that
    produce right after ``apply_topics`` should not see UNKNOWN_TOPIC_OR_PARTITION.
    """
    deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
    pending = set(names)
    while pending:
        if pending <= set(await admin.list_topics()):
            for topic in await admin.describe_topics(sorted(pending)):
                parts = topic.get("partitions", [])
                if not topic["error_code"] and parts and all(p["leader"] >= 0 for p in parts):
                    pending.discard(topic["topic"])
        if not pending or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.1)


async def _wait_for_configs(
    admin: AIOKafkaAdminClient, wanted: Mapping[str, Mapping[str, str]], timeout_ms: int
) -> None:
    """Waits until DescribeConfigs shows the altered values (metadata propagates async)."""
    deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
    pending = dict(wanted)
    while pending:
        current = await describe_configs(admin, pending)
        pending = {
            name: configs
            for name, configs in pending.items()
            if any(current.get(name, {}).get(k, (None, 0))[0] != v for k, v in configs.items())
        }
        if not pending or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.1)


def _created(name: str, definition: TopicDef, replication_factor: int | None) -> Change:
    configs = ", ".join(f"{k}={v}" for k, v in sorted(definition.configs.items()))
    rf = replication_factor or definition.replication_factor
    return Change(
        name,
        CREATED,
        f"partitions={definition.partitions} replication={rf} {configs}".strip(),
        configs={k: (None, v) for k, v in definition.configs.items()},
        expected_partitions=definition.partitions,
        actual_partitions=definition.partitions,
    )


def _ordered(changes: list[Change], wanted: Mapping[str, TopicDef]) -> list[Change]:
    order = {name: i for i, name in enumerate(wanted)}
    return sorted(changes, key=lambda c: order.get(c.topic, len(order)))


# -- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="topics_command", metavar="ACTION")
    sub.required = True
    apply = sub.add_parser(
        "apply",
        help="create missing topics and update configs, idempotently",
        description="Creates every topic defined in topics/ that is missing, updates differing "
        "configs of existing ones and reports partition-count mismatches (never deletes).",
    )
    apply.add_argument(
        "--topics-dir",
        type=Path,
        default=None,
        help="folder of topic definitions (default: CHARGECAP_TOPICS_DIR or the repo's topics/)",
    )
    apply.add_argument(
        "--replication-factor",
        type=int,
        default=None,
        help="override every definition's replication factor when creating (production)",
    )
    apply.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    apply.add_argument("--strict", action="store_true", help="exit 1 when a partition count differs")
    add_settings_arguments(apply)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        changes = asyncio.run(
            apply_topics(
                settings.broker,
                settings.topic_prefix,
                args.topics_dir,
                replication_factor=args.replication_factor,
                dry_run=args.dry_run,
                client_kwargs=settings.aiokafka_security_kwargs(),
            )
        )
    except TopicDefinitionError as exc:
        print(f"topics apply: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # connection failures: one clear line
        print(
            f"topics apply: cannot reach Kafka at {settings.bootstrap_servers}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    for change in changes:
        print(("(dry run) " if args.dry_run else "") + str(change))
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    print(f"topics apply: {summary}", file=sys.stderr)
    if counts.get(ERROR):
        return 1
    if args.strict and counts.get(PARTITION_MISMATCH):
        return 1
    return 0
