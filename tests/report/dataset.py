"""The report tests' dataset and the figures they expect, computed without the report's code.

`build(dir)` generates a two-week stream (every injected error kind), replays it with the
engine and writes the replay directory. Two independent sources of expected figures:

* `from_labels`: the generator's own record of what it injected (`labels`, `fixed`) and
  the input records (latest version per record, its service date from `occurred_at` and
  `facility_timezone`): how many alerts of each reason a correct validator raises in the
  period, by payer class and missing field.
* `from_outputs`: every figure of the summary, denial-risk, audit and where-to-act tables,
  recounted in plain Python from the replay files (no SQL, nothing from stream_app.report).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from stream_app.config import Settings
from stream_app.devtools.generate import EXPECTED_REASON, generate_stream, write_ndjson
from stream_app.replay import replay, write_outputs
from stream_app.runtime import build_engine

SEED = 22
START = date(2025, 3, 3)
DAYS = 14
PERIOD = (date(2025, 3, 10), date(2025, 3, 16))  # the second week; the first is "previous"
PREVIOUS = (date(2025, 3, 3), date(2025, 3, 9))
DRUG_CODE = re.compile(r"^[A-Z]\d{4}$")
PAYERS = ("medicare", "medicaid", "commercial", "workers_comp", "self_pay")


@dataclass
class Dataset:
    input_path: Path
    replay_dir: Path
    stream: object  # GeneratedStream


def build(directory: Path) -> Dataset:
    stream = generate_stream(SEED, patients=260, days=DAYS, start_date=START, error_rate=0.3)
    input_path = directory / "input.ndjson"
    write_ndjson(stream, str(input_path), include_malformed=False)
    res = replay([str(input_path)], build_engine(Settings()))
    out = directory / "replay"
    write_outputs(res, out)
    return Dataset(input_path, out, stream)


# --------------------------------------------------------------------------- from the generator

def _service_date(rec: dict) -> date:
    ts = datetime.fromisoformat(rec["occurred_at"].replace("Z", "+00:00"))
    return ts.astimezone(ZoneInfo(rec.get("facility_timezone") or "UTC")).date()


def latest_versions(events: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (event_type, record_id): the version with the newest recorded_at, then event_id."""
    latest: dict[tuple[str, str], tuple[tuple, dict]] = {}
    for rec in events:
        key = (rec["event_type"], rec["record_id"])
        rank = (datetime.fromisoformat(
            (rec.get("recorded_at") or rec["occurred_at"]).replace("Z", "+00:00")), rec["event_id"])
        if key not in latest or rank > latest[key][0]:
            latest[key] = (rank, rec)
    return {k: r for k, (_, r) in latest.items()}


@dataclass
class LabelExpectations:
    by_reason: Counter            # reason code -> alerts in the period
    em99211_by_payer: Counter     # payer class -> EM_99211_SAME_DAY alerts
    missing_fields: Counter       # documentation field -> alerts naming it
    modifier_25_alerts: int       # alerts about modifier 25


# Kinds whose record, still carrying the problem at the end, gets exactly one alert of the
# expected reason; the missing field each documentation kind leaves out.
_FIELD_OF_KIND = {"missing_lot_number": "drug.lot_number", "missing_site": "site",
                  "missing_diagnosis": "diagnosis_codes"}
_MODIFIER_25_KINDS = ("em_missing_modifier_25", "em_not_separately_identifiable",
                      "modifier_25_on_96372")


# Routes and categories whose administration is coded 96360-96379 (an "injection day"
# for the E/M rules, contract §3): not oral/other/intradermal/intra-articular, not the
# vaccine, allergen or chemotherapy administration codes.
_NOT_INJECTION_ROUTES = {"ORAL", "OTHER", "INTRADERMAL", "INTRA_ARTICULAR"}
_NOT_INJECTION_CATEGORIES = {"vaccine", "allergen_immunotherapy", "antineoplastic",
                             "hormonal_antineoplastic", "procedural"}
_EM_KINDS = ("em_missing_modifier_25", "em_99211_with_injection", "em_not_separately_identifiable")


def _injection_days(latest: dict[tuple[str, str], dict]) -> set[tuple[str, date]]:
    days = set()
    for (event_type, _), rec in latest.items():
        if event_type != "medication.administered" or rec.get("status") == "entered-in-error":
            continue
        if (str(rec.get("route", "")).upper() in _NOT_INJECTION_ROUTES
                or rec.get("drug", {}).get("category") in _NOT_INJECTION_CATEGORIES):
            continue
        days.add((rec["patient_id"], _service_date(rec)))
    return days


