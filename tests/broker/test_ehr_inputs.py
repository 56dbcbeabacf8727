"""EHR-format input on the real broker (issues 18, 19; ehr-mapping.md §1, §7): FHIR R4 on
`ehr.fhir` and HL7 v2 on `ehr.hl7v2`, adapted in-process by the worker.

1. the worked example three ways: office-visit.fhir.json on ehr.fhir, office-visit.hl7 on
   ehr.hl7v2 (one message per Kafka record, the example's site rows as --rules-dir) give
   the charge lines of office-visit.ndjson and no open alert;
2. the generator's stream, each record as FHIR, HL7 v2 or canonical, gives the same
   settled view as `replay` of the same input;
3. the same with the worker SIGKILLed twice mid-stream and restarted on its RocksDB data;
4. adversarial FHIR and HL7 (hypothesis): every message becomes records or dead letters,
   the worker never stops.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream_app.devtools.generate import generate_stream
from stream_app.devtools.generate.formats import CANONICAL, FHIR, HL7V2, encode_messages
from stream_app.devtools.generate.hl7v2 import write_site
from stream_app.vocabulary import TOPIC_FHIR, TOPIC_HL7V2, WORKER_INPUT_TOPICS
from tests.support.faults import Feeder, assert_same_view, record_result, revision_faults
from tests.support.worker import (
    DEAD,
    REPO,
    OutputReader,
    WorkerProcess,
    create_topics,
    metric_value,
    produce,
    uncommitted_inputs,
    wait_until,
)

pytestmark = pytest.mark.integration

EXAMPLES = REPO.parent / "shared" / "spec" / "examples"
ROCKS = {"store": "rocksdb://"}
# what a charge line bills (contract §3): compared between the EHR input and the canonical one
BILLED = ("service_date", "place_of_service", "payer_class", "code", "modifiers", "units",
          "ndc", "ndc_qualifier", "ndc_quantity", "ndc_unit", "diagnosis_codes",
          "rendering_npi", "expected_reimbursement")


# ----------------------------------------------------------------------------- helpers


def _replay(tmp_path: Path, *, canonical=(), fhir=(), hl7=(), site_dir: Path | None = None):
    """`replay`'s settled view of the same input values: canonical NDJSON, FHIR (one
    resource or Bundle per line) and an .hl7 file, with the worker's timers."""
    from stream_app.adapters.site import load_site_config
    from stream_app.config import Settings
    from stream_app.replay import replay
    from stream_app.runtime import build_engine

    paths = []
    for name, values, sep in (("canonical.ndjson", canonical, b"\n"),
                              ("fhir.ndjson", fhir, b"\n"), ("input.hl7", hl7, b"\r\n")):
        if values:
            path = tmp_path / name
            path.write_bytes(b"".join(v + sep for v in values))
            paths.append(str(path))
    settings = Settings(settle_seconds=1.0, close_after_seconds=0.0, rules_dir=site_dir)
    res = replay(paths, build_engine(settings), "UTC", site=load_site_config(site_dir))
    return res.settled_view(), res


def _billed(lines) -> list[dict]:
    return sorted(({k: line.get(k) for k in BILLED} for line in lines),
                  key=lambda d: orjson.dumps(d, option=orjson.OPT_SORT_KEYS))


def _hl7_messages(path: Path) -> list[bytes]:
    """The messages of an .hl7 file, one per Kafka record (as an interface engine sends)."""
    text = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return [b"MSH" + part.strip(b"\r") for part in text.split(b"MSH")[1:]]


async def _all_committed(bootstrap: str, prefix: str, app_id: str) -> None:
    topics = [prefix + t for t in WORKER_INPUT_TOPICS] + [f"{app_id}-patient-records"]
    gaps = await uncommitted_inputs(bootstrap, app_id, topics)
    deadline = time.monotonic() + 30
    while gaps and time.monotonic() < deadline:
        await asyncio.sleep(1)
        gaps = await uncommitted_inputs(bootstrap, app_id, topics)
    assert gaps == {}, f"input not committed by the group: {gaps}"


def _format_of(rec: dict) -> str:
    """Each record (all its versions) in one format, a third of them each."""
    return (CANONICAL, FHIR, HL7V2)[zlib.crc32(rec["record_id"].encode()) % 3]


def _mixed_stream(prefix: str, seed: int, records: int):
    stream = generate_stream(seed, records=records, redeliver_rate=0.05, amend_rate=0.08,
                             withdraw_rate=0.03, shuffle_window=40, malformed_rate=0.0,
                             topic_prefix=prefix)
    return encode_messages(stream, _format_of, prefix)


