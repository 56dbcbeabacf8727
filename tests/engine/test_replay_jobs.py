"""`replay --jobs N`: patients split between N processes, outputs byte-identical to one.

Every comparison runs the real command (or the real `replay`) with one process and with
several over the same input: the three output files, the metrics textfile and the
summary on stderr must be the same bytes.
"""

from __future__ import annotations

import collections
import datetime
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import stream_app.runtime
from stream_app.cli import main
from stream_app.devtools.generate import generate_stream
from stream_app.devtools.generate.formats import FHIR, HL7V2, encode_messages
from stream_app.devtools.generate.hl7v2 import write_site
from stream_app.engine import DeadLetter, Engine, parse_record
from stream_app.replay import ReplayJobError, line_share, replay, share_of
from stream_app.rules import load_rules
from stream_app.vocabulary import TOPIC_FHIR, TOPIC_HL7V2
from tests.support.paths import EXAMPLES_DIR, REPO

OUTPUTS = ("charge_lines.ndjson", "alerts.ndjson", "dead_letters.ndjson")
SHARED = REPO.parent / "shared"

# Lines a billing feed really sends now and then, each a different way of having no
# usable patient (or a patient written unusually): the ones that parse must go to their
# patient's share, the others must become exactly one dead letter.
BAD_LINES = [
    b"not json at all",
    b'{"event_type":"em.service","event_id":"ev-nopid-1","record_id":"r-nopid-1"}',
    b'{"event_type":"em.service","event_id":"ev-numpid-1","record_id":"r-numpid-1",'
    b'"patient_id":12345}',
    b"",
    b"   ",
    b"[1, 2, 3]",
    b'{"patient_id": "pt-only"}',
    b"\xff\xfe not utf-8",
]


def _stream_lines(seed: int, records: int) -> list[bytes]:
    """The generator's canonical stream (redeliveries, amendments, withdrawals and its own
    malformed messages included) as NDJSON lines."""
    stream = generate_stream(seed, records=records, malformed_rate=0.01)
    return [value for _topic, _key, value in stream.messages]


def _odd_but_valid(lines: list[bytes]) -> list[bytes]:
    """Records of the stream written another way that parse_record still reads as the
    same patient: behind a UTF-8 BOM, with the patient id padded, with the key escaped,
    with a nested `patient_id` of another patient."""
    recs = [orjson.loads(x) for x in lines[:40] if x.startswith(b'{"event_type"')][:4]
    out = []
    for n, rec in enumerate(recs):
        rec = {**rec, "event_id": f"{rec['event_id']}-odd{n}"}
        raw = orjson.dumps(rec)
        if n == 0:
            out.append(b"\xef\xbb\xbf" + raw)
        elif n == 1:
            out.append(orjson.dumps({**rec, "patient_id": f"  {rec['patient_id']} "}))
        elif n == 2:
            out.append(raw.replace(b'"patient_id"', b'"patient\\u005fid"'))
        else:
            out.append(orjson.dumps({"drug": {"patient_id": "someone-else"}, **rec}))
    return out


def _canonical_file(tmp_path: Path, seed: int = 7, records: int = 5000) -> Path:
    lines = _stream_lines(seed, records)
    odd = _odd_but_valid(lines)
    step = len(lines) // (len(BAD_LINES) + len(odd) + 1)
    for n, extra in enumerate(BAD_LINES + odd, 1):
        lines.insert(n * step, extra)
    path = tmp_path / "stream.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run(capsys, tmp_path: Path, files: list, jobs: int, *flags: str) -> dict[str, bytes]:
    """The command's outputs, metrics textfile and stderr summary, by name."""
    out = tmp_path / f"out-jobs{jobs}"
    prom = tmp_path / f"metrics-jobs{jobs}.prom"
    capsys.readouterr()
    code = main(["replay", *map(str, files), "--out", str(out), "--metrics", str(prom),
                 "--jobs", str(jobs), *flags])
    err = capsys.readouterr().err
    assert code == 0, err
    got = {name: (out / name).read_bytes() for name in OUTPUTS}
    got["metrics"] = prom.read_bytes()
    got["summary"] = err[err.index("replay: "):].encode()  # log lines carry a timestamp
    return got


