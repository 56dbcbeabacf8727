"""HL7 v2.5.1 → canonical records: every rule of ehr-mapping.md §4, row by row.

Read this module next to the mapping: the code tables first (§4.1, §4.3), then one
function per message family (§4.2 identity, §4.3 RXA, §4.4 RXD, §4.5 FT1, §4.6 ADT), each
row of the mapping's table a commented line or block in the same order. What the message
does not state is left out of the record (with a warning when it was there but unusable);
only the hard fields of §4.2 and the per-family refusals of §5 produce dead letters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from stream_app.adapters.hl7v2.message import Message, Segment
from stream_app.adapters.hl7v2.timestamps import (
    InvalidTimestamp,
    Stamp,
    known_zone,
    parse_timestamp,
    written_date,
)
from stream_app.adapters.site import SiteConfig
from stream_app.vocabulary import (
    ADMINISTRATION,
    COMPLETED,
    CONTAINERS,
    DISPENSE,
    DRUG_CATEGORIES,
    EM_SERVICE,
    ENCOUNTER_UPDATED,
    ENTERED_IN_ERROR,
    HL7_INVALID,
    HL7_INVALID_TIMESTAMP,
    HL7_MISSING_FIELD,
    HL7_NOT_BILLABLE,
    IM,
    INTRA_ARTERIAL,
    INTRA_ARTICULAR,
    INTRADERMAL,
    IV,
    ORAL,
    OTHER_ROUTE,
    SC,
)

SOURCE = "hl7v2"
FORMAT = "hl7v2"

# ----------------------------------------------------------------------------- §4.1 tables

# Coding systems by table 0396 name (CE/CWE triplet component 3).
NDC_SYSTEMS = frozenset({"NDC"})
HCPCS_SYSTEMS = frozenset({"HCPCS", "HPC"})
CPT_SYSTEMS = frozenset({"C4", "CPT", "CPT4"})
RXNORM_SYSTEMS = frozenset({"RXNORM"})
CVX_SYSTEMS = frozenset({"CVX"})
ICD10CM_SYSTEMS = frozenset({"I10C", "I10", "ICD10CM"})
UNIT_SYSTEMS = frozenset({"UCUM", "ISO+", "ANS+"})
NPI_OID = "2.16.840.1.113883.4.6"
HCPCS_LEVEL_II = re.compile(r"[A-V][0-9]{4}")
V2_0360 = "http://terminology.hl7.org/CodeSystem/v2-0360"

# Table 0162 (route of administration) → contract route (§4.3). Unknown codes → absent.
ROUTE_0162 = {
    "IM": IM, "SC": SC, "SQ": SC, "SUBQ": SC, "SUBCUT": SC, "IV": IV,
    "IA": INTRA_ARTERIAL, "ID": INTRADERMAL, "IS": INTRA_ARTICULAR, "IB": INTRA_ARTICULAR,
    "PO": ORAL,
    **{code: OTHER_ROUTE for code in (
        "AP", "B", "DT", "EP", "ET", "GTT", "GU", "IC", "ICV", "IH", "IHA", "IMR", "IN", "IO",
        "IP", "IT", "IU", "MM", "MTH", "NG", "NP", "NS", "NT", "OP", "OT", "OTH", "PF", "PR",
        "RM", "SD", "SL", "TD", "TL", "TP", "TRA", "UR", "VG", "VM", "WND")},
}
# NCI Thesaurus route codes, which the CDC IIS guide has VXU senders use in RXR-1 beside
# table 0162 (not in the mapping; an interface analyst reads them the same) (verify).
ROUTE_NCIT = {"C28161": IM, "C38299": SC, "C38276": IV, "C38238": INTRADERMAL,
              "C38288": ORAL, "C38284": OTHER_ROUTE, "C38305": OTHER_ROUTE,
              "C38676": OTHER_ROUTE}
ROUTE_SYSTEMS = {None: ROUTE_0162, "HL70162": ROUTE_0162, "NCIT": ROUTE_NCIT}

# Table 0163 (body site) displays, for RXR-2 sent as a bare code.
SITE_0163 = {
    "BE": "bilateral ears", "OU": "bilateral eyes", "BN": "bilateral nares", "BU": "buttock",
    "CT": "chest tube", "LA": "left arm", "LAC": "left anterior chest",
    "LACF": "left antecubital fossa", "LD": "left deltoid", "LE": "left ear",
    "LEJ": "left external jugular", "OS": "left eye", "LF": "left foot",
    "LG": "left gluteus medius", "LH": "left hand", "LIJ": "left internal jugular",
    "LLAQ": "left lower abd quadrant", "LLFA": "left lower forearm",
    "LMFA": "left mid forearm", "LN": "left naris", "LPC": "left posterior chest",
    "LSC": "left subclavian", "LT": "left thigh", "LUA": "left upper arm",
    "LUAQ": "left upper abd quadrant", "LUFA": "left upper forearm",
    "LVG": "left ventragluteal", "LVL": "left vastus lateralis", "NB": "nebulized",
    "PA": "perianal", "PERIN": "perineal", "RA": "right arm", "RAC": "right anterior chest",
    "RACF": "right antecubital fossa", "RD": "right deltoid", "RE": "right ear",
    "REJ": "right external jugular", "OD": "right eye", "RF": "right foot",
    "RG": "right gluteus medius", "RH": "right hand", "RIJ": "right internal jugular",
    "RLAQ": "rt lower abd quadrant", "RLFA": "right lower forearm",
    "RMFA": "right mid forearm", "RN": "right naris", "RPC": "right posterior chest",
    "RSC": "right subclavian", "RT": "right thigh", "RUA": "right upper arm",
    "RUAQ": "right upper abd quadrant", "RUFA": "right upper forearm",
    "RVL": "right vastus lateralis", "RVG": "right ventragluteal",
}

# HL7 dose units beyond the UCUM rows of the shipped code map (§4.3 "also MG, ML, MCG, UNITS").
HL7_DOSE_UNITS = {"MG": "mg", "ML": "mL", "MCG": "mcg", "UG": "mcg", "G": "g", "GM": "g",
                  "UNITS": "units", "UNIT": "units", "U": "units", "IU": "units"}

# §4.3 status: RXA-21 (table 0323) and RXA-20 (table 0322).
RXA21_WITHDRAWN = frozenset({"D"})
RXA20_WITHDRAWN = frozenset({"RE", "NA"})
RXA20_GIVEN = frozenset({"CP", "PA"})
# §4.3 VXU: RXA-9 (NIP001) 01-08 = historical record, not administered here.
NIP001_HISTORICAL = frozenset({f"0{n}" for n in range(1, 9)})
RXA6_UNKNOWN_DOSE = 999.0     # CDC IIS convention for "dose unknown" (verify)
# §4.4 status: ORC-1 order control codes that withdraw the dispense.
ORC1_WITHDRAWN = frozenset({"CA", "OC", "CR"})
# §4.5 FT1-6 transaction type (table 0017).
FT1_CHARGE = frozenset({"CG"})
FT1_CREDIT = frozenset({"CD", "CR"})     # CR is not in table 0017 but senders use it
# §4.6 ADT events.
ADT_CONTEXT_EVENTS = frozenset({f"A0{n}" for n in range(1, 9)} | {"A13"})
ADT_WITHDRAW_EVENTS = frozenset({"A11", "A38"})
ADT_NO_DISCHARGE_EVENTS = frozenset({"A13"})     # cancel discharge: `ended_at` left out

# The segments each message family reads (ehr-mapping §4.3-§4.6); the parser sees no other.
_COMMON = frozenset({"MSH", "EVN", "PID", "PV1"})
SEGMENTS_READ = {
    "administration": _COMMON | {"ORC", "RXA", "RXR", "OBX", "PRT"},
    "dispense": _COMMON | {"ORC", "RXD"},
    "em_service": _COMMON | {"FT1", "OBX", "DG1", "IN1"},
    "encounter": _COMMON | {"IN1", "PRT"},
}
MESSAGE_FAMILIES = {
    ("RAS", "O17"): "administration", ("VXU", "V04"): "administration",
    ("RDS", "O13"): "dispense", ("DFT", "P03"): "em_service",
    **{("ADT", event): "encounter" for event in ADT_CONTEXT_EVENTS | ADT_WITHDRAW_EVENTS},
}

# §6 adapter settings read here, with their defaults.
DEFAULT_SETTINGS = {
    "patient_id_type": "MR",
    "obx_category": "CATEGORY",
    "obx_container": "CONTAINER",
    "obx_waste": "WASTE",
    "obx_separately_identifiable": "SEPID",
    "em_separately_identifiable_source": "explicit",
    "supervising_npi_from": None,
}
# v2.7+ PRT-4 (table 0912) roles standing for the person fields of §4.1 "Versions".
PRT_ADMINISTERING, PRT_ORDERING, PRT_ATTENDING = "AP", "OP", "AT"


# ----------------------------------------------------------------------------- helpers


class Refusal(Exception):
    """One unit (message or record-producing segment) refused with a §5 code."""

    def __init__(self, code: str, error: str, where: str | None):
        super().__init__(error)
        self.code = code
        self.error = error
        self.where = where


@dataclass(slots=True)
class Context:
    """What every mapping function needs: the parsed message, the site tables, the
    configured zone, the engine's E/M code set, and the warnings of the current record."""

    msg: Message
    site: SiteConfig
    default_tz: str
    em_codes: Callable[[str, date], bool]   # is the code in the rule data's E/M set then
    warnings: list[str] = field(default_factory=list)
    zone: str | None = None       # the zone of the record's hard timestamp
    on: date | None = None        # the date written in it: the site tables' effective date

    def setting(self, name: str, on: date | None = None) -> str | None:
        value = self.site.setting(SOURCE, name, on)
        return value if value else DEFAULT_SETTINGS.get(name)