def from_labels(stream, period: tuple[date, date]) -> LabelExpectations:
    latest = latest_versions(stream.events)
    injection_days = _injection_days(latest)
    exp = LabelExpectations(Counter(), Counter(), Counter(), 0)
    for key, kind in stream.labels.items():
        rec = latest[key]
        if key in stream.fixed or rec.get("status") == "entered-in-error":
            continue
        day = _service_date(rec)
        if not period[0] <= day <= period[1]:
            continue
        if kind in _EM_KINDS and (rec["patient_id"], day) not in injection_days:
            continue  # the day's injection was withdrawn: the E/M rules no longer apply
        reason = EXPECTED_REASON[kind]
        if reason is None:
            continue
        exp.by_reason[reason] += 1
        if kind == "em_99211_with_injection":
            exp.em99211_by_payer[rec["payer_class"]] += 1
        if kind in _FIELD_OF_KIND:
            exp.missing_fields[_FIELD_OF_KIND[kind]] += 1
        if kind in _MODIFIER_25_KINDS:
            exp.modifier_25_alerts += 1
    return exp


# --------------------------------------------------------------------------- from the outputs

def _read(path: Path) -> list[dict]:
    with open(path, "rb") as fh:
        return [orjson.loads(x) for x in fh if x.strip()]


def _alert_lines(a: dict) -> list[dict]:
    if a.get("lines") is not None:
        return a["lines"]
    if a.get("line_id"):
        return [{"line_id": a["line_id"], "code": a["code"],
                 "expected_reimbursement": a["revenue_at_risk"]}]
    return []


def _in(d: str, period: tuple[date, date]) -> bool:
    return period[0] <= date.fromisoformat(d) <= period[1]