def _assert_identical(capsys, tmp_path: Path, files: list, *flags: str,
                      jobs=(2, 3)) -> dict[str, bytes]:
    one = _run(capsys, tmp_path, files, 1, *flags)
    for n in jobs:
        many = _run(capsys, tmp_path, files, n, *flags)
        for name in one:
            assert many[name] == one[name], f"{name} differs with --jobs {n}"
    return one


def _count(ndjson: bytes) -> int:
    return len(ndjson.splitlines())


# ------------------------------------------------------------------ byte-identical outputs


def test_generated_stream_with_bad_lines_gives_the_same_bytes(capsys, tmp_path):
    path = _canonical_file(tmp_path)
    one = _assert_identical(capsys, tmp_path, [path])
    assert _count(one["charge_lines.ndjson"]) > 1000 and _count(one["alerts.ndjson"]) > 50
    dead = [orjson.loads(x) for x in one["dead_letters.ndjson"].splitlines()]
    codes = collections.Counter(d["error_code"] for d in dead)
    # every hand-written bad line is a dead letter once (blank lines are no input)
    assert codes["INVALID_JSON"] >= 1 and codes["INVALID_ENCODING"] >= 1
    assert codes["NOT_AN_OBJECT"] >= 1 and codes["MISSING_FIELD"] >= 2
    assert codes["WRONG_TYPE"] >= 1
    assert b"redelivered" in one["summary"]


def test_the_same_result_in_process_dict_order_included(tmp_path):
    path = _canonical_file(tmp_path, seed=11, records=3000)
    eng = Engine(load_rules())
    one = replay([str(path)], eng)
    two = replay([str(path)], eng, jobs=2)
    assert list(two.lines.items()) == list(one.lines.items())
    assert list(two.alerts.items()) == list(one.alerts.items())
    assert two.dead_letters == one.dead_letters
    assert (two.records, two.duplicates, two.by_event_type) == (
        one.records, one.duplicates, one.by_event_type)
    assert one.records > 2500 and one.duplicates > 0


def test_the_spec_examples_give_the_same_bytes(capsys, tmp_path):
    examples = [EXAMPLES_DIR / "office-visit.ndjson", EXAMPLES_DIR / "office-visit.fhir.json",
                EXAMPLES_DIR / "office-visit.hl7"]
    one = _assert_identical(capsys, tmp_path, examples, "--rules-dir", str(EXAMPLES_DIR / "site"))
    assert _count(one["charge_lines.ndjson"]) >= 3  # the three forms are one visit
    one = _assert_identical(capsys, tmp_path, [EXAMPLES_DIR / "office-visit.ndjson"])
    assert _count(one["charge_lines.ndjson"]) == 3


def test_fhir_input_gives_the_same_bytes(capsys, tmp_path):
    """FHIR Bundles one per line among canonical lines, a FHIR Bulk Data file (first line
    a FHIR resource), and the HL7 FHIR project's own example Bundle and resources."""
    stream = generate_stream(5, records=1500, malformed_rate=0.0)
    messages = encode_messages(stream, FHIR)
    canonical = [v for t, _k, v in messages if t != TOPIC_FHIR]
    bundles = [v for t, _k, v in messages if t == TOPIC_FHIR]
    assert len(bundles) > 1000
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(b"\n".join(canonical[:1] + bundles[:700] + canonical[1:]) + b"\n")
    bulk = tmp_path / "bundles.ndjson"
    bulk.write_bytes(b"\n".join(bundles[700:]) + b"\n")
    r4 = SHARED / "fhir" / "r4-examples"
    files = [mixed, bulk, r4 / "Bundle-bundle-transaction.json",
             r4 / "MedicationAdministration-medadmin0301.json", r4 / "Encounter-f001.json"]
    one = _assert_identical(capsys, tmp_path, files)
    assert _count(one["charge_lines.ndjson"]) > 500
    sources = {orjson.loads(x)["source"] for x in one["dead_letters.ndjson"].splitlines()}
    assert str(r4 / "Bundle-bundle-transaction.json") in sources  # adapter refusals too