@dataclass(frozen=True, slots=True)
class Coding:
    code: str | None
    text: str | None
    system: str | None


def codings(seg: Segment, field_no: int, rep: int = 1) -> list[Coding]:
    """Every CE/CWE triplet of one repetition: components 1-3, 4-6, 10-12 (v2.7 CWE)."""
    out = []
    for first in (1, 4, 10):
        code, text, system = (seg.value(field_no, rep, first + k) for k in range(3))
        if code or text:
            out.append(Coding(code, text, system.upper() if system else None))
    return out


def coded(seg: Segment, field_no: int, systems: frozenset[str], rep: int = 1) -> Coding | None:
    for c in codings(seg, field_no, rep):
        if c.system in systems and c.code:
            return c
    return None


def npi_of(seg: Segment, field_no: int) -> str | None:
    """§4.1: XCN-1 of the repetition whose XCN-13 is NPI or whose XCN-9 universal id is
    the NPI OID."""
    for rep in range(1, seg.repetitions(field_no) + 1):
        if seg.value(field_no, rep, 13) == "NPI" or seg.value(field_no, rep, 9, 2) == NPI_OID:
            npi = seg.value(field_no, rep, 1)
            if npi:
                return npi
    return None


def person(msg: Message, seg: Segment, field_no: int, role: str) -> tuple[Segment, int] | None:
    """The XCN field itself when filled, else PRT-5 of a PRT with PRT-4 `role` right after
    the segment (v2.7+)."""
    if seg.value(field_no, 1, 1) or seg.repetitions(field_no) > 1:
        return seg, field_no
    for prt in msg.segments[seg.position + 1:]:
        if prt.name != "PRT":
            break
        if prt.value(4) == role and prt.value(5):
            return prt, 5
    return None


