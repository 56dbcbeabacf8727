"""Stage 1's routing without a broker (stage1.route): valid records go, byte for byte, to
the repartition partition of their patient; invalid ones become dead letters naming where
they were read (contract.md §3)."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import orjson

from stream_app.streaming import codecs, stage1
from stream_app.vocabulary import (
    DEAD,
    FHIR_REFERENCE_UNRESOLVED,
    FHIR_UNSUPPORTED_RESOURCE,
    HL7_UNSUPPORTED_MESSAGE,
    INPUT_TOPICS,
    INVALID_ENCODING,
    INVALID_JSON,
    MISSING_FIELD,
    PROCESSING_ERROR,
    TOO_LARGE,
    TOPIC_DISPENSES,
    TOPIC_EM_SERVICES,
    TOPIC_FHIR,
    TOPIC_HL7V2,
    TOPIC_MEDICATION_ADMINISTRATIONS,
    WORKER_INPUT_TOPICS,
)

EXAMPLE = Path(__file__).resolve().parents[2].parent / "shared/spec/examples/office-visit.ndjson"
ORIGIN_OF = {name: i for i, name in enumerate(INPUT_TOPICS)}
TOPIC_OF = {"drug.dispensed": TOPIC_DISPENSES, "medication.administered":
            TOPIC_MEDICATION_ADMINISTRATIONS, "em.service": TOPIC_EM_SERVICES}


def _msg(value, topic=TOPIC_MEDICATION_ADMINISTRATIONS, partition=0, offset=0, key=None,
         timestamp=1_741_961_000.5):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key,
                           value=value, timestamp=timestamp)


def _example_messages():
    lines = EXAMPLE.read_bytes().splitlines()
    return [_msg(raw, topic=TOPIC_OF[orjson.loads(raw)["event_type"]], partition=i % 2,
                 offset=10 + i, key=b"P100") for i, raw in enumerate(lines)]


def _route(messages, partitions=6, max_bytes=1_048_576):
    return stage1.route(messages, origin_of=ORIGIN_OF, partitions=partitions,
                        max_message_bytes=max_bytes, timezone="UTC", clock=lambda: 99.0)


def test_a_patients_records_go_unchanged_to_its_partition_in_one_bundle():
    messages = _example_messages()
    routed = _route(messages)
    assert routed.dead_letters == []
    assert [p for p, _ in routed.bundles] == [codecs.partition_for(b"P100", 6)]
    frames = list(codecs.iter_bundle(routed.bundles[0][1]))
    assert [(f[0], f[1], f[2], f[3], bytes(f[4])) for f in frames] == [
        (ORIGIN_OF[m.topic], 1_741_961_000_500, m.partition, m.offset, m.value)
        for m in messages]
    assert routed.consumed == {TOPIC_DISPENSES: 1, TOPIC_MEDICATION_ADMINISTRATIONS: 1,
                               TOPIC_EM_SERVICES: 1}


def test_patients_of_different_partitions_get_one_bundle_each_in_partition_order():
    raw = EXAMPLE.read_bytes().splitlines()[1]
    patients = [f"P{i}" for i in range(40)]
    messages = [_msg(raw.replace(b'"P100"', f'"{p}"'.encode()), offset=i)
                for i, p in enumerate(patients)]
    routed = _route(messages, partitions=4)
    expected = sorted({codecs.partition_for(p.encode(), 4) for p in patients})
    assert [p for p, _ in routed.bundles] == expected
    for p, bundle in routed.bundles:
        for frame in codecs.iter_bundle(bundle):
            pid = orjson.loads(frame[4])["patient_id"]
            assert codecs.partition_for(pid.encode(), 4) == p


def test_invalid_records_become_dead_letters_naming_where_they_were_read():
    good = _example_messages()[1]
    bad = _msg(b'{"event_type": ', topic=TOPIC_EM_SERVICES, partition=2, offset=41,
               key=b"k-1")
    routed = _route([good, bad])
    assert len(routed.bundles) == 1
    [dead] = routed.dead_letters
    assert dead.kind == DEAD
    body = orjson.loads(dead.value)
    assert body["error_code"] == INVALID_JSON
    assert (body["topic"], body["partition"], body["offset"], body["key"]) == (
        TOPIC_EM_SERVICES, 2, 41, "k-1")
    assert body["raw"] == '{"event_type": '


def test_a_value_over_the_limit_is_too_large_without_being_parsed(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a too-large value must not be parsed")

    monkeypatch.setattr(stage1, "parse_record", never)
    routed = _route([_msg(b"x" * 101)], max_bytes=100)
    assert routed.bundles == []
    [dead] = routed.dead_letters
    assert orjson.loads(dead.value)["error_code"] == TOO_LARGE


def test_a_parser_failure_is_a_dead_letter_not_a_stopped_worker(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(stage1, "parse_record", broken)
    routed = _route(_example_messages())
    assert routed.bundles == []
    assert [orjson.loads(d.value)["error_code"] for d in routed.dead_letters] == \
        [PROCESSING_ERROR] * 3


def test_a_message_without_a_value_is_a_dead_letter():
    routed = _route([_msg(None, offset=5)])
    [dead] = routed.dead_letters
    body = orjson.loads(dead.value)
    assert body["raw"] == "" and body["offset"] == 5


# ------------------------------------------------------------------ EHR-format topics
# ehr-mapping.md §1: a message of ehr.fhir / ehr.hl7v2 is adapted in-process; its records
# go on like canonical ones, its refusals are dead letters of the message.

EXAMPLES = EXAMPLE.parent
WORKER_ORIGIN_OF = {name: i for i, name in enumerate(WORKER_INPUT_TOPICS)}


def _adapters(site_dir=None):
    from stream_app.adapters.site import load_site_config
    from stream_app.rules import load_rules

    return stage1.ehr_adapters(lambda name: name, load_site_config(site_dir), load_rules(None),
                               "UTC")


def _route_ehr(messages, adapters=None, partitions=6):
    return stage1.route(messages, origin_of=WORKER_ORIGIN_OF, partitions=partitions,
                        max_message_bytes=1_048_576, timezone="UTC",
                        adapters=_adapters() if adapters is None else adapters,
                        clock=lambda: 99.0)


def _hl7_messages() -> list[bytes]:
    """office-visit.hl7, one message per Kafka record (as an interface engine sends)."""
    text = (EXAMPLES / "office-visit.hl7").read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return [b"MSH" + part.strip(b"\r") for part in text.split(b"MSH")[1:]]


def _frames(routed):
    return [(p, f) for p, bundle in routed.bundles for f in codecs.iter_bundle(bundle)]


def test_a_fhir_bundle_becomes_the_canonical_records_of_its_patient():
    # ehr-mapping.md §7: the office-visit Bundle carries E100, note-1, mar-1 and disp-1
    msg = _msg((EXAMPLES / "office-visit.fhir.json").read_bytes(), topic=TOPIC_FHIR,
               partition=2, offset=77, key=b"Bundle/office-visit-E100")
    routed = _route_ehr([msg])
    assert routed.dead_letters == []
    frames = _frames(routed)
    assert {p for p, _ in frames} == {codecs.partition_for(b"P100", 6)}
    assert {f[:4] for _, f in frames} == {
        (WORKER_ORIGIN_OF[TOPIC_FHIR], 1_741_961_000_500, 2, 77)}
    records = [orjson.loads(f[4]) for _, f in frames]
    assert sorted((r["event_type"], r["record_id"]) for r in records) == [
        ("drug.dispensed", "disp-1"), ("em.service", "note-1"),
        ("encounter.updated", "E100"), ("medication.administered", "mar-1")]
    assert {r["patient_id"] for r in records} == {"P100"}
    assert routed.records == 4
    assert routed.consumed == {TOPIC_FHIR: 1}


def test_hl7_messages_become_one_or_more_records_each_framed_with_their_own_offset():
    site = _adapters(EXAMPLES / "site")
    messages = [_msg(raw, topic=TOPIC_HL7V2, partition=0, offset=200 + i)
                for i, raw in enumerate(_hl7_messages())]
    assert len(messages) == 4
    routed = _route_ehr(messages, adapters=site)
    assert routed.dead_letters == []
    got = sorted((f[3], orjson.loads(f[4])["event_type"], orjson.loads(f[4])["record_id"])
                 for _, f in _frames(routed))
    # ehr-mapping.md §7 (HL7 column) and §4.2-4.6 record ids
    assert got == [(200, "encounter.updated", "E100"), (201, "em.service", "E100|99213|20250314"),
                   (202, "drug.dispensed", "RX-1.1"), (203, "medication.administered", "RX-1.0.1")]


def test_canonical_and_ehr_messages_mix_in_one_batch():
    canonical = _example_messages()
    fhir = _msg((EXAMPLES / "office-visit.fhir.json").read_bytes(), topic=TOPIC_FHIR, offset=9)
    routed = _route_ehr([*canonical, fhir])
    assert routed.dead_letters == []
    frames = [f for _, f in _frames(routed)]
    # canonical values are forwarded byte for byte, adapted ones as canonical JSON
    assert [bytes(f[4]) for f in frames if f[0] != WORKER_ORIGIN_OF[TOPIC_FHIR]] == \
        [m.value for m in canonical]
    assert sum(1 for f in frames if f[0] == WORKER_ORIGIN_OF[TOPIC_FHIR]) == 4


def test_an_unsupported_hl7_message_is_a_dead_letter_counted_as_not_billable():
    # ehr-mapping.md §5: HL7_UNSUPPORTED_MESSAGE names the type, is not a sender error
    adt_a31 = _hl7_messages()[0].replace(b"ADT^A04^ADT_A01", b"ADT^A31^ADT_A05")
    routed = _route_ehr([_msg(adt_a31, topic=TOPIC_HL7V2, partition=1, offset=3, key=b"k")])
    assert routed.bundles == []
    [dead] = routed.dead_letters
    body = orjson.loads(dead.value)
    assert body["error_code"] == HL7_UNSUPPORTED_MESSAGE
    assert "ADT^A31" in body["error"] and body["field"] == "MSH-9"
    assert (body["topic"], body["partition"], body["offset"], body["key"]) == (
        TOPIC_HL7V2, 1, 3, "k")
    assert body["raw"] == adt_a31.decode()
    assert routed.not_billable == {(TOPIC_HL7V2, HL7_UNSUPPORTED_MESSAGE): 1}
    assert routed.dead_lettered == {}


def test_a_fhir_refusal_names_the_fhir_path_and_counts_as_a_sender_error():
    admin = {"resourceType": "MedicationAdministration", "id": "mar-x", "status": "completed",
             "medicationCodeableConcept": {"text": "ceftriaxone"},
             "effectiveDateTime": "2025-03-14T09:20:00-05:00"}  # no subject
    routed = _route_ehr([_msg(orjson.dumps(admin), topic=TOPIC_FHIR, offset=8)])
    [dead] = routed.dead_letters
    body = orjson.loads(dead.value)
    assert (body["error_code"], body["field"]) == (FHIR_REFERENCE_UNRESOLVED,
                                                  "MedicationAdministration.subject")
    assert orjson.loads(body["raw"]) == admin
    assert routed.dead_lettered == {(TOPIC_FHIR, FHIR_REFERENCE_UNRESOLVED): 1}
    assert routed.not_billable == {}


def test_a_fhir_resource_of_an_unmapped_type_counts_as_not_billable():
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"text": "weight"}, "subject": {"reference": "Patient/P1"}}
    routed = _route_ehr([_msg(orjson.dumps(obs), topic=TOPIC_FHIR)])
    assert [orjson.loads(d.value)["error_code"] for d in routed.dead_letters] == [
        FHIR_UNSUPPORTED_RESOURCE]
    assert routed.not_billable == {(TOPIC_FHIR, FHIR_UNSUPPORTED_RESOURCE): 1}


def test_bytes_that_are_not_utf8_keep_their_exact_bytes_in_base64():
    raw = _hl7_messages()[2].replace(b"ceftriaxone", b"ceftriax\xff\xfeone")
    routed = _route_ehr([_msg(raw, topic=TOPIC_HL7V2)])
    [dead] = routed.dead_letters
    body = orjson.loads(dead.value)
    assert body["error_code"] == INVALID_ENCODING
    assert base64.b64decode(body["raw_base64"]) == raw


def test_an_adapter_failure_is_a_dead_letter_and_the_batch_goes_on():
    def broken(raw):
        raise RuntimeError("adapter bug")

    adapters = {**_adapters(), TOPIC_FHIR: broken}
    canonical = _example_messages()
    routed = _route_ehr([_msg(b"{}", topic=TOPIC_FHIR, offset=1), *canonical],
                        adapters=adapters)
    [dead] = routed.dead_letters
    assert orjson.loads(dead.value)["error_code"] == PROCESSING_ERROR
    assert len(_frames(routed)) == len(canonical)


def test_a_record_the_parser_refuses_is_a_dead_letter_of_the_message():
    from stream_app.adapters import Adapted

    good = orjson.loads(EXAMPLE.read_bytes().splitlines()[2])
    no_patient = {k: v for k, v in good.items() if k != "patient_id"}
    adapters = {TOPIC_FHIR: lambda raw: Adapted([good, no_patient], [])}
    value = b'{"resourceType": "Bundle"}'
    routed = _route_ehr([_msg(value, topic=TOPIC_FHIR, offset=4)], adapters=adapters)
    [dead] = routed.dead_letters
    body = orjson.loads(dead.value)
    assert (body["error_code"], body["field"], body["raw"]) == (MISSING_FIELD, "patient_id",
                                                                value.decode())
    assert "adapted record 1" in body["error"]
    [(_, frame)] = _frames(routed)
    assert orjson.loads(frame[4]) == good and frame[3] == 4
