"""Topics as code: definitions match the contract; ``topics apply`` is idempotent on Kafka."""

from __future__ import annotations

import json

import pytest

from stream_app import topics as topics_mod
from stream_app.cli import main
from stream_app.topics import (
    TopicDefinitionError,
    load_topic_definitions,
)
from tests.support.contract import ALL_TOPICS, EHR_FORMAT_TOPICS
from tests.support.paths import REPO

# -- definitions (no broker) -------------------------------------------------------------


def test_definitions_cover_contract_topics_with_their_configs():
    defs = {d.name: d for d in load_topic_definitions(REPO / "topics")}
    assert set(defs) == set(ALL_TOPICS)
    for name, (direction, policy, retention) in ALL_TOPICS.items():
        d = defs[name]
        assert d.direction == direction
        assert d.configs["cleanup.policy"] == policy
        if retention is None:
            assert "retention.ms" not in d.configs
        else:
            assert int(d.configs["retention.ms"]) == retention
        assert d.partitions >= 1
        assert d.replication_factor == 1
        assert d.path is not None and d.path.name == f"{name}.json"
        if name in EHR_FORMAT_TOPICS:
            # FHIR / HL7 v2 values: no record schema, the format is named instead
            assert d.value_schema is None and d.value_format, name
            assert d.key == "any"
        else:
            schema = REPO / "topics" / d.value_schema
            assert schema.is_file(), schema


def test_default_topics_dir_is_the_repository_folder(monkeypatch):
    monkeypatch.delenv("CHARGECAP_TOPICS_DIR", raising=False)
    assert topics_mod.default_topics_dir() == REPO / "topics"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"partitions": 1}, "'name'"),
        ({"name": "x", "partitions": 0}, "'partitions'"),
        ({"name": "x", "partitions": 1, "replication_factor": "1"}, "'replication_factor'"),
        ({"name": "x", "partitions": 1, "configs": []}, "'configs'"),
    ],
)
def test_bad_definition_is_rejected_with_its_file(tmp_path, doc, message):
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(TopicDefinitionError, match=message) as info:
        load_topic_definitions(tmp_path)
    assert "bad.json" in str(info.value)


def test_empty_definition_folder_is_an_error(tmp_path):
    with pytest.raises(TopicDefinitionError, match="no topic definitions"):
        load_topic_definitions(tmp_path)


def test_cli_topics_apply_unreachable_broker_exits_1(capsys):
    argv = ["topics", "apply", "--broker", "kafka://127.0.0.1:1", "--topic-prefix", "x."]
    assert main(argv) == 1
    assert "cannot reach Kafka" in capsys.readouterr().err