def icd10(seg: Segment, field_no: int, out: list[str]) -> None:
    for rep in range(1, seg.repetitions(field_no) + 1):
        for c in codings(seg, field_no, rep):
            if c.system in ICD10CM_SYSTEMS and c.code and c.code not in out:
                out.append(c.code)


def number(text: str | None) -> float | int | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def ndc11(ndc: str) -> str | None:
    """NDC as 11 digits for the drug_attributes key (4-4-2, 5-3-2, 5-4-1 or 11 digits)."""
    parts = ndc.strip().split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        widths = tuple(len(p) for p in parts)
        pad = {(4, 4, 2): (5, 4, 2), (5, 3, 2): (5, 4, 2), (5, 4, 1): (5, 4, 2),
               (5, 4, 2): (5, 4, 2)}.get(widths)
        if pad:
            return "".join(p.zfill(w) for p, w in zip(parts, pad, strict=True))
    digits = ndc.replace("-", "")
    return digits if len(digits) == 11 and digits.isdigit() else None


# ----------------------------------------------------------------------------- time (§4.1)


def facility_zone(ctx: Context, on: date | None) -> str:
    """`facility_timezone` (§6) by MSH-4.1, then PV1-3.4.1, then the source default, then
    the configured zone (UTC if even that is not a zone name)."""
    msh = ctx.msg.first("MSH")
    pv1 = ctx.msg.first("PV1")
    for key in (msh.value(4) if msh else None, pv1.value(3, 1, 4, 1) if pv1 else None):
        if key:
            tz = ctx.site.timezone(SOURCE, key, on)
            if tz and known_zone(tz):
                return tz
    tz = ctx.site.timezone(SOURCE, None, on)
    if tz and known_zone(tz):
        return tz
    return ctx.default_tz if known_zone(ctx.default_tz) else "UTC"


def hard_time(ctx: Context, seg: Segment | None, field_no: int, where: str | None = None) -> Stamp:
    """A hard timestamp: empty → HL7_MISSING_FIELD, unparsable → HL7_INVALID_TIMESTAMP."""
    text = seg.value(field_no) if seg else None
    where = where or (seg.where(field_no) if seg else None)
    if not text:
        raise Refusal(HL7_MISSING_FIELD, "required timestamp is empty", where)
    on = written_date(text)
    zone = facility_zone(ctx, on)
    try:
        stamp = parse_timestamp(text, zone)
    except InvalidTimestamp as exc:
        raise Refusal(HL7_INVALID_TIMESTAMP, f"timestamp unusable: {exc}", where) from None
    ctx.zone, ctx.on = zone, on
    ctx.warnings.extend(f"{w}:{where}" for w in stamp.warnings)
    return stamp


