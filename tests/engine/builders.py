"""Builders for engine tests: raw input dicts -> bytes -> parse_record -> Engine decisions.

Every builder starts from a clean, valid office IM injection like the spec example
(shared/spec/examples/office-visit.ndjson: ceftriaxone J0696 500 mg, POS 11, commercial)
so a test changes only what it is about. Nested ``drug`` overrides are merged; pass
``DROP`` as a value to remove a field from the raw record.

Differences from the spec example, chosen so one administration alone is clean:
the drug carries its NDC (``0409-7332-01``) itself (no dispense needed) and there is no
``charge_code`` (the code is derived; tests of validation pass one explicitly).
"""

from __future__ import annotations

import copy
import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from stream_app.engine import DeadLetter, Engine, EngineSettings, Outcome, RuleSet, parse_record
from stream_app.rules import load_rules
from stream_app.vocabulary import ALERT, LINE

DROP = object()

PATIENT = "P100"
DAY = "2025-03-14"
TZ = "America/Chicago"
NPI = "1234567893"  # CMS example NPI (valid Luhn check digit)
SETTLED_NOW = 10_000.0  # well past settle_seconds (900) after now=0; far before any close
RULES_DIR = Path(__file__).resolve().parents[2] / "stream_app" / "rules"


def npi(prefix9: str) -> str:
    """A valid NPI: Luhn check digit over '80840' + the 9 digits (billing-rules.md §8)."""
    digits = [int(c) for c in "80840" + prefix9]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:  # rightmost payload digit is doubled (check digit not yet appended)
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix9 + str((10 - total % 10) % 10)


NPI_2 = npi("987654321")
assert NPI_2 != NPI and npi("123456789") == NPI  # the helper agrees with the CMS example


def at(hhmm: str, day: str = DAY) -> str:
    """RFC 3339 timestamp at UTC-5 (Chicago daylight time; for the daytime hours the tests
    use, the service date in America/Chicago is `day` whatever the season)."""
    return f"{day}T{hhmm}:00-05:00"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is DROP:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


_counter = {"n": 0}


def _next(prefix: str) -> str:
    _counter["n"] += 1
    return f"{prefix}-{_counter['n']:05d}"


ADMIN_BASE = {
    "event_type": "medication.administered",
    "patient_id": PATIENT,
    "encounter_id": "E100",
    "facility_timezone": TZ,
    "place_of_service": "11",
    "payer_class": "commercial",
    "route": "IM",
    "site": "right ventrogluteal",
    "drug": {"name": "ceftriaxone", "ndc": "0409-7332-01", "hcpcs": "J0696", "dose": 500,
             "dose_unit": "mg", "category": "therapeutic", "container": "single_dose",
             "wasted_amount": 0, "lot_number": "LT4471"},
    "performer_id": "nurse-7",
    "performer_credential": "RN",
    "rendering_npi": NPI,
    "supervising_npi": NPI,
    "diagnosis_codes": ["A54.9"],
}

EM_BASE = {
    "event_type": "em.service",
    "patient_id": PATIENT,
    "encounter_id": "E100",
    "facility_timezone": TZ,
    "code": "99213",
    "modifiers": ["25"],
    "separately_identifiable": True,
    "place_of_service": "11",
    "payer_class": "commercial",
    "rendering_npi": NPI,
    "diagnosis_codes": ["A54.9"],
}

DISPENSE_BASE = {
    "event_type": "drug.dispensed",
    "patient_id": PATIENT,
    "facility_timezone": TZ,
    "ndc": "0409-7332-01",
    "drug_name": "ceftriaxone",
    "quantity": 1,
    "quantity_unit": "UN",
    "lot_number": "LT4471",
}

# Drugs with a HCPCS code, a billing unit and a crosswalk NDC in the packaged rule data.
DRUGS = {
    "ceftriaxone": {"name": "ceftriaxone", "ndc": "0409-7332-01", "hcpcs": "J0696",
                    "dose": 500, "dose_unit": "mg"},
    "ketorolac": {"name": "ketorolac", "ndc": "0409-3795-01", "hcpcs": "J1885",
                  "dose": 30, "dose_unit": "mg"},
    "dexamethasone": {"name": "dexamethasone", "ndc": "63323-0165-01", "hcpcs": "J1100",
                      "dose": 4, "dose_unit": "mg"},
    "promethazine": {"name": "promethazine", "ndc": "0641-0928-25", "hcpcs": "J2550",
                     "dose": 25, "dose_unit": "mg"},
    "b12": {"name": "cyanocobalamin", "ndc": "0517-0031-25", "hcpcs": "J3420",
            "dose": 1000, "dose_unit": "mcg"},
    "ondansetron": {"name": "ondansetron", "ndc": "0641-6078-25", "hcpcs": "J2405",
                    "dose": 4, "dose_unit": "mg"},
    "morphine": {"name": "morphine", "ndc": "0409-1890-01", "hcpcs": "J2270",
                 "dose": 4, "dose_unit": "mg"},
    "botox": {"name": "onabotulinumtoxinA", "ndc": "0023-1145-01", "hcpcs": "J0585",
              "dose": 100, "dose_unit": "units"},
}


