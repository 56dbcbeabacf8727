"""Replay of the spec example (shared/spec/examples/README.md): office-visit.ndjson gives
three active charge lines (99213-25, 96372, J0696 x 2 units with NDC 00409733201, N4,
1 UN) and no open alerts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from stream_app.replay import replay
from tests.engine.builders import engine

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared/spec/examples"
EXAMPLE = EXAMPLES / "office-visit.ndjson"
REPO = Path(__file__).resolve().parents[2]


def _check_settled_view(lines: list[dict], alerts: list[dict]) -> None:
    active = sorted((v for v in lines if v["state"] == "active"), key=lambda v: v["code"])
    assert [v for v in alerts if v["state"] == "open"] == []
    assert [(v["code"], v["modifiers"], v["units"]) for v in active] == [
        ("96372", [], 1), ("99213", ["25"], 1), ("J0696", [], 2)]
    em_line, inj, drug = active[1], active[0], active[2]
    assert (drug["ndc"], drug["ndc_qualifier"], drug["ndc_quantity"], drug["ndc_unit"]) == \
        ("00409733201", "N4", 1, "UN")
    for v in (em_line, inj):
        assert (v["ndc"], v["ndc_qualifier"], v["ndc_quantity"], v["ndc_unit"]) == \
            (None, None, None, None)
    for v in active:
        assert v["patient_id"] == "P100" and v["encounter_id"] == "E100"
        assert v["service_date"] == "2025-03-14"
        assert v["place_of_service"] == "11" and v["payer_class"] == "commercial"
        assert v["rendering_npi"] == "1234567893"
        assert v["diagnosis_codes"] == ["A54.9"]
        assert v["warnings"] == [] and v["denial_risk"] == 0.0
        assert v["final"] is True  # replay closes every day at the end
        assert v["revision"] >= 1
    assert em_line["source_event_ids"] == ["ev-e-1"]
    assert inj["source_event_ids"] == ["ev-a-1"]
    assert drug["source_event_ids"] == ["ev-a-1", "ev-d-1"]  # administration and dispense
    # fee schedule (billing-rules.md §9 midpoints): commercial 96372 = 20.00, 99213 = 124.00
    assert inj["expected_reimbursement"] == 20.0
    assert em_line["expected_reimbursement"] == 124.0


def test_example_file_is_where_ci_puts_it():
    assert EXAMPLE.is_file(), EXAMPLE


def test_replay_of_the_office_visit_example():
    res = replay([str(EXAMPLE)], engine())
    assert res.records == 3 and res.dead_letters == [] and res.duplicates == 0
    _check_settled_view(list(res.lines.values()), list(res.alerts.values()))
    assert len(res.lines) == 3 and res.alerts == {}  # nothing voided or resolved on the way


def test_replay_is_order_independent(tmp_path):
    reversed_file = tmp_path / "reversed.ndjson"
    reversed_file.write_bytes(b"".join(reversed(EXAMPLE.read_bytes().splitlines(True))))
    a = replay([str(EXAMPLE)], engine()).settled_view()
    b = replay([str(reversed_file)], engine()).settled_view()
    assert a == b


def test_replay_command_writes_the_three_outputs(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "stream_app", "replay", str(EXAMPLE),
                           "--out", str(out)], capture_output=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [orjson.loads(x) for x in (out / "charge_lines.ndjson").read_bytes().splitlines()]
    alerts = [orjson.loads(x) for x in (out / "alerts.ndjson").read_bytes().splitlines()]
    assert (out / "dead_letters.ndjson").read_bytes() == b""
    assert [v["line_id"] for v in lines] == sorted(v["line_id"] for v in lines)
    _check_settled_view(lines, alerts)