def soft_time(ctx: Context, seg: Segment | None, field_no: int) -> Stamp | None:
    """A soft timestamp: empty → None; unparsable → None with a warning."""
    text = seg.value(field_no) if seg else None
    if not text:
        return None
    try:
        stamp = parse_timestamp(text, ctx.zone or facility_zone(ctx, written_date(text)))
    except InvalidTimestamp:
        ctx.warnings.append(f"timestamp_unusable:{seg.where(field_no)}")
        return None
    ctx.warnings.extend(f"{w}:{seg.where(field_no)}" for w in stamp.warnings)
    return stamp


# ----------------------------------------------------------------------------- §4.2 identity


def identity(ctx: Context, producer: Segment, event_type: str) -> dict:
    """Fields every record carries: event_type, event_id, recorded_at, patient_id,
    encounter_id (when the message has a PV1 with a visit number)."""
    msg = ctx.msg
    msh = msg.first("MSH")
    control_id = msh.value(10)
    if not control_id:
        raise Refusal(HL7_MISSING_FIELD, "message control id is empty", "MSH-10")
    # event_id: hl7:{MSH-3.1}:{MSH-4.1}:{MSH-10}:{nnnn}, nnnn the producing segment's ordinal.
    event_id = (f"hl7:{msh.value(3) or ''}:{msh.value(4) or ''}:{control_id}:"
                f"{producer.ordinal:04d}")
    record = {"event_type": event_type, "event_id": event_id}
    # patient_id: PID-3, the repetition whose CX-5 is setting patient_id_type, else the first.
    pid = msg.first("PID")
    if pid is None:
        raise Refusal(HL7_MISSING_FIELD, "no PID segment", "PID-3")
    wanted = ctx.setting("patient_id_type")
    chosen = 1
    for rep in range(1, pid.repetitions(3) + 1):
        if pid.value(3, rep, 5) == wanted and pid.value(3, rep, 1):
            chosen = rep
            break
    patient = pid.value(3, chosen, 1)
    if not patient:
        raise Refusal(HL7_MISSING_FIELD, "patient identifier is empty", "PID-3")
    record["patient_id"] = patient
    # encounter_id: PV1-19.1 (visit number) when the message has a PV1.
    pv1 = msg.first("PV1")
    visit = pv1.value(19) if pv1 else None
    if visit:
        record["encounter_id"] = visit
    # recorded_at: EVN-2, else MSH-7.
    recorded = soft_time(ctx, msg.first("EVN"), 2) or soft_time(ctx, msh, 7)
    if recorded:
        record["recorded_at"] = recorded.text
    return record


def source(ctx: Context, producer: Segment) -> dict:
    msh = ctx.msg.first("MSH")
    kind = "^".join(v for v in (msh.value(9, 1, 1), msh.value(9, 1, 2)) if v)
    return {"format": FORMAT, "ref": f"{kind} {msh.value(10)} {producer.name}[{producer.ordinal}]",
            "warnings": list(ctx.warnings)}


def place_of_service(ctx: Context, location: tuple[Segment, int] | None, on: date | None) -> str | None:
    """§4.6 row place_of_service: the PL's `{facility}/{point of care}` (hl7_facility_poc),
    then facility (hl7_facility), then PV1-2 patient class (hl7_patient_class)."""
    pv1 = ctx.msg.first("PV1")
    keys = []
    if location is not None:
        seg, f = location
        poc, facility = seg.value(f, 1, 1), seg.value(f, 1, 4, 1)
        if facility and poc:
            keys.append(("hl7_facility_poc", f"{facility}/{poc}"))
        if facility:
            keys.append(("hl7_facility", facility))
    if pv1 is not None and pv1.value(2):
        keys.append(("hl7_patient_class", pv1.value(2)))
    for key_type, key in keys:
        pos = ctx.site.place_of_service(SOURCE, key_type, key, on)
        if pos:
            return pos
    return None


def payer_class(ctx: Context, on: date | None) -> str | None:
    """§4.6 row payer_class: the primary IN1 (lowest numeric IN1-22, else the first):
    IN1-2.1 plan id, IN1-15 plan type, IN1-3.1 company id; else PV1-20.1 financial class."""
    in1s = ctx.msg.all("IN1")
    keys = []
    if in1s:
        def priority(seg: Segment) -> tuple[int, int]:
            p = seg.value(22)
            return (int(p), seg.ordinal) if p and p.isdigit() else (1 << 30, seg.ordinal)
        primary = min(in1s, key=priority)
        keys += [("hl7_plan_id", primary.value(2)), ("hl7_plan_type", primary.value(15)),
                 ("hl7_company_id", primary.value(3))]
    pv1 = ctx.msg.first("PV1")
    if pv1 is not None:
        keys.append(("hl7_financial_class", pv1.value(20)))
    for key_type, key in keys:
        if key:
            cls = ctx.site.payer_class(SOURCE, key_type, key, on)
            if cls:
                return cls
    return None