def _split(messages, prefix: str):
    fhir = [v for t, _k, v in messages if t == prefix + TOPIC_FHIR]
    hl7 = [v for t, _k, v in messages if t == prefix + TOPIC_HL7V2]
    canonical = [v for t, _k, v in messages
                 if t not in (prefix + TOPIC_FHIR, prefix + TOPIC_HL7V2)]
    return canonical, fhir, hl7


# ----------------------------------------------------------------------------- 1. §7 example


def _office_visit_expected(tmp_path: Path):
    (lines, alerts), _ = _replay(tmp_path, canonical=(EXAMPLES / "office-visit.ndjson")
                                 .read_bytes().splitlines())
    # ehr-mapping.md §7: 99213-25; 96372; J0696 x 2, NDC 00409733201, N4, 1 UN; no alert
    by_code = {line["code"]: line for line in lines}
    assert set(by_code) == {"99213", "96372", "J0696"}
    assert by_code["99213"]["modifiers"] == ["25"]
    j = by_code["J0696"]
    assert (j["units"], j["ndc"], j["ndc_qualifier"], j["ndc_quantity"], j["ndc_unit"]) == (
        2, "00409733201", "N4", 1, "UN")
    assert alerts == []
    return lines


async def _run_example(kafka_bootstrap, unique_name, tmp_path, name, messages, extra=()):
    prefix = unique_name(name) + "."
    app_id = unique_name(f"{name}-app")
    await create_topics(kafka_bootstrap, prefix)
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, extra=extra).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        await reader.start()
        await produce(kafka_bootstrap, [(prefix + t, k, v) for t, k, v in messages])
        await reader.wait_settled(timeout=120)
        metrics = worker.metrics_text()
    finally:
        await reader.stop()
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()
    return reader, metrics, prefix


async def test_office_visit_fhir_bundle_on_ehr_fhir(kafka_bootstrap, unique_name, tmp_path):
    expected = _office_visit_expected(tmp_path)
    bundle = (EXAMPLES / "office-visit.fhir.json").read_bytes()
    reader, metrics, prefix = await _run_example(
        kafka_bootstrap, unique_name, tmp_path, "ehr-fhir",
        [(TOPIC_FHIR, b"Bundle/office-visit-E100", bundle)])
    lines, alerts = reader.settled_view()
    assert _billed(lines) == _billed(expected)
    assert alerts == []
    assert reader.messages[DEAD] == []
    assert metric_value(metrics, "chargecap_events_consumed_total",
                        topic=prefix + TOPIC_FHIR) == 1


async def test_office_visit_hl7_messages_on_ehr_hl7v2(kafka_bootstrap, unique_name, tmp_path):
    expected = _office_visit_expected(tmp_path)
    messages = _hl7_messages(EXAMPLES / "office-visit.hl7")
    assert len(messages) == 4  # ADT^A04, DFT^P03, RDS^O13, RAS^O17
    reader, metrics, prefix = await _run_example(
        kafka_bootstrap, unique_name, tmp_path, "ehr-hl7",
        [(TOPIC_HL7V2, None, m) for m in messages],
        extra=["--rules-dir", str(EXAMPLES / "site")])
    lines, alerts = reader.settled_view()
    assert _billed(lines) == _billed(expected)
    assert alerts == []
    assert reader.messages[DEAD] == []
    assert metric_value(metrics, "chargecap_events_consumed_total",
                        topic=prefix + TOPIC_HL7V2) == 4


# ----------------------------------------------------------------------------- 2./3. mixed


async def test_generated_stream_as_fhir_hl7_and_canonical_matches_replay(
        kafka_bootstrap, unique_name, tmp_path):
    prefix = unique_name("ehr-mix") + "."
    app_id = unique_name("ehr-mix-app")
    site = write_site(tmp_path / "site")
    messages = _mixed_stream(prefix, seed=41, records=1200)
    canonical, fhir, hl7 = _split(messages, prefix)
    assert canonical and fhir and hl7
    expected, _ = _replay(tmp_path, canonical=canonical, fhir=fhir, hl7=hl7, site_dir=site)
    assert expected[0] and expected[1]
    await create_topics(kafka_bootstrap, prefix)
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix,
                           extra=["--rules-dir", str(site)]).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        await reader.start()
        await produce(kafka_bootstrap, messages)
        await reader.wait_settled(timeout=150)
        view = assert_same_view(reader, expected)
        assert reader.messages[DEAD] == []
        await _all_committed(kafka_bootstrap, prefix, app_id)
    finally:
        await reader.stop()
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()
    record_result("ehr_mixed", {"messages": len(messages), "fhir": len(fhir), "hl7v2": len(hl7),
                                "canonical": len(canonical), **view})


