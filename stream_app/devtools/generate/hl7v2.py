"""The generated stream as HL7 v2.5.1 messages (`generate --format hl7v2`), one message
per Kafka record, as an interface engine publishes them:

* ADT^A04 once per visit, before its first record (PV1-3 place, PV1-7 attending NPI,
  PV1-19 visit number, PV1-44 start, IN1 plan) → `encounter.updated`;
* RAS^O17 per administration (ORC, RXA, RXR, OBX CATEGORY / CONTAINER / WASTE);
* RDS^O13 per dispense (ORC, RXD);
* DFT^P03 per E/M service (FT1, OBX SEPID, IN1).

Place of service, payer class and facility zone travel as site codes (PV1-3 facility,
IN1-2 plan id, MSH-4 sending facility) that `site_rows()` maps back: the adapter reads
them through the site configuration (ehr-mapping.md §6), so the worker and `replay` need
those rows in their `--rules-dir` (`write_site(DIR)`, or `generate --site-dir DIR`). IV
push and infusion travel as local route codes (`IVP`, `IVI`) mapped there too, since HL7
table 0162 has only `IV`.

What HL7 v2 cannot carry the way the canonical record does stays canonical (`hl7_message`
returns None): an administration or E/M record without a visit number (no context), an
administration whose rendering NPI, place or payer differ from its visit's (RAS takes
them from the ADT) or that proposes charge modifiers (RAS has no CPT: the charge code is
derived), a dispense without an order number (RDS keys the record and the order on it),
an E/M record whose DFT key (visit, code, date) is not its own across versions or whose
code is outside the rule data's E/M set (a DFT yields nothing for it).
"""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

from stream_app.engine import normalize_route
from stream_app.vocabulary import (
    ADMINISTRATION,
    DISPENSE,
    EM_SERVICE,
    ENTERED_IN_ERROR,
    IM,
    INTRA_ARTERIAL,
    INTRA_ARTICULAR,
    INTRADERMAL,
    IV,
    IV_INFUSION,
    IV_PUSH,
    ORAL,
    OTHER_ROUTE,
    PAYER_CLASSES,
    SC,
)

SENDING_APP = {ADMINISTRATION: "GEN-MAR", DISPENSE: "GEN-RX", EM_SERVICE: "GEN-CHG",
               "adt": "GEN-ADT"}
# normalised route -> (code, coding system) in RXR-1
ROUTE_CODE = {IM: ("IM", "HL70162"), SC: ("SC", "HL70162"), IV: ("IV", "HL70162"),
              IV_PUSH: ("IVP", "L"), IV_INFUSION: ("IVI", "L"),
              INTRA_ARTERIAL: ("IA", "HL70162"), INTRADERMAL: ("ID", "HL70162"),
              INTRA_ARTICULAR: ("IS", "HL70162"), ORAL: ("PO", "HL70162"),
              OTHER_ROUTE: ("TP", "HL70162")}
DOSE_UNIT = {"mg": "mg", "mcg": "ug", "g": "g", "mL": "mL", "units": "[iU]"}
PLACES = ("02", "10", "11", "12", "19", "20", "21", "22", "23", "24", "31", "32", "49", "50",
          "71", "72")
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Phoenix",
         "America/Los_Angeles", "America/Anchorage", "Pacific/Honolulu", "UTC")
SEGMENT_END = "\r"


def facility_of(zone: str | None) -> str:
    """MSH-4.1, the sending facility, named after its zone (the site row maps it back)."""
    return "GEN-" + zone.split("/")[-1].upper() if zone else "GEN"


def place_facility(pos: str) -> str:
    """PV1-3.4.1: a facility per place of service (the site row maps it back)."""
    return f"GEN-POS{pos}"


def plan_id(payer_class: str) -> str:
    return f"GEN-{payer_class.upper()}"