def order_number(orc: Segment | None) -> str:
    """ORC-3.1 (filler), else ORC-2.1 (placer): the record key of RXA and RXD."""
    number = (orc.value(3) or orc.value(2)) if orc else None
    if not number:
        raise Refusal(HL7_MISSING_FIELD, "no order number (filler or placer)",
                      orc.where(3) if orc else "ORC-3")
    return number


def order_id(orc: Segment | None) -> str | None:
    """ORC-2.1 (placer), else ORC-3.1: the key RDS, RAS and FHIR MedicationRequest share."""
    return (orc.value(2) or orc.value(3)) if orc else None


# ----------------------------------------------------------------------------- §4.3 RXA


def administration(ctx: Context, rxa: Segment, vaccine_message: bool) -> dict:
    msg = ctx.msg
    group_stop = ("RXA", "ORC")
    orc = msg.preceding(rxa, "ORC")
    rxr = next(iter(msg.following(rxa, ("RXR",), stop=group_stop)), None)
    obxs = msg.following(rxa, ("OBX",), stop=group_stop)
    # VXU: a historical record (RXA-9 NIP001 01-08) was not given here.
    if vaccine_message:
        for rep in range(1, rxa.repetitions(9) + 1):
            if rxa.value(9, rep, 1) in NIP001_HISTORICAL:
                raise Refusal(HL7_NOT_BILLABLE, "historical immunization record", rxa.where(9))
    # occurred_at / ended_at: RXA-3 / RXA-4 (ended_at only if after RXA-3).
    start = hard_time(ctx, rxa, 3)
    on = ctx.on
    record = identity(ctx, rxa, ADMINISTRATION)
    # record_id: {ORC-3.1 else ORC-2.1}.{RXA-1}.{RXA-2}
    record["record_id"] = f"{order_number(orc)}.{rxa.value(1) or ''}.{rxa.value(2) or ''}"
    # status: RXA-21 D, RXA-20 RE/NA → entered-in-error; CP, PA, empty → completed.
    completion, action = rxa.value(20), rxa.value(21)
    if action in RXA21_WITHDRAWN or completion in RXA20_WITHDRAWN:
        record["status"] = ENTERED_IN_ERROR
    else:
        record["status"] = COMPLETED
        if completion and completion not in RXA20_GIVEN:
            ctx.warnings.append(f"completion_status_unknown:{rxa.where(20)}")
    record["occurred_at"] = start.text
    end = soft_time(ctx, rxa, 4)
    if end and end.at > start.at:
        record["ended_at"] = end.text
    record["facility_timezone"] = ctx.zone
    # route: RXR-1 (table 0162); site: RXR-2 text, else the table 0163 display.
    if rxr is not None:
        route = route_of(ctx, rxr, on)
        if route:
            record["route"] = route
        site = rxr.value(2, 1, 2) or SITE_0163.get((rxr.value(2, 1, 1) or "").upper()) \
            or rxr.value(2, 1, 1)
        if site:
            record["site"] = site
    # drug: RXA-5 name/NDC/HCPCS; RXA-6/7 dose; RXA-15 lot; category; container; waste.
    record["drug"] = drug_of(ctx, rxa, obxs, vaccine_message, on)
    # performer_id, performer_credential: RXA-10 XCN-1; XCN-21, else XCN-7.
    who = person(msg, rxa, 10, PRT_ADMINISTERING)
    if who is not None:
        seg, f = who
        if seg.value(f, 1, 1):
            record["performer_id"] = seg.value(f, 1, 1)
        credential = credential_of(ctx, seg, f, on)
        if credential:
            record["performer_credential"] = credential
    # supervising_npi: ORC-12 NPI, only with setting supervising_npi_from = ORC-12.
    if orc is not None and ctx.setting("supervising_npi_from", on) == "ORC-12":
        who = person(msg, orc, 12, PRT_ORDERING)
        npi = npi_of(*who) if who else None
        if npi:
            record["supervising_npi"] = npi
    # order_id: ORC-2.1, else ORC-3.1.
    oid = order_id(orc)
    if oid:
        record["order_id"] = oid
    # diagnosis_codes: RXA-19 ICD-10-CM triplets, in order, de-duplicated.
    dx: list[str] = []
    icd10(rxa, 19, dx)
    if dx:
        record["diagnosis_codes"] = dx
    # place_of_service: PV1-3 via location_pos, else the encounter's (left out).
    pv1 = msg.first("PV1")
    pos = place_of_service(ctx, (pv1, 3) if pv1 else None, on)
    if pos:
        record["place_of_service"] = pos
    # rendering_npi, payer_class, charge_code: from the encounter / derived (left out).
    record["source"] = source(ctx, rxa)
    return record


