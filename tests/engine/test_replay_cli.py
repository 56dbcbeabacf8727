"""`replay FILE... --out DIR --metrics FILE` as contract.md §5 describes it."""

from __future__ import annotations

from pathlib import Path

import orjson

from stream_app.cli import main

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "spec" / "examples"


def _read(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_replay_writes_three_files_sorted_by_key_with_dead_letters_by_line(tmp_path, capsys):
    bad = tmp_path / "bad.ndjson"
    example = (EXAMPLES / "office-visit.ndjson").read_bytes()
    bad.write_bytes(b"not json\n" + example + b'{"event_type":"em.service"}\n\xff\xfe\n')
    out = tmp_path / "out"
    assert main(["replay", str(bad), str(EXAMPLES / "office-visit.ndjson"), "--out", str(out)]) == 0

    lines = _read(out / "charge_lines.ndjson")
    alerts = _read(out / "alerts.ndjson")
    dead = _read(out / "dead_letters.ndjson")
    assert [v["line_id"] for v in lines] == sorted(v["line_id"] for v in lines)
    assert [v["alert_id"] for v in alerts] == sorted(v["alert_id"] for v in alerts)
    # The example's three records come twice (same event ids): redelivery, not new lines.
    assert sorted(v["code"] for v in lines if v["state"] == "active") == ["96372", "99213", "J0696"]
    assert [(d["source"], d["line"], d["error_code"]) for d in dead] == [
        (str(bad), 1, "INVALID_JSON"),
        (str(bad), 5, "MISSING_FIELD"),
        (str(bad), 6, "INVALID_ENCODING"),
    ]
    assert dead[1]["field"] == "event_id"
    err = capsys.readouterr().err
    assert "3 dead letters" in err and "3 redelivered" in err


def test_replay_metrics_textfile(tmp_path):
    prom = tmp_path / "m.prom"
    assert main(["replay", str(EXAMPLES / "office-visit.ndjson"), "--metrics", str(prom)]) == 0
    text = prom.read_text()
    for topic in ("ehr.medication-administrations", "ehr.em-services", "pharmacy.dispenses"):
        assert f'chargecap_events_consumed_total{{topic="{topic}"}} 1.0' in text
    assert 'chargecap_charge_lines_emitted_total{code_family="96372",state="active"} 1.0' in text
    assert 'chargecap_charge_lines_emitted_total{code_family="em",state="active"} 1.0' in text
    assert "P100" not in text and "A54.9" not in text  # no patient ids or diagnoses in labels