def site_rows() -> dict[str, str]:
    """The site configuration files (name -> CSV text) that map this module's codes back
    (ehr-mapping.md §6)."""
    def table(header: list[str], rows: list[list[str]]) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return out.getvalue()

    since = "2000-01-01"
    return {
        "facility_timezone.csv": table(
            ["source", "facility_key", "timezone", "effective_from", "effective_to"],
            [["hl7v2", facility_of(z), z, since, ""] for z in ZONES]),
        "location_pos.csv": table(
            ["source", "key_type", "key", "place_of_service", "effective_from", "effective_to"],
            [["hl7v2", "hl7_facility", place_facility(p), p, since, ""] for p in PLACES]),
        "payer_class_map.csv": table(
            ["source", "key_type", "key", "payer_class", "effective_from", "effective_to"],
            [["hl7v2", "hl7_plan_id", plan_id(c), c, since, ""] for c in PAYER_CLASSES]),
        "code_map.csv": table(
            ["map", "system", "code", "value", "factor", "effective_from", "effective_to"],
            [["route", "L", "IVP", IV_PUSH, "", since, ""],
             ["route", "L", "IVI", IV_INFUSION, "", since, ""]]),
        "adapter_settings.csv": table(
            ["source", "setting", "value", "effective_from", "effective_to"],
            [["hl7v2", "supervising_npi_from", "ORC-12", since, ""]]),
    }