def route_of(ctx: Context, rxr: Segment, on: date) -> str | None:
    code, system = rxr.value(1, 1, 1), rxr.value(1, 1, 3)
    if not code:
        return None
    system = system.upper() if system else None
    mapped = ctx.site.code("route", system, code, on)   # site rows win over the tables
    if mapped and mapped[0]:
        return mapped[0]
    table = ROUTE_SYSTEMS.get(system)
    route = table.get(code.upper()) if table else None
    if route is None:
        ctx.warnings.append(f"route_unmapped:{system or ''}|{code}")
    return route


def dose_unit_of(ctx: Context, code: str | None, on: date) -> tuple[str, float] | None:
    if not code:
        return None
    mapped = ctx.site.code("dose_unit", None, code, on)
    if mapped and mapped[0]:
        return mapped[0], mapped[1] or 1.0
    unit = HL7_DOSE_UNITS.get(code.upper())
    return (unit, 1.0) if unit else None


def drug_of(ctx: Context, rxa: Segment, obxs: list[Segment], vaccine_message: bool, on: date) -> dict:
    drug: dict = {}
    # name, ndc, hcpcs: RXA-5 first triplet's text; NDC and HCPCS triplets.
    triplets = codings(rxa, 5)
    name = next((c.text for c in triplets if c.text), None)
    if name:
        drug["name"] = name
    ndc = coded(rxa, 5, NDC_SYSTEMS)
    if ndc:
        drug["ndc"] = ndc.code
    hcpcs = coded(rxa, 5, HCPCS_SYSTEMS)
    if hcpcs and HCPCS_LEVEL_II.fullmatch(hcpcs.code.upper()):
        drug["hcpcs"] = hcpcs.code.upper()
    elif hcpcs:
        ctx.warnings.append(f"hcpcs_not_level_ii:{rxa.where(5)}")
    cvx = coded(rxa, 5, CVX_SYSTEMS)
    # dose, dose_unit: RXA-6 > 0 and not 999; RXA-7 via the unit map.
    dose = number(rxa.value(6))
    unit = dose_unit_of(ctx, rxa.value(7, 1, 1), on)
    if dose is not None and dose > 0 and dose != RXA6_UNKNOWN_DOSE and unit:
        value = dose * unit[1]
        drug["dose"] = int(value) if float(value).is_integer() else value
        drug["dose_unit"] = unit[0]
    elif rxa.value(6) or rxa.value(7):
        ctx.warnings.append(f"dose_unmapped:{rxa.where(6)}")
    # lot_number: RXA-15, first repetition.
    lot = rxa.value(15)
    if lot:
        drug["lot_number"] = lot
    # category: VXU or CVX → vaccine; else OBX `CATEGORY`; else drug_attributes.
    # container: OBX `CONTAINER`; else drug_attributes. wasted_amount: OBX `WASTE` (NM, OBX-6).
    category = "vaccine" if vaccine_message or cvx else None
    container = None
    for obx in obxs:
        label = obx.value(3)
        if label == ctx.setting("obx_category", on) and category is None:
            category = _allowed(ctx, obx.value(5), DRUG_CATEGORIES, obx.where(5))
        elif label == ctx.setting("obx_container", on):
            container = _allowed(ctx, obx.value(5), CONTAINERS, obx.where(5))
        elif label == ctx.setting("obx_waste", on):
            wasted = number(obx.value(5))
            unit = dose_unit_of(ctx, obx.value(6), on)
            if (wasted is not None and wasted >= 0 and unit and "dose_unit" in drug
                    and unit[0] == drug["dose_unit"]):
                amount = wasted * unit[1]
                drug["wasted_amount"] = int(amount) if float(amount).is_integer() else amount
            else:
                ctx.warnings.append(f"waste_unusable:{obx.where(5)}")
    for key_type, key in (("ndc11", ndc11(ndc.code) if ndc else None),
                          ("hcpcs", drug.get("hcpcs")), ("cvx", cvx.code if cvx else None)):
        if key and (category is None or container is None):
            cat, cont = ctx.site.drug_attributes(key_type, key, on)
            category = category or cat
            container = container or cont
    if category:
        drug["category"] = category
    if container:
        drug["container"] = container
    return drug


def _allowed(ctx: Context, value: str | None, allowed: tuple[str, ...], where: str) -> str | None:
    if value in allowed:
        return value
    ctx.warnings.append(f"value_unmapped:{where}")
    return None