async def test_mixed_ehr_stream_survives_sigkill(kafka_bootstrap, unique_name, tmp_path):
    """Two SIGKILLs at seeded moments while FHIR, HL7 v2 and canonical input arrives; the
    worker restarts on the same RocksDB data. Settled view = replay's, revisions never go
    backwards, every input offset committed in the end."""
    rng = random.Random(20251205)
    prefix = unique_name("ehr-kill") + "."
    app_id = unique_name("ehr-kill-app")
    site = write_site(tmp_path / "site")
    messages = _mixed_stream(prefix, seed=43, records=2000)
    canonical, fhir, hl7 = _split(messages, prefix)
    expected, _ = _replay(tmp_path, canonical=canonical, fhir=fhir, hl7=hl7, site_dir=site)
    await create_topics(kafka_bootstrap, prefix)
    extra = ["--rules-dir", str(site)]
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, name="w0", extra=extra,
                           **ROCKS).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    feeder = Feeder(kafka_bootstrap, messages, chunk=40, pause=0.3)
    kills = []
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        await reader.start()
        feeder.start()
        for i in range(2):
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            kills.append(feeder.sent)
            await asyncio.to_thread(worker.kill)
            await asyncio.to_thread(worker.stop)
            worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, name=f"w{i + 1}",
                                   extra=extra, **ROCKS).start()
            await asyncio.to_thread(worker.wait_ready, 120)
        await feeder.wait()
        assert 0 < kills[0] < len(messages)  # the first kill hit the worker mid-stream
        await reader.wait_settled(timeout=150)
        view = assert_same_view(reader, expected)
        assert revision_faults(reader) == []
        assert reader.messages[DEAD] == []
        await _all_committed(kafka_bootstrap, prefix, app_id)
        assert worker.proc.poll() is None
    finally:
        await reader.stop()
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()
    record_result("ehr_sigkill", {"messages": len(messages), "killed_after": kills, **view})


# ----------------------------------------------------------------------------- 4. adversarial

_BASE_BUNDLE = orjson.loads((EXAMPLES / "office-visit.fhir.json").read_bytes())
_BASE_HL7 = _hl7_messages(EXAMPLES / "office-visit.hl7")
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20)


def _mutate_json(doc, rng: random.Random, junk):
    """Replace, drop or retype one element somewhere in a FHIR document."""
    doc = orjson.loads(orjson.dumps(doc))
    node, path = doc, []
    for _ in range(rng.randint(1, 6)):
        kids = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) \
            if isinstance(node, list) else []
        kids = [(k, v) for k, v in kids if isinstance(v, dict | list)] or kids
        if not kids:
            break
        k, v = rng.choice(kids)
        path.append((node, k))
        node = v
    if path:
        parent, k = path[-1]
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[k]
        else:
            parent[k] = junk
    return doc


@st.composite
def fhir_inputs(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    kind = draw(st.sampled_from(["mutate", "reference", "deep", "huge", "type", "bytes"]))
    if kind == "mutate":
        return orjson.dumps(_mutate_json(_BASE_BUNDLE, rng, draw(_JSON)))
    if kind == "reference":  # unresolved or circular references
        doc = orjson.loads(orjson.dumps(_BASE_BUNDLE))
        for entry in doc["entry"]:
            res = entry["resource"]
            for field in ("subject", "context", "medicationReference", "encounter"):
                if field in res:
                    res[field] = {"reference": rng.choice(
                        ["Patient/nope", "#missing", "urn:uuid:0", res["resourceType"] + "/"
                         + res["id"], "Encounter/E100/_history/9", ""])}
        return orjson.dumps(doc)
    if kind == "deep":
        depth = draw(st.integers(90, 300))
        return b'{"resourceType":"Bundle","type":"collection","entry":' + b"[" * depth + \
            b"]" * depth + b"}"
    if kind == "huge":  # over fhir_max_entries (TOO_LARGE), or many real entries
        if draw(st.booleans()):
            n = draw(st.integers(10_001, 20_000))
            return orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                 "entry": [{"resource": {"resourceType": "Basic"}}] * n})
        n = draw(st.integers(1, 60))  # under the broker's 1 MB message limit
        return orjson.dumps({**_BASE_BUNDLE, "entry": _BASE_BUNDLE["entry"] * n})
    if kind == "type":
        return orjson.dumps({"resourceType": draw(st.sampled_from(
            ["Observation", "Bundle", "Patient", "NotAType", "Coverage", 7, None])),
            "id": draw(st.text(max_size=8))})
    return draw(st.binary(max_size=200))