def test_hl7v2_input_gives_the_same_bytes(capsys, tmp_path):
    """HL7 v2 messages (one per line, the generator's visits with their ADT^A04 first) with
    the site rows they need, and the shared HL7 v2 samples."""
    stream = generate_stream(9, records=1500, malformed_rate=0.0)
    messages = encode_messages(stream, HL7V2)
    hl7 = [v for t, _k, v in messages if t == TOPIC_HL7V2]
    canonical = [v for t, _k, v in messages if t != TOPIC_HL7V2]
    assert len(hl7) > 1000
    feed = tmp_path / "feed.hl7"
    feed.write_bytes(b"\n".join(hl7) + b"\n")
    rest = tmp_path / "rest.ndjson"
    rest.write_bytes(b"\n".join(canonical) + b"\n")
    site = write_site(tmp_path / "site")
    samples = sorted((SHARED / "hl7v2" / "samples").glob("*.hl7"))
    assert samples
    one = _assert_identical(capsys, tmp_path, [feed, rest, *samples], "--rules-dir", str(site))
    assert _count(one["charge_lines.ndjson"]) > 500


def test_standard_input_is_read_once_and_shared(tmp_path, monkeypatch):
    data = _canonical_file(tmp_path, seed=3, records=1000).read_bytes()
    eng = Engine(load_rules())
    results = []
    for jobs in (1, 2):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        results.append(replay(["-"], eng, jobs=jobs))
    one, two = results
    assert one.records > 900
    assert list(two.lines.items()) == list(one.lines.items())
    assert two.dead_letters == one.dead_letters and {d["source"] for d in one.dead_letters} == {"-"}


# ------------------------------------------------------------------ the split


def test_a_patient_s_share_is_stable_across_processes():
    patients = [f"pt-{n:05d}" for n in range(300)] + ["P100", "ünïcode-pätient", ""]
    here = {jobs: [share_of(p, jobs) for p in patients] for jobs in (2, 3, 7)}
    assert set(here[2]) == {0, 1} and set(here[3]) == {0, 1, 2}
    code = ("import json, sys; from stream_app.replay import share_of; "
            "ps = json.load(sys.stdin); "
            "print(json.dumps({j: [share_of(p, j) for p in ps] for j in (2, 3, 7)}))")
    for seed in ("0", "12345"):
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(patients),
                              capture_output=True, text=True, cwd=REPO, timeout=60,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        assert {int(j): v for j, v in json.loads(done.stdout).items()} == here


def test_every_parsed_line_goes_to_its_patient_s_share(tmp_path):
    lines = _canonical_file(tmp_path, seed=13, records=2000).read_bytes().split(b"\n")
    records = 0
    for raw in lines:
        rec = parse_record(raw, default_tz="UTC")
        for jobs in (2, 3):
            share = line_share(raw, jobs)
            if isinstance(rec, DeadLetter):
                assert 0 <= share < jobs
            else:
                assert share == share_of(rec.patient_id, jobs), raw
        records += not isinstance(rec, DeadLetter)
    assert records > 1900
    assert line_share(b"garbage", 2) == 0 and line_share(b'{"patient_id": 7}', 2) == 0


class _FinishLog(Engine):
    """The real engine, writing down which process finished which patient."""

    def __init__(self, rules, log: Path):
        super().__init__(rules)
        self.log = log

    def finish(self, state, now, rev_floor=0):
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()} {state.patient_id}\n")
        return super().finish(state, now, rev_floor)


def test_jobs_2_replays_each_patient_once_in_two_processes(tmp_path):
    path = _canonical_file(tmp_path, seed=17, records=2000)
    log = tmp_path / "finished.log"
    res = replay([str(path)], _FinishLog(load_rules(), log), jobs=2)
    by_process: dict[str, list[str]] = collections.defaultdict(list)
    for row in log.read_text().splitlines():
        pid, patient = row.split(" ", 1)
        by_process[pid].append(patient)
    assert len(by_process) == 2 and str(os.getpid()) in by_process
    shares = {}
    for pid, patients in by_process.items():
        assert len(patients) > 50
        [shares[pid]] = {share_of(p, 2) for p in patients}  # one share per process
    assert sorted(shares.values()) == [0, 1] and shares[str(os.getpid())] == 0
    everyone = [p for patients in by_process.values() for p in patients]
    assert len(everyone) == len(set(everyone))  # each patient finished once
    parsed = (parse_record(raw, default_tz="UTC") for raw in path.read_bytes().splitlines())
    assert set(everyone) == {r.patient_id for r in parsed if not isinstance(r, DeadLetter)}
    assert {v["patient_id"] for v in res.lines.values()} <= set(everyone)


