"""`chargecap report` on small hand-written replay directories: the definitions on cases
worked out by hand, older outputs without the alerts' `lines`, empty files, and clear
errors for what cannot be read."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson

from stream_app.cli import main
from stream_app.report import figures, sources
from tests.report.html_tables import tables

PERIOD = figures.Period(date(2025, 3, 10), date(2025, 3, 16))


def _line(line_id, code, day, state="active", payer="medicare", mods=(), expected=10.0, risk=0.0):
    return {"line_id": line_id, "revision": 1, "state": state, "final": True, "patient_id": "P-SECRET",
            "encounter_id": "E-SECRET", "service_date": day, "place_of_service": "11",
            "payer_class": payer, "code": code, "modifiers": list(mods), "units": 1, "ndc": None,
            "diagnosis_codes": ["A54.9"], "rendering_npi": "1234567893", "source_event_ids": ["e"],
            "expected_reimbursement": expected, "denial_risk": risk, "warnings": []}


def _alert(alert_id, reason, day, lines, state="open", severity="block", queue="pharmacy",
           code=None, details=None, with_lines=True):
    a = {"alert_id": alert_id, "revision": 1, "state": state, "final": True, "reason_code": reason,
         "severity": severity, "work_queue": queue, "message": "Administration R-SECRET …",
         "suggested_fix": "…", "predicted_denial": {"carc": "CO-16", "rarc": None},
         "patient_id": "P-SECRET", "encounter_id": "E-SECRET", "service_date": day,
         "payer_class": "medicare", "code": code or lines[0][1], "rendering_npi": "1234567893",
         "line_id": lines[0][0], "revenue_at_risk": round(sum(x[2] for x in lines), 2),
         "source_event_ids": ["e"], "details": details or {}}
    if with_lines:
        a["lines"] = [{"line_id": i, "code": c, "expected_reimbursement": x} for i, c, x in lines]
    return a


def _write(d: Path, lines, alerts) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "charge_lines.ndjson").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    (d / "alerts.ndjson").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in alerts))
    (d / "dead_letters.ndjson").write_bytes(b"")
    return d


def _figures(d: Path) -> figures.Figures:
    con = sources.new_database()
    sources.load_replay_dir(con, d, sources.Window(PERIOD.previous().first, PERIOD.last))
    return figures.compute(con, PERIOD)


def test_definitions_on_a_hand_made_day(tmp_path):
    # In the period: 96372 + J0696 active with JZ; a 96372 and its J1885 held from the start
    # by an open MISSING_NDC (never emitted: known only from the alert's lines); a
    # resolved INVALID_NDC on a line now active. Before the period: one active line.
    d = _write(tmp_path / "r", [
        _line("L1", "96372", "2025-03-11", expected=20.0),
        _line("L2", "J0696", "2025-03-11", mods=["JZ"], expected=5.0),
        _line("L5", "J3301", "2025-03-12", expected=7.0),
        _line("L9", "96372", "2025-03-05", expected=20.0),
    ], [
        _alert("A1", "MISSING_NDC", "2025-03-12", [("L3", "96372", 20.0), ("L4", "J1885", 3.0)],
               code="J1885"),
        _alert("A2", "INVALID_NDC", "2025-03-12", [("L5", "J3301", 7.0)], state="resolved"),
    ])
    f = _figures(d)
    total = next(r for r in f.tables["summary"].rows if r[0] == "all")
    # lines L1, L2, L3, L4, L5; never held: L1, L2; expected: active L1 + L2 + L5
    assert total == ("all", 5, 2, 0.4, 2, 1, 23.0, 7.0, 32.0)
    compare = {r[0]: (r[1][1], r[2][1]) for r in f.tables["summary_previous"].rows}
    assert compare["Lines validated"] == (5, 1)
    ndc = {r[0]: r[1:] for r in f.tables["ndc"].rows}
    assert ndc == {"J0696": (1, 0, 0, 1.0), "J1885": (1, 1, 1, 0.0), "J3301": (1, 1, 0, 0.0)}
    jw = {r[0]: r[1:] for r in f.tables["jwjz"].rows}
    assert jw == {"J0696": (1, 0, 0, 0, 1.0)}
    assert f.tables["top_drugs"].rows == [("J1885", 1, 23.0)]
    assert f.tables["top_npis"].rows == [("1234567893", 1, 23.0)]
    assert not f.has_times


def test_outputs_without_alert_lines_use_the_alerts_line_id(tmp_path):
    d = _write(tmp_path / "old", [_line("L1", "96372", "2025-03-11")], [
        _alert("A1", "MISSING_DOCUMENTATION", "2025-03-11", [("L1", "96372", 10.0)],
               queue="clinical_documentation", details={"missing_fields": ["site", "drug.lot_number"]},
               with_lines=False)])
    f = _figures(d)
    total = next(r for r in f.tables["summary"].rows if r[0] == "all")
    assert total[1:3] == (1, 0)  # the one line, held by the alert's line_id
    gaps = {r[0]: r[1] for r in f.tables["documentation"].rows}
    assert gaps == {"site": 1, "drug.lot_number": 1}


def test_empty_replay_gives_a_report_of_zeros(tmp_path, capsys):
    d = _write(tmp_path / "empty", [], [])
    out = tmp_path / "r.html"
    assert main(["report", "--from", "2025-03-10", "--to", "2025-03-16", "--replay-dir", str(d),
                 "--out", str(out)]) == 0
    shown = tables(out.read_text(encoding="utf-8"))
    assert shown["summary"] == [["all", 0, 0, None, 0, 0, 0.0, 0.0, 0.0]]
    assert shown["by_reason"] == []


def test_default_report_of_the_hand_made_day_has_no_ids(tmp_path):
    d = _write(tmp_path / "r", [_line("L1", "96372", "2025-03-11")],
               [_alert("A1", "MISSING_NDC", "2025-03-11", [("L1", "96372", 10.0)])])
    out = tmp_path / "r.html"
    assert main(["report", "--from", "2025-03-10", "--to", "2025-03-16", "--replay-dir", str(d),
                 "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    for secret in ("P-SECRET", "E-SECRET", "R-SECRET", "A54.9", "L1", "A1"):
        assert secret not in text, secret
    assert main(["report", "--from", "2025-03-10", "--to", "2025-03-16", "--replay-dir", str(d),
                 "--out", str(out), "--worklist"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "P-SECRET" in text and "E-SECRET" in text and "R-SECRET" in text and "A1" in text
    assert "A54.9" not in text  # diagnoses are never listed, not even in the worklist


def test_errors_are_one_clear_line(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "--from", "2025-03-10", "--to", "2025-03-16", "--replay-dir",
                 str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "charge_lines.ndjson" in err and "replay" in err and not out.exists()
    assert main(["report", "--from", "2025-03-16", "--to", "2025-03-10", "--replay-dir",
                 str(tmp_path), "--out", str(out)]) == 2
    assert "--to is before --from" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "charge_lines.ndjson").write_text("{not json\n")
    (bad / "alerts.ndjson").write_text("")
    assert main(["report", "--from", "2025-03-10", "--to", "2025-03-16", "--replay-dir", str(bad),
                 "--out", str(out)]) == 2
    assert "cannot read replay directory" in capsys.readouterr().err