@st.composite
def hl7_inputs(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    base = rng.choice(_BASE_HL7)
    kind = draw(st.sampled_from(["truncate", "delimiters", "binary", "big", "segment", "type"]))
    if kind == "truncate":
        return base[:draw(st.integers(0, len(base)))]
    if kind == "delimiters":
        return base[:4] + draw(st.binary(min_size=0, max_size=5)) + base[8:]
    if kind == "binary":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.binary(min_size=1, max_size=40)) + base[at:]
    if kind == "big":
        segs = base.split(b"\r")
        i = rng.randrange(1, len(segs))
        segs[i] = segs[i] + b"|" + b"X" * draw(st.sampled_from([1000, 100_000, 900_000]))
        return b"\r".join(segs)
    if kind == "segment":
        return base + b"\r" + draw(st.sampled_from([b"ZZZ|1|2", b"PRT|||AP|", b"OBX", b"|||"]))
    return base.replace(base.split(b"|")[8], draw(st.sampled_from(
        [b"ADT^A31", b"ORU^R01", b"^", b"", b"RAS^O99", b"DFT^P11"])), 1)


@pytest.fixture(scope="module")
def adversarial_worker(tmp_path_factory, kafka_bootstrap):
    """One worker for every example (examples are cheap, a worker start is not)."""
    from tests.support.kafka import make_unique_name

    tmp = tmp_path_factory.mktemp("ehr-adversarial")
    prefix = make_unique_name("ehr-adv") + "."
    asyncio.run(create_topics(kafka_bootstrap, prefix))
    worker = WorkerProcess(tmp, kafka_bootstrap, make_unique_name("ehr-adv-app"), prefix,
                           extra=["--rules-dir", str(EXAMPLES / "site")]).start()
    worker.wait_ready(90)
    yield worker, prefix, {"sent": 0}
    rc = worker.stop()
    assert rc == 0, worker.tail()


@settings(max_examples=60, deadline=None, derandomize=True, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(fhir=st.lists(fhir_inputs(), min_size=1, max_size=3),
       hl7=st.lists(hl7_inputs(), min_size=1, max_size=3))
def test_adversarial_fhir_and_hl7_become_records_or_dead_letters(adversarial_worker,
                                                                 kafka_bootstrap, fhir, hl7):
    """Every adversarial message is consumed and ends as records or dead letters (each
    dead letter naming the message's topic and offset); the worker keeps running."""
    worker, prefix, seen = adversarial_worker
    messages = [(prefix + TOPIC_FHIR, None, v) for v in fhir] + \
        [(prefix + TOPIC_HL7V2, None, v) for v in hl7]
    metas = asyncio.run(produce(kafka_bootstrap, messages, max_request_size=8 * 1024 * 1024))
    seen["sent"] += len(messages)

    def consumed() -> bool:
        text = worker.metrics_text()
        return sum(metric_value(text, "chargecap_events_consumed_total", topic=prefix + t)
                   for t in (TOPIC_FHIR, TOPIC_HL7V2)) >= seen["sent"]

    wait_until(consumed, 60, "the worker consumed every adversarial message",
               detail=worker.tail)
    assert worker.proc.poll() is None, worker.tail()
    # every message that yields no record has a dead letter naming it
    from stream_app.adapters import fhir as fhir_adapter
    from stream_app.adapters import hl7v2 as hl7_adapter
    from stream_app.adapters.site import load_site_config

    site = load_site_config(EXAMPLES / "site")
    expected_dead = set()
    for (topic, _k, value), meta in zip(messages, metas, strict=True):
        adapt = fhir_adapter.adapt if topic.endswith(TOPIC_FHIR) else hl7_adapter.adapt
        out = adapt(value, site, default_tz="UTC") if len(value) <= 1_048_576 else None
        if out is None or out.dead_letters or not out.records:
            expected_dead.add((topic, meta.partition, meta.offset))
    got = asyncio.run(_dead_letter_coordinates(kafka_bootstrap, prefix, expected_dead))
    assert expected_dead <= got


async def _dead_letter_coordinates(bootstrap: str, prefix: str, wanted: set) -> set:
    reader = OutputReader(bootstrap, prefix)
    await reader.start()
    try:
        deadline = time.monotonic() + 30
        got: set = set()
        while time.monotonic() < deadline:
            await reader.poll(0.5)
            got = {(d["topic"], d["partition"], d["offset"])
                   for d in (orjson.loads(m[3]) for m in reader.messages[DEAD])}
            if wanted <= got:
                break
        return got
    finally:
        await reader.stop()