class _DatesItsLines(Engine):
    """The real engine, its outputs carrying a value marshal cannot write (a date)."""

    def finish(self, state, now, rev_floor=0):
        state, out = super().finish(state, now, rev_floor)
        for d in out.decisions:
            d.value["replayed_on"] = datetime.date(2025, 3, 14)
        return state, out


def test_a_share_marshal_cannot_write_comes_back_pickled(tmp_path):
    path = _canonical_file(tmp_path, seed=23, records=800)
    eng = _DatesItsLines(load_rules())
    one, two = replay([str(path)], eng), replay([str(path)], eng, jobs=2)
    assert list(two.lines.items()) == list(one.lines.items())
    assert {type(v["replayed_on"]) for v in two.lines.values()} == {datetime.date}


# ------------------------------------------------------------------ a share that fails


class _FailsFor(Engine):
    """The real engine, except for one patient: `how` is "raise" or "die"."""

    def __init__(self, rules, patient: str, how: str):
        super().__init__(rules)
        self.patient, self.how = patient, how

    def finish(self, state, now, rev_floor=0):
        if state.patient_id == self.patient:
            if self.how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rule evaluation broke on {self.patient}")
        return super().finish(state, now, rev_floor)


def _patient_of_share(path: Path, share: int, jobs: int) -> str:
    for raw in path.read_bytes().splitlines():
        rec = parse_record(raw, default_tz="UTC")
        if not isinstance(rec, DeadLetter) and share_of(rec.patient_id, jobs) == share:
            return rec.patient_id
    raise AssertionError("no patient in that share")


def test_a_failing_child_fails_the_replay_with_its_error(tmp_path):
    path = _canonical_file(tmp_path, seed=19, records=600)
    patient = _patient_of_share(path, 1, 2)
    with pytest.raises(ReplayJobError, match=r"share 2 of 2 .* failed") as caught:
        replay([str(path)], _FailsFor(load_rules(), patient, "raise"), jobs=2)
    assert f"RuntimeError: rule evaluation broke on {patient}" in str(caught.value)
    assert multiprocessing.active_children() == []


def test_a_child_that_dies_fails_the_replay(tmp_path):
    path = _canonical_file(tmp_path, seed=19, records=600)
    patient = _patient_of_share(path, 2, 3)
    with pytest.raises(ReplayJobError, match=r"share 3 of 3 .* ended without a result "
                                             r"\(exit code -9\)"):
        replay([str(path)], _FailsFor(load_rules(), patient, "die"), jobs=3)
    assert multiprocessing.active_children() == []


def test_a_failure_in_the_parent_s_share_stops_the_children(tmp_path):
    path = _canonical_file(tmp_path, seed=19, records=600)
    patient = _patient_of_share(path, 0, 2)
    with pytest.raises(RuntimeError, match="rule evaluation broke"):
        replay([str(path)], _FailsFor(load_rules(), patient, "raise"), jobs=2)
    assert multiprocessing.active_children() == []


def test_the_command_fails_and_writes_nothing_when_a_share_fails(tmp_path, capsys,
                                                                 monkeypatch):
    path = _canonical_file(tmp_path, seed=19, records=600)
    patient = _patient_of_share(path, 1, 2)
    # the command's own engine, made to fail for one patient of the child's share
    monkeypatch.setattr(stream_app.runtime, "build_engine",
                        lambda _settings: _FailsFor(load_rules(), patient, "raise"))
    out, prom = tmp_path / "out", tmp_path / "m.prom"
    code = main(["replay", str(path), "--jobs", "2", "--out", str(out), "--metrics", str(prom)])
    err = capsys.readouterr().err
    assert code == 1
    assert "chargecap replay: replay share 2 of 2" in err and "rule evaluation broke" in err
    assert "no output written" in err and "charge lines active" not in err
    assert not out.exists() and not prom.exists()


def test_jobs_flag(tmp_path, capsys):
    example = EXAMPLES_DIR / "office-visit.ndjson"
    assert main(["replay", str(example), "--jobs", "0", "--out", str(tmp_path / "o")]) == 0
    assert _count((tmp_path / "o" / "charge_lines.ndjson").read_bytes()) == 3
    with pytest.raises(SystemExit):
        main(["replay", str(example), "--jobs", "-1"])
    assert "not a number of processes" in capsys.readouterr().err