class OutputCounts:
    """The replay files recounted, line by line and alert by alert."""

    def __init__(self, replay_dir: Path) -> None:
        self.lines = _read(replay_dir / "charge_lines.ndjson")
        self.alerts = _read(replay_dir / "alerts.ndjson")
        emitted = {ln["line_id"] for ln in self.lines}
        self.known: dict[str, dict] = {
            ln["line_id"]: {"code": ln["code"], "payer": ln["payer_class"] or "unknown",
                            "date": ln["service_date"], "state": ln["state"],
                            "expected": ln["expected_reimbursement"] or 0.0,
                            "modifiers": ln["modifiers"], "risk": ln["denial_risk"]}
            for ln in self.lines}
        for a in sorted(self.alerts, key=lambda a: a["alert_id"]):
            for al in _alert_lines(a):
                if al["line_id"] not in emitted and al["line_id"] not in self.known:
                    self.known[al["line_id"]] = {
                        "code": al["code"], "payer": a["payer_class"] or "unknown",
                        "date": a["service_date"], "state": "not emitted",
                        "expected": al["expected_reimbursement"] or 0.0, "modifiers": None,
                        "risk": None}
        self.held = {al["line_id"] for a in self.alerts if a["severity"] == "block"
                     for al in _alert_lines(a)}

    def alerts_in(self, period) -> list[dict]:
        return [a for a in self.alerts if _in(a["service_date"], period)]

    def lines_in(self, period) -> dict[str, dict]:
        return {k: v for k, v in self.known.items() if _in(v["date"], period)}

    # ---- summary
    def summary(self, period) -> dict[str, tuple]:
        out: dict[str, list] = defaultdict(lambda: [0, 0, 0.0, 0, 0, 0.0, 0.0])
        for lid, ln in self.lines_in(period).items():
            for p in (ln["payer"], "all"):
                row = out[p]
                row[0] += 1
                row[1] += lid not in self.held
                row[2] += ln["expected"] if ln["state"] == "active" else 0.0
        for a in self.alerts_in(period):
            for p in (a["payer_class"] or "unknown", "all"):
                row = out[p]
                row[3] += 1
                row[4] += a["state"] == "resolved"
                row[5] += a["revenue_at_risk"] if a["state"] == "open" else 0.0
                row[6] += a["revenue_at_risk"] if a["state"] == "resolved" else 0.0
        return {p: (n, clean, clean / n if n else None, opened, resolved, round(risk, 2),
                    round(rec, 2), round(exp, 2))
                for p, (n, clean, exp, opened, resolved, risk, rec) in out.items()}

    # ---- alert tables: key -> (alerts, open, resolved, at risk, recovered)
    @staticmethod
    def _agg(alerts, key) -> dict:
        out: dict = defaultdict(lambda: [0, 0, 0, 0.0, 0.0])
        for a in alerts:
            for k in key(a):
                row = out[k]
                row[0] += 1
                row[1] += a["state"] == "open"
                row[2] += a["state"] == "resolved"
                row[3] += a["revenue_at_risk"] if a["state"] == "open" else 0.0
                row[4] += a["revenue_at_risk"] if a["state"] == "resolved" else 0.0
        return {k: (n, o, r, round(x, 2), round(y, 2)) for k, (n, o, r, x, y) in out.items()}

    def by_reason(self, period) -> dict:
        return self._agg(self.alerts_in(period), lambda a: [(a["reason_code"], a["work_queue"])])

    def by_queue(self, period) -> dict:
        return self._agg(self.alerts_in(period), lambda a: [a["work_queue"]])

    def by_carc(self, period) -> dict:
        return self._agg(self.alerts_in(period),
                         lambda a: [(a.get("predicted_denial") or {}).get("carc") or "none"])

    def risk_distribution(self, period) -> dict:
        out: Counter = Counter()
        for ln in self.lines_in(period).values():
            if ln["state"] != "active":
                continue
            r = ln["risk"]
            label = ("0" if r == 0 else "≤ 0.10" if r <= 0.1 else "0.10–0.25" if r <= 0.25
                     else "0.25–0.50" if r <= 0.5 else "> 0.50")
            out[label] += 1
        return out

    def _drug_of(self, a: dict) -> str | None:
        drugs = sorted(al["code"] for al in _alert_lines(a) if DRUG_CODE.match(al["code"] or ""))
        return drugs[0] if drugs else None

    def ndc(self, period) -> dict:
        bad: dict[str, bool] = {}
        for a in self.alerts:
            if a["reason_code"] in ("MISSING_NDC", "INVALID_NDC"):
                for al in _alert_lines(a):
                    bad[al["line_id"]] = bad.get(al["line_id"], False) or a["state"] == "open"
        out: dict = defaultdict(lambda: [0, 0, 0])
        for lid, ln in self.lines_in(period).items():
            if DRUG_CODE.match(ln["code"]):
                row = out[ln["code"]]
                row[0] += 1
                row[1] += lid in bad
                row[2] += bad.get(lid, False)
        return {c: (n, b, o, (n - b) / n) for c, (n, b, o) in out.items()}

    def jwjz(self, period) -> dict:
        out: dict = defaultdict(lambda: [0, 0, 0, 0])
        for lid in sorted(self.lines_in(period)):
            ln = self.known[lid]
            if (ln["payer"] == "medicare" and ln["state"] == "active" and ln["modifiers"] is not None
                    and DRUG_CODE.match(ln["code"])):
                out[ln["code"]][0] += "JZ" in ln["modifiers"]
                out[ln["code"]][1] += "JW" in ln["modifiers"]
        for a in self.alerts_in(period):
            if a["reason_code"] == "WASTE_MODIFIER_MISSING":
                row = out[self._drug_of(a) or a["code"]]
                row[2] += 1
                row[3] += a["state"] == "open"
        return {c: (jz, jw, m, o, (jz + jw) / (jz + jw + m))
                for c, (jz, jw, m, o) in out.items() if jz + jw + m}

    def modifiers(self, period) -> dict:
        out = {}
        alerts = self.alerts_in(period)
        for m in ("25", "59", "XE", "XS", "XP", "XU", "76", "77"):
            used = sum(1 for ln in self.lines_in(period).values()
                       if ln["state"] == "active" and m in (ln["modifiers"] or []))
            about = [a for a in alerts if (
                a["reason_code"] == "MODIFIER_NOT_ALLOWED"
                and m in ((a.get("details") or {}).get("modifiers") or []))
                or (m == "25" and a["reason_code"] in ("EM_MISSING_MODIFIER_25",
                                                       "EM_NOT_SEPARATELY_IDENTIFIABLE"))]
            opened = [a for a in about if a["state"] == "open"]
            out[m] = (used, len(about), len(opened),
                      round(sum(a["revenue_at_risk"] for a in opened), 2))
        return out

    def frequency_mue(self, period) -> dict:
        return self._agg([a for a in self.alerts_in(period)
                          if a["reason_code"] in ("FREQUENCY_LIMIT", "MUE_EXCEEDED")],
                         lambda a: [(a["reason_code"], a["code"], a["severity"])])

    def duplicates(self, period) -> dict:
        return self._agg([a for a in self.alerts_in(period) if a["reason_code"] == "DUPLICATE_SERVICE"],
                         lambda a: [self._drug_of(a) or a["code"]])

    def documentation(self, period) -> dict:
        def fields(a):
            if a["reason_code"] == "MISSING_DIAGNOSIS":
                return ["diagnosis_codes"]
            return a["details"]["missing_fields"]
        return self._agg([a for a in self.alerts_in(period)
                          if a["reason_code"] in ("MISSING_DOCUMENTATION", "MISSING_DIAGNOSIS")],
                         fields)

    def em99211(self, period) -> dict:
        return self._agg([a for a in self.alerts_in(period) if a["reason_code"] == "EM_99211_SAME_DAY"],
                         lambda a: [a["payer_class"] or "unknown", "all"])

    def top(self, period, key) -> list[tuple]:
        out: dict = defaultdict(lambda: [0, 0.0])
        for a in self.alerts_in(period):
            k = key(a)
            if a["state"] == "open" and k is not None:
                out[k][0] += 1
                out[k][1] += a["revenue_at_risk"]
        rows = [(k, n, round(x, 2)) for k, (n, x) in out.items()]
        return sorted(rows, key=lambda r: (-r[2], -r[1], r[0]))[:10]

    def top_npis(self, period) -> list[tuple]:
        return self.top(period, lambda a: a.get("rendering_npi") or "none")

    def top_drugs(self, period) -> list[tuple]:
        return self.top(period, self._drug_of)


def previous_of(period: tuple[date, date]) -> tuple[date, date]:
    days = (period[1] - period[0]).days + 1
    return period[0] - timedelta(days=days), period[0] - timedelta(days=1)