def admin_raw(*, time: str = "09:20", day: str = DAY, drug: dict | str | None = None,
              **over) -> dict:
    """Raw `medication.administered` dict. `drug` may name an entry of DRUGS."""
    base = _merge(ADMIN_BASE, {"occurred_at": at(time, day)})
    if isinstance(drug, str):
        drug = DRUGS[drug]
    if drug:
        base = _merge(base, {"drug": drug})
    base.setdefault("event_id", _next("ev-a"))
    base.setdefault("record_id", _next("mar"))
    return _merge(base, over)


def em_raw(*, time: str = "09:00", day: str = DAY, **over) -> dict:
    base = _merge(EM_BASE, {"occurred_at": at(time, day)})
    base.setdefault("event_id", _next("ev-e"))
    base.setdefault("record_id", _next("note"))
    return _merge(base, over)


def dispense_raw(*, time: str = "09:05", day: str = DAY, **over) -> dict:
    base = _merge(DISPENSE_BASE, {"occurred_at": at(time, day)})
    base.setdefault("event_id", _next("ev-d"))
    base.setdefault("record_id", _next("disp"))
    return _merge(base, over)


def parse(raw: dict):
    rec = parse_record(orjson.dumps(raw), default_tz="UTC")
    assert not isinstance(rec, DeadLetter), rec
    return rec


def admin(**kw):
    return parse(admin_raw(**kw))


def em(**kw):
    return parse(em_raw(**kw))


def dispense(**kw):
    return parse(dispense_raw(**kw))


_RULES: dict[str | None, RuleSet] = {}


def rules(directory: str | Path | None = None) -> RuleSet:
    key = str(directory) if directory else None
    if key not in _RULES:
        _RULES[key] = load_rules(directory)
    return _RULES[key]


def engine(rules_dir: str | Path | None = None, **settings) -> Engine:
    return Engine(rules(rules_dir), EngineSettings(**settings))


def rules_dir_with(tmp_path: Path, name: str, edit) -> Path:
    """A rules directory holding a copy of packaged `name` changed by `edit(rows) -> rows`
    (rows as lists of strings, header first); other files fall back to the packaged ones."""
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    with open(RULES_DIR / name, newline="") as fh:
        rows = list(csv.reader(fh))
    rows = edit(rows)
    with open(d / name, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return d


def copy_rules(tmp_path: Path) -> Path:
    d = tmp_path / "rules_full"
    shutil.copytree(RULES_DIR, d, ignore=shutil.ignore_patterns("*.py", "__pycache__", "*.md"))
    return d


@dataclass
class Result:
    """Last message per key after a run, as a compacted topic would hold them."""

    lines_by_key: dict[str, dict] = field(default_factory=dict)
    alerts_by_key: dict[str, dict] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    state: object = None

    def keep(self, out: Outcome) -> Outcome:
        self.outcomes.append(out)
        for d in out.decisions:
            (self.lines_by_key if d.kind == LINE else self.alerts_by_key)[d.key] = d.value
            assert d.kind in (LINE, ALERT)
        return out

    @property
    def lines(self) -> list[dict]:
        """Active lines, sorted by (code, modifiers, line_id) for stable comparisons."""
        act = [v for v in self.lines_by_key.values() if v["state"] == "active"]
        return sorted(act, key=lambda v: (v["code"], v["modifiers"], v["line_id"]))

    @property
    def alerts(self) -> list[dict]:
        return [v for v in self.alerts_by_key.values() if v["state"] == "open"]

    def codes(self) -> list[str]:
        return sorted(v["code"] for v in self.lines)

    def reasons(self) -> list[str]:
        return sorted(a["reason_code"] for a in self.alerts)

    def line(self, code: str, **match) -> dict:
        found = [v for v in self.lines if v["code"] == code
                 and all(v.get(k) == x for k, x in match.items())]
        assert len(found) == 1, (code, match, self.lines)
        return found[0]

    def alert(self, reason: str) -> dict:
        found = [a for a in self.alerts if a["reason_code"] == reason]
        assert len(found) == 1, (reason, self.alerts)
        return found[0]

    def void_lines(self) -> list[dict]:
        return [v for v in self.lines_by_key.values() if v["state"] == "void"]


def run(records: list, *, settle: bool = True, eng: Engine | None = None,
        rules_dir: str | Path | None = None) -> Result:
    """Ingest raw dicts or parsed records for one patient at now=0, then (by default)
    advance the clock past settle_seconds so MISSING_NDC may open; days stay open."""
    eng = eng or engine(rules_dir)
    recs = [parse(r) if isinstance(r, dict) else r for r in records]
    res = Result()
    state, out = eng.ingest(None, recs, 0.0)
    res.keep(out)
    if settle:
        state, out = eng.advance(state, SETTLED_NOW)
        res.keep(out)
    res.state = state
    return res


def risk(*weights: float) -> float:
    """denial_risk = 1 - prod(1 - w) (contract.md §3), rounded as emitted (4 places)."""
    p = 1.0
    for w in weights:
        p *= 1.0 - w
    return round(1.0 - p, 4)