def credential_of(ctx: Context, seg: Segment, f: int, on: date) -> str | None:
    """XCN-21 (professional suffix, free text), else XCN-7 (degree, table 0360), via the
    credential map; a code the map drops (v2-0360 MA, Master of Arts) is left out."""
    for comp, system in ((21, None), (7, V2_0360)):
        raw = seg.value(f, 1, comp)
        if not raw:
            continue
        mapped = ctx.site.code("credential", system, raw.strip().upper(), on)
        if mapped is None:
            return raw.strip().upper()
        if mapped[0]:
            return mapped[0]
        ctx.warnings.append(f"credential_dropped:{seg.where(f, comp)}")
    return None


# ----------------------------------------------------------------------------- §4.4 RXD


def dispense(ctx: Context, rxd: Segment) -> dict:
    msg = ctx.msg
    orc = msg.preceding(rxd, "ORC")
    # RXD-4 ≤ 0 is a return: not a dispense to bill.
    quantity = number(rxd.value(4))
    if quantity is not None and quantity <= 0:
        raise Refusal(HL7_NOT_BILLABLE, "returned dispense (quantity not above zero)", rxd.where(4))
    # occurred_at: RXD-3.
    start = hard_time(ctx, rxd, 3)
    on = ctx.on
    record = identity(ctx, rxd, DISPENSE)
    # record_id: {ORC-3.1 else ORC-2.1}.{RXD-1}
    record["record_id"] = f"{order_number(orc)}.{rxd.value(1) or ''}"
    # status: ORC-1 CA, OC, CR → entered-in-error, else completed.
    record["status"] = ENTERED_IN_ERROR if orc and orc.value(1) in ORC1_WITHDRAWN else COMPLETED
    record["occurred_at"] = start.text
    record["facility_timezone"] = ctx.zone
    # ndc: the NDC triplet of RXD-2; drug_name: its text (else the first text).
    ndc = coded(rxd, 2, NDC_SYSTEMS)
    if ndc:
        record["ndc"] = ndc.code
    name = (ndc.text if ndc and ndc.text else None) or next(
        (c.text for c in codings(rxd, 2) if c.text), None)
    if name:
        record["drug_name"] = name
    # order_id: ORC-2.1, else ORC-3.1.
    oid = order_id(orc)
    if oid:
        record["order_id"] = oid
    # quantity: RXD-4; quantity_unit: RXD-5 via the quantity unit map.
    if quantity is not None:
        record["quantity"] = quantity
    elif rxd.value(4):
        ctx.warnings.append(f"quantity_unusable:{rxd.where(4)}")
    unit = rxd.value(5, 1, 1)
    if unit:
        mapped = ctx.site.code("quantity_unit", None, unit, on)
        if mapped and mapped[0]:
            record["quantity_unit"] = mapped[0]
        else:
            ctx.warnings.append(f"quantity_unit_unmapped:{rxd.where(5)}")
    # lot_number: RXD-18 (first repetition).
    lot = rxd.value(18)
    if lot:
        record["lot_number"] = lot
    # encounter_id: PV1-19 if present (identity). Only facility_timezone is inherited.
    record["source"] = source(ctx, rxd)
    return record


# ----------------------------------------------------------------------------- §4.5 FT1


def procedure_code(ft1: Segment) -> str | None:
    """FT1-25.1, else FT1-7.1 when FT1-7 is coded CPT."""
    code = ft1.value(25)
    if code:
        return code
    if (ft1.value(7, 1, 3) or "").upper() in CPT_SYSTEMS:
        return ft1.value(7)
    return None