def write_site(directory: Path | str) -> Path:
    """Writes `site_rows()` into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, text in site_rows().items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def esc(value: object) -> str:
    """A value with the default delimiters escaped (HL7 v2 ch. 2 escape sequences)."""
    text = str(value)
    if not any(c in text for c in "\\|^&~\r\n"):
        return text
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", "\\.br\\")
            .replace("\n", "\\.br\\"))


def ts(rfc3339: str) -> str:
    """RFC 3339 (offset or Z) -> HL7 DTM with its offset: YYYYMMDDHHMMSS[.SSS]+ZZZZ."""
    date, _, rest = rfc3339.partition("T")
    if rest.endswith("Z"):
        clock, offset = rest[:-1], "+0000"
    else:
        cut = max(rest.rfind("+"), rest.rfind("-"))
        clock, offset = rest[:cut], rest[cut:].replace(":", "")
    return date.replace("-", "") + clock.replace(":", "") + offset


def _npi_xcn(npi: str) -> str:
    return esc(npi) + "^" * 12 + "NPI"


def _segment(*fields: str) -> str:
    out = list(fields)
    while out and out[-1] == "":
        out.pop()
    return "|".join(out)


def _fields(name: str, values: dict[int, str]) -> str:
    top = max(values) if values else 0
    return _segment(name, *(values.get(i, "") for i in range(1, top + 1)))


def _header(kind: str, app: str, rec: dict, control_id: str, when: str) -> list[str]:
    # MSH-1 is the field separator itself: fields are numbered from MSH-2 on the wire.
    msh = ["MSH", "^~\\&", app, esc(facility_of(rec.get("facility_timezone"))), "CHARGECAP",
           "BILLING", ts(when), "", kind, esc(control_id), "P", "2.5.1", "", "", "AL", "NE", "",
           "UNICODE UTF-8"]
    return ["|".join(msh), _fields("PID", {3: esc(rec["patient_id"]) + "^^^GEN^MR"})]


def _pv1(rec: dict, pos: str | None, extra: dict[int, str] | None = None) -> str:
    values = {1: "1", 2: "O"}
    if pos:
        values[3] = "^^^" + place_facility(pos)
    if rec.get("encounter_id"):
        values[19] = esc(rec["encounter_id"]) + "^^^GEN^VN"
    values.update(extra or {})
    return _fields("PV1", values)


def _in1(payer: str | None) -> list[str]:
    if not payer:
        return []
    return [_fields("IN1", {1: "1", 2: plan_id(payer), 3: "GEN-PAYER"})]


def _diagnoses(codes) -> str:
    return "~".join(f"{esc(c)}^^I10C" for c in codes or ())


def _recorded(rec: dict) -> str:
    return rec.get("recorded_at") or rec["occurred_at"]


class Hl7Encoder:
    """Encodes a stream's records; `__init__` reads all of them first (the visit of each
    encounter, and which E/M keys are shared)."""

    def __init__(self, records, rules=None) -> None:
        """`rules`: the RuleSet whose E/M code set the adapter applies to DFT charges
        (default: the packaged rule data)."""
        if rules is None:
            from stream_app.rules import load_rules

            rules = load_rules(None)
        self.rules = rules
        self.visit: dict[tuple[str, str], dict] = {}
        em_codes: dict[tuple[str, str, str], set[str]] = {}
        em_keys: dict[tuple, set[str]] = {}
        for rec in records:
            kind = rec.get("event_type")
            enc = rec.get("encounter_id")
            if enc and kind in (ADMINISTRATION, EM_SERVICE):
                key = (rec["patient_id"], enc)
                got = self.visit.get(key)
                if got is None or rec["occurred_at"] < got["occurred_at"]:
                    self.visit[key] = rec
            if kind == EM_SERVICE:
                rid = (rec["patient_id"], rec["record_id"])
                em_codes.setdefault((*rid, ""), set()).add(rec.get("code") or "")
                dft_key = (rec["patient_id"], enc, rec.get("code"),
                           ts(rec["occurred_at"])[:8])
                em_keys.setdefault(dft_key, set()).add(rec["record_id"])
        self._em_codes = em_codes
        self._em_keys = em_keys
        self.sent_visits: set[tuple[str, str]] = set()

    # ---------------------------------------------------------------- what HL7 can carry

    def carries(self, rec: dict) -> bool:
        kind = rec.get("event_type")
        if kind == DISPENSE:
            return bool(rec.get("order_id"))
        enc = rec.get("encounter_id")
        if not enc:
            return False
        if kind == EM_SERVICE:
            codes = self._em_codes.get((rec["patient_id"], rec["record_id"], ""), set())
            key = (rec["patient_id"], enc, rec.get("code"), ts(rec["occurred_at"])[:8])
            if len(codes) != 1 or len(self._em_keys.get(key, ())) != 1:
                return False
            # DFT yields an em.service only for a code of the E/M set (ehr-mapping §4.5)
            on = date.fromisoformat(rec["occurred_at"][:10])
            return rec.get("code") in self.rules.code_set("em", on)
        if kind == ADMINISTRATION:
            visit = self.visit.get((rec["patient_id"], enc), rec)
            same = all(rec.get(f) == visit.get(f) for f in
                       ("rendering_npi", "place_of_service", "payer_class", "facility_timezone"))
            return same and not rec.get("charge_modifiers") and rec.get("drug") is not None
        return False

    # ---------------------------------------------------------------- messages

    def messages(self, rec: dict) -> list[bytes] | None:
        """The HL7 messages of one record (the visit's ADT first, once), or None when the
        record stays canonical (module docstring)."""
        if not self.carries(rec):
            return None
        kind = rec["event_type"]
        out = []
        if kind in (ADMINISTRATION, EM_SERVICE):
            key = (rec["patient_id"], rec["encounter_id"])
            if key not in self.sent_visits:
                self.sent_visits.add(key)
                out.append(self._adt(self.visit.get(key, rec)))
        build = {ADMINISTRATION: self._ras, DISPENSE: self._rds, EM_SERVICE: self._dft}[kind]
        out.append(build(rec))
        return [SEGMENT_END.join(m).encode("utf-8") for m in out]

    def adt(self, rec: dict) -> bytes:
        return SEGMENT_END.join(self._adt(rec)).encode("utf-8")

    def _adt(self, visit: dict) -> list[str]:
        control = f"ADT-{visit['encounter_id']}"
        segs = _header("ADT^A04^ADT_A01", SENDING_APP["adt"], visit, control, visit["occurred_at"])
        segs.insert(1, _fields("EVN", {1: "A04", 2: ts(visit["occurred_at"])}))
        extra = {44: ts(visit["occurred_at"])}
        if visit.get("rendering_npi"):
            extra[7] = _npi_xcn(visit["rendering_npi"])
        segs.append(_pv1(visit, visit.get("place_of_service"), extra))
        segs.extend(_in1(visit.get("payer_class")))
        return segs

    def _ras(self, rec: dict) -> list[str]:
        segs = _header("RAS^O17^RAS_O17", SENDING_APP[ADMINISTRATION], rec, rec["event_id"],
                       _recorded(rec))
        segs.append(_pv1(rec, rec.get("place_of_service")))
        orc = {1: "RE", 3: esc(rec["record_id"])}
        if rec.get("order_id"):
            orc[2] = esc(rec["order_id"])
        if rec.get("supervising_npi"):
            orc[12] = _npi_xcn(rec["supervising_npi"])
        segs.append(_fields("ORC", orc))
        drug = rec["drug"]
        name = esc(drug.get("name") or "")
        triplets = []
        if drug.get("hcpcs"):
            triplets.append(f"{esc(drug['hcpcs'])}^{name}^HCPCS")
        if drug.get("ndc"):
            triplets.append(f"{esc(drug['ndc'])}^{name}^NDC")
        rxa5 = "^".join(triplets[:2]) if triplets else f"^{name}"
        rxa = {1: "0", 2: "1", 3: ts(rec["occurred_at"]), 5: rxa5, 20: "CP",
               21: "D" if rec.get("status") == ENTERED_IN_ERROR else "A"}
        if rec.get("ended_at"):
            rxa[4] = ts(rec["ended_at"])
        unit = DOSE_UNIT.get(drug.get("dose_unit") or "")
        if drug.get("dose") is not None and unit:
            rxa[6] = str(drug["dose"])
            rxa[7] = f"{unit}^^UCUM"
        if rec.get("performer_id") or rec.get("performer_credential"):
            rxa[10] = esc(rec.get("performer_id") or "") + "^" * 20 + esc(
                rec.get("performer_credential") or "")
        if drug.get("lot_number"):
            rxa[15] = esc(drug["lot_number"])
        if rec.get("diagnosis_codes"):
            rxa[19] = _diagnoses(rec["diagnosis_codes"])
        segs.append(_fields("RXA", rxa))
        rxr = {}
        norm = normalize_route(rec.get("route")) if rec.get("route") else None
        if norm in ROUTE_CODE:
            code, system = ROUTE_CODE[norm]
            rxr[1] = f"{code}^^{system}"
        if rec.get("site"):
            rxr[2] = "^" + esc(rec["site"])
        if rxr:
            segs.append(_fields("RXR", rxr))
        n = 0
        for label, value, obx_unit in (("CATEGORY", drug.get("category"), None),
                                       ("CONTAINER", drug.get("container"), None),
                                       ("WASTE", drug.get("wasted_amount"), unit)):
            if value is None:
                continue
            n += 1
            kind = "NM" if label == "WASTE" else "CE"
            segs.append(_fields("OBX", {1: str(n), 2: kind, 3: f"{label}^^L",
                                        5: str(value) if kind == "NM" else f"{esc(value)}^^L",
                                        6: f"{obx_unit}^^UCUM" if obx_unit else "", 11: "F"}))
        return segs

    def _rds(self, rec: dict) -> list[str]:
        segs = _header("RDS^O13^RDS_O13", SENDING_APP[DISPENSE], rec, rec["event_id"],
                       _recorded(rec))
        if rec.get("encounter_id"):
            segs.append(_pv1(rec, None))
        withdrawn = rec.get("status") == ENTERED_IN_ERROR
        segs.append(_fields("ORC", {1: "CA" if withdrawn else "RE", 2: esc(rec["order_id"]),
                                    3: esc(rec["record_id"])}))
        rxd = {1: "1", 2: f"{esc(rec.get('ndc') or '')}^{esc(rec.get('drug_name') or '')}^NDC",
               3: ts(rec["occurred_at"])}
        if rec.get("quantity") is not None:
            rxd[4] = str(rec["quantity"])
        if rec.get("quantity_unit"):
            rxd[5] = esc(rec["quantity_unit"])
        if rec.get("lot_number"):
            rxd[18] = esc(rec["lot_number"])
        segs.append(_fields("RXD", rxd))
        return segs

    def _dft(self, rec: dict) -> list[str]:
        segs = _header("DFT^P03^DFT_P03", SENDING_APP[EM_SERVICE], rec, rec["event_id"],
                       _recorded(rec))
        segs.insert(1, _fields("EVN", {1: "P03", 2: ts(_recorded(rec))}))
        segs.append(_pv1(rec, rec.get("place_of_service")))
        code = esc(rec["code"])
        ft1 = {1: "1", 2: esc(rec["record_id"]), 4: ts(rec["occurred_at"]),
               6: "CD" if rec.get("status") == ENTERED_IN_ERROR else "CG",
               7: f"{code}^^C4", 10: "1", 25: f"{code}^^C4"}
        if rec.get("diagnosis_codes"):
            ft1[19] = _diagnoses(rec["diagnosis_codes"])
        if rec.get("rendering_npi"):
            ft1[20] = _npi_xcn(rec["rendering_npi"])
        if rec.get("modifiers"):
            ft1[26] = "~".join(f"{esc(m)}^^C4" for m in rec["modifiers"])
        segs.append(_fields("FT1", ft1))
        if "separately_identifiable" in rec:
            answer = "Y" if rec["separately_identifiable"] else "N"
            segs.append(_fields("OBX", {1: "1", 2: "CE", 3: "SEPID^^L", 5: f"{answer}^^HL70136",
                                        11: "F"}))
        segs.extend(_in1(rec.get("payer_class")))
        return segs