def em_service(ctx: Context, ft1: Segment) -> dict | None:
    """One em.service for an FT1 whose procedure is in the E/M set; None for other FT1s
    (their lines are derived by the engine) and for payments, adjustments, co-pays."""
    msg = ctx.msg
    kind = ft1.value(6)
    if kind not in FT1_CHARGE and kind not in FT1_CREDIT:
        return None
    code = procedure_code(ft1)
    if not code:
        return None
    # occurred_at: FT1-4.1 (start of the DR range). A charge that is not an E/M yields
    # nothing even when its date is unusable, so the E/M test then takes the MSH-7 date.
    try:
        start = hard_time(ctx, ft1, 4, ft1.where(4, 1))
    except Refusal:
        msh_date = written_date(msg.first("MSH").value(7))
        if msh_date is not None and not ctx.em_codes(code, msh_date):
            return None
        raise
    on = ctx.on
    if not ctx.em_codes(code, on):
        return None
    record = identity(ctx, ft1, EM_SERVICE)
    # record_id: {visit}|{code}|{YYYYMMDD}: a credit's FT1-2 differs from its charge's.
    visit = record.get("encounter_id") or record["patient_id"]
    record["record_id"] = f"{visit}|{code}|{ft1.value(4)[:8]}"
    # status: CG → completed; CD, CR → entered-in-error.
    record["status"] = COMPLETED if kind in FT1_CHARGE else ENTERED_IN_ERROR
    record["occurred_at"] = start.text
    record["facility_timezone"] = ctx.zone
    record["code"] = code
    # modifiers: FT1-26 (repeating), component 1, in order.
    modifiers = [m for m in (ft1.value(26, r) for r in range(1, ft1.repetitions(26) + 1)) if m]
    if modifiers:
        record["modifiers"] = modifiers
    # separately_identifiable: OBX of the FT1's group (SEPID) Y/N; else the setting.
    flag = None
    for obx in msg.following(ft1, ("OBX",), stop=("FT1",)):
        if obx.value(3) == ctx.setting("obx_separately_identifiable", on):
            answer = (obx.value(5) or "").upper()
            flag = True if answer == "Y" else False if answer == "N" else None
            if flag is None:
                ctx.warnings.append(f"value_unmapped:{obx.where(5)}")
    if flag is None:
        flag = ("25" in modifiers) if ctx.setting(
            "em_separately_identifiable_source", on) == "modifier_25" else False
    record["separately_identifiable"] = flag
    # rendering_npi: FT1-20 NPI, else the encounter's (left out).
    npi = npi_of(ft1, 20)
    if npi:
        record["rendering_npi"] = npi
    # diagnosis_codes: FT1-19, else DG1-3 by DG1-15 priority.
    dx: list[str] = []
    icd10(ft1, 19, dx)
    if not dx:
        def priority(seg: Segment) -> tuple[int, int]:
            p = seg.value(15)
            return (int(p), seg.ordinal) if p and p.isdigit() else (1 << 30, seg.ordinal)
        for dg1 in sorted(msg.all("DG1"), key=priority):
            icd10(dg1, 3, dx)
    if dx:
        record["diagnosis_codes"] = dx
    # place_of_service: FT1-16, else PV1-3, via location_pos.
    pv1 = msg.first("PV1")
    pos = place_of_service(ctx, (ft1, 16), on) if ft1.value(16) or ft1.value(16, 1, 4) else None
    pos = pos or place_of_service(ctx, (pv1, 3) if pv1 else None, on)
    if pos:
        record["place_of_service"] = pos
    # payer_class: the message's primary IN1 (§4.6).
    payer = payer_class(ctx, on)
    if payer:
        record["payer_class"] = payer
    record["source"] = source(ctx, ft1)
    return record


# ----------------------------------------------------------------------------- §4.6 ADT


def encounter(ctx: Context, event: str) -> dict:
    msg = ctx.msg
    pv1 = msg.first("PV1")
    if pv1 is None:
        raise Refusal(HL7_INVALID, "ADT message without PV1", "PV1")
    # record_id = encounter_id: PV1-19.1.
    visit = pv1.value(19)
    if not visit:
        raise Refusal(HL7_MISSING_FIELD, "visit number is empty", pv1.where(19))
    # occurred_at: PV1-44, else EVN-6, else EVN-2 / MSH-7.
    evn = msg.first("EVN")
    for seg, f in ((pv1, 44), (evn, 6), (evn, 2), (msg.first("MSH"), 7)):
        if seg is not None and seg.value(f):
            start = hard_time(ctx, seg, f)
            break
    else:
        raise Refusal(HL7_MISSING_FIELD, "no admission, event or message time", pv1.where(44))
    on = ctx.on
    record = identity(ctx, pv1, ENCOUNTER_UPDATED)
    record["record_id"] = record["encounter_id"] = visit
    # status: A01-A08, A13 → completed; A11, A38 → entered-in-error.
    record["status"] = ENTERED_IN_ERROR if event in ADT_WITHDRAW_EVENTS else COMPLETED
    record["occurred_at"] = start.text
    # ended_at: PV1-45 (A13, cancel discharge, leaves it out).
    if event not in ADT_NO_DISCHARGE_EVENTS:
        end = soft_time(ctx, pv1, 45)
        if end and end.at >= start.at:
            record["ended_at"] = end.text
    record["facility_timezone"] = ctx.zone
    # place_of_service: PV1-3 via location_pos.
    pos = place_of_service(ctx, (pv1, 3), on)
    if pos:
        record["place_of_service"] = pos
    # payer_class: primary IN1 plan id, plan type, company id; else PV1-20.1.
    payer = payer_class(ctx, on)
    if payer:
        record["payer_class"] = payer
    # rendering_npi: PV1-7 (attending) NPI.
    who = person(msg, pv1, 7, PRT_ATTENDING)
    npi = npi_of(*who) if who else None
    if npi:
        record["rendering_npi"] = npi
    record["source"] = source(ctx, pv1)
    return record
