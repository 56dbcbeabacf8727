"""The CMS publications the importer knows: how each is recognised by its header, where
its effective period comes from, and how one of its rows becomes one row of an output
table (or is set aside with the column and the reason).

Recognition is by content only: the first row (within the first lines) whose cells name
every required column of a layout is that layout's header. File names are never used.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from stream_app.cms.reading import RawRow, compact_date, decimal_text, header_name

HCPCS_RE = re.compile(r"[A-Z0-9]\d{4}|\d{4}[A-Z0-9]")
MODIFIER_RE = re.compile(r"[A-Z0-9]{2}")
#: NCCI add-on file: the primary code of a Type 2 add-on is contractor-defined.
CONTRACTOR_DEFINED_PRIMARY = "CCCCC"
#: How far down a file the header row is looked for (CMS preambles are under 20 lines).
HEADER_SEARCH_ROWS = 60


class SetAside(Exception):  # noqa: N818 - a row outcome, not an error of the program
    """This row cannot be used: `column` (as named in the file) and `reason`."""

    def __init__(self, column: str, reason: str):
        self.column, self.reason = column, reason
        super().__init__(f"{column}: {reason}")


class NotApplicable(Exception):  # noqa: N818 - a row outcome
    """A well-formed row with nothing to import (e.g. a Type 2 add-on code, whose
    primaries are contractor-defined). Counted, not set aside."""


@dataclass(slots=True)
class Row:
    """One data row: canonical column -> cell text, and the header text per column."""

    line: int
    cells: dict[str, str]
    headers: dict[str, str]

    def get(self, column: str) -> str:
        return self.cells.get(column, "")

    def fail(self, column: str, reason: str) -> SetAside:
        return SetAside(self.headers.get(column, column), reason)

    def required(self, column: str) -> str:
        value = self.get(column)
        if not value:
            raise self.fail(column, "value required")
        return value

    def hcpcs(self, column: str) -> str:
        raw = self.required(column)
        value = raw.upper()
        if not HCPCS_RE.fullmatch(value):
            raise self.fail(column, f"HCPCS/CPT code {raw!r} is not 5 letters/digits")
        return value

    def number(self, column: str, *, required: bool = True, money: bool = False,
               positive: bool = False) -> str:
        raw = self.get(column)
        if not raw:
            if required:
                raise self.fail(column, "value required")
            return ""
        text = decimal_text(raw, money=money)
        if text is None:
            raise self.fail(column, f"{raw!r} is not a non-negative number")
        if positive and float(text) == 0:
            raise self.fail(column, f"{raw!r} must be greater than 0")
        return text

    def integer(self, column: str) -> str:
        raw = self.required(column)
        if not raw.isdigit():
            raise self.fail(column, f"{raw!r} is not a whole number")
        return str(int(raw))

    def ncci_date(self, column: str, *, star_is_none: bool = False) -> date | None:
        raw = self.get(column)
        if not raw or (star_is_none and raw == "*"):
            return None
        value = compact_date(raw)
        if value is None:
            raise self.fail(column, f"{raw!r} is not a date (YYYYMMDD or Julian YYYYDDD)")
        return value


def ndc_11(raw: str) -> str | None:
    """11-digit NDC from 5-4-2 / 4-4-2 / 5-3-2 / 5-4-1 or 11 plain digits (billing-rules.md
    §6); None for anything else (10 plain digits are ambiguous, device ids are not NDCs)."""
    parts = raw.split("-")
    if len(parts) == 1:
        return raw if len(raw) == 11 and raw.isdigit() else None
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    a, b, c = parts
    shape = (len(a), len(b), len(c))
    if shape == (5, 4, 2):
        return a + b + c
    if shape == (4, 4, 2):
        return "0" + a + b + c
    if shape == (5, 3, 2):
        return a + "0" + b + c
    if shape == (5, 4, 1):
        return a + b + "0" + c
    return None


def ndc_542(ndc11: str) -> str:
    return f"{ndc11[:5]}-{ndc11[5:9]}-{ndc11[9:]}"


@dataclass(frozen=True)
class Kind:
    """One CMS publication layout."""

    name: str  # machine name, in the JSON report
    title: str  # what an operator calls it
    table: str  # output table (tables.TABLES key)
    aliases: tuple[tuple[str, str], ...]  # (regex over header_name(), canonical column)
    required: tuple[str, ...]  # canonical columns that identify the layout
    parse: Callable[[Row], dict[str, str]]
    # "file": one effective period for the whole file (from its text or the command line);
    # "rows": every row carries its own dates (NCCI PTP, add-on code file).
    dated_by: str = "file"
    # Regexes over the text above the header (and the header) giving the year the file
    # applies to when it states no exact period.
    year_patterns: tuple[str, ...] = ()
    # The header spans several rows (PPRRVU): each column's name is its cells in the
    # non-blank rows directly above the key row and the key row itself, joined by spaces.
    stacked_header: bool = False
    # The input column named with a set-aside row, to find it by eye (e.g. J7331).
    code_column: str = "hcpcs"
    _compiled: list[tuple[re.Pattern[str], str]] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self._compiled.extend((re.compile(p), c) for p, c in self.aliases)

    def canonical(self, name: str) -> str | None:
        for pattern, column in self._compiled:
            if pattern.fullmatch(name):
                return column
        return None

    def match_header(self, rows: list[RawRow], index: int) -> list[tuple[str, str]] | None:
        """[(canonical or '', header text as written)] per column when rows[index] is this
        layout's header row, else None."""
        names = self._header_names(rows, index)
        mapped = [(self.canonical(header_name(n)) or "", n) for n in names]
        present = {c for c, _ in mapped if c}
        if all(r in present for r in self.required):
            return mapped
        return None

    def header_rows(self, rows: list[RawRow], index: int) -> int:
        """First index of the rows making up the header ending at rows[index]."""
        if not self.stacked_header:
            return index
        first = index
        while first > 0 and rows[first - 1].line == rows[first].line - 1 \
                and sum(1 for c in rows[first - 1].cells if c) > 1:
            first -= 1
        return first

    def _header_names(self, rows: list[RawRow], index: int) -> list[str]:
        key = rows[index].cells
        if not self.stacked_header:
            return list(key)
        stack = rows[self.header_rows(rows, index):index + 1]
        return [" ".join(r.cells[i] for r in stack if i < len(r.cells) and r.cells[i])
                for i in range(len(key))]


# --------------------------------------------------------------------------------------
# Row parsers: cells of one data row -> output cells (canonical names of tables.TABLES)
# --------------------------------------------------------------------------------------

def _crosswalk(row: Row) -> dict[str, str]:
    hcpcs = row.hcpcs("hcpcs")
    raw = row.required("ndc")
    ndc = ndc_11(raw)
    if ndc is None:
        raise row.fail("ndc", f"NDC {raw!r} is not an NDC (5-4-2, 4-4-2, 5-3-2, 5-4-1 "
                              "or 11 digits)")
    out = {"hcpcs": hcpcs, "ndc": ndc_542(ndc)}
    for column in ("short_description", "labeler", "drug_name"):
        out[column] = row.get(column)
    # CMS writes the same dosage as "100 mg" one quarter and "100 MG" the next.
    out["dosage"] = row.get("dosage").upper()
    for column in ("pkg_size", "pkg_qty", "billunits", "billunitspkg"):
        out[column] = row.number(column, required=False)
    return out


def _asp_limit(row: Row) -> dict[str, str]:
    return {
        "hcpcs": row.hcpcs("hcpcs"),
        "short_description": row.get("short_description"),
        "dosage": row.required("dosage").upper(),
        "payment_limit": row.number("payment_limit"),
        "coinsurance_percent": row.number("coinsurance_percent", required=False),
    }


def _pfs_total(row: Row, total: str, na_indicator: str) -> tuple[str, str]:
    """(total RVUs, 'true'/'false'): an NA indicator means the service is not payable to
    the professional in that setting, so the total is written empty with the flag."""
    flag = row.get(na_indicator).upper()
    if flag not in ("", "NA"):
        raise row.fail(na_indicator, f"NA indicator {flag!r} is neither NA nor empty")
    # Some releases write NA in the total itself rather than in the indicator column.
    if flag == "NA" or row.get(total).upper() == "NA":
        return "", "true"
    return row.number(total), "false"


def _rvu(row: Row, column: str) -> str:
    return "" if row.get(column).upper() == "NA" else row.number(column, required=False)


def _pfs(row: Row) -> dict[str, str]:
    code = row.hcpcs("hcpcs")
    modifier = row.get("modifier").upper()
    if modifier and not MODIFIER_RE.fullmatch(modifier):
        raise row.fail("modifier", f"modifier {modifier!r} is not 2 letters/digits")
    status = row.required("status").upper()
    if not re.fullmatch(r"[A-Z]", status):
        raise row.fail("status", f"status code {status!r} is not one letter")
    nonfacility_total, nonfacility_na = _pfs_total(row, "nonfacility_total", "nonfacility_na")
    facility_total, facility_na = _pfs_total(row, "facility_total", "facility_na")
    pctc = row.get("pctc")
    if pctc and not re.fullmatch(r"\d", pctc):
        raise row.fail("pctc", f"PC/TC indicator {pctc!r} is not one digit")
    return {
        "code": code, "modifier": modifier, "description": row.get("description"),
        "status": status,
        "work_rvu": _rvu(row, "work_rvu"),
        "nonfacility_pe_rvu": _rvu(row, "nonfacility_pe_rvu"),
        "facility_pe_rvu": _rvu(row, "facility_pe_rvu"),
        "mp_rvu": _rvu(row, "mp_rvu"),
        "nonfacility_total": nonfacility_total, "nonfacility_na": nonfacility_na,
        "facility_total": facility_total, "facility_na": facility_na,
        "pctc": pctc, "global_days": row.get("global_days"),
        "conversion_factor": row.number("conversion_factor", positive=True),
    }


def _gpci(row: Row) -> dict[str, str]:
    mac = row.required("mac")
    if not mac.isdigit():
        raise row.fail("mac", f"MAC {mac!r} is not a number")
    locality = row.required("locality")
    if not locality.isdigit():
        raise row.fail("locality", f"locality number {locality!r} is not a number")
    state = row.required("state").upper()
    if not re.fullmatch(r"[A-Z]{2}", state):
        raise row.fail("state", f"state {state!r} is not a 2-letter code")
    return {
        "mac": mac.zfill(5), "state": state, "locality": locality.zfill(2),
        "locality_name": row.get("locality_name"),
        "pw_gpci": row.number("pw_gpci", positive=True),
        "pe_gpci": row.number("pe_gpci", positive=True),
        "mp_gpci": row.number("mp_gpci", positive=True),
    }


def _opps(row: Row) -> dict[str, str]:
    hcpcs = row.hcpcs("hcpcs")
    si = row.required("status_indicator").upper()
    if not re.fullmatch(r"[A-Z][0-9]?", si):
        raise row.fail("status_indicator", f"status indicator {si!r} is not like A, J1, Q4")
    apc = row.get("apc")
    if apc and not apc.isdigit():
        raise row.fail("apc", f"APC {apc!r} is not a number")
    return {
        "hcpcs": hcpcs, "short_descriptor": row.get("short_descriptor"),
        "status_indicator": si, "apc": apc,
        "relative_weight": row.number("relative_weight", required=False),
        "payment_rate": row.number("payment_rate", required=False, money=True),
        "national_unadjusted_copayment": _optional_money(row, "national_unadjusted_copayment"),
        "minimum_unadjusted_copayment": _optional_money(row, "minimum_unadjusted_copayment"),
    }


def _optional_money(row: Row, column: str) -> str:
    # Addendum B writes "." for "no copayment amount" in the national copayment column.
    return "" if row.get(column) == "." else row.number(column, required=False, money=True)


def _mue(row: Row) -> dict[str, str]:
    code = row.hcpcs("code")
    value = row.integer("value")
    mai = row.required("mai")
    if not re.match(r"[123](?!\d)", mai):
        raise row.fail("mai", f"MUE adjudication indicator {mai!r} is not 1, 2 or 3")
    return {"code": code, "value": value, "mai": mai, "rationale": row.get("rationale")}


def _ptp(row: Row) -> dict[str, str]:
    column1, column2 = row.hcpcs("column1"), row.hcpcs("column2")
    effective = row.ncci_date("effective")
    if effective is None:
        raise row.fail("effective", "effective date required")
    deletion = row.ncci_date("deletion", star_is_none=True)
    if deletion is not None and deletion < effective:
        raise row.fail("deletion", f"deletion date {deletion} is before the effective date "
                                   f"{effective}")
    indicator = row.required("modifier_indicator")
    if indicator not in ("0", "1", "9"):
        raise row.fail("modifier_indicator", f"modifier indicator {indicator!r} is not 0, 1 or 9")
    # NCCI: the edit applies to services before its deletion date; a deletion date equal
    # to the effective date means the edit never applied.
    if deletion == effective:
        raise NotApplicable("deleted on its effective date (never in force)")
    last = deletion - timedelta(days=1) if deletion else None
    return {
        "column1": column1, "column2": column2,
        "effective_from": effective.isoformat(),
        "effective_to": last.isoformat() if last else "",
        "deletion_date": deletion.isoformat() if deletion else "",
        "modifier_indicator": indicator,
        "pre_1996": "true" if row.get("pre_1996") == "*" else "false",
        "rationale": row.get("rationale"),
    }


def _addon(row: Row) -> dict[str, str]:
    addon = row.hcpcs("addon_code")
    primary = row.required("primary_code").upper()
    if primary == CONTRACTOR_DEFINED_PRIMARY:
        raise NotApplicable("primary codes defined by the contractor (CCCCC)")
    primary = row.hcpcs("primary_code")
    if primary == addon:
        raise row.fail("primary_code", f"{addon} is listed as its own primary")
    starts = [row.ncci_date(c) for c in ("aoc_effective", "primary_effective")]
    ends = [row.ncci_date(c, star_is_none=True)
            for c in ("aoc_deletion", "addon_deletion", "primary_deletion")]
    # The pair applies while the edit, the add-on code and the primary code are in force.
    starts = [d for d in starts if d]
    ends = [d for d in ends if d]
    first = max(starts) if starts else None
    # The add-on file's deletion date is the first date the edit no longer applies.
    last = min(ends) - timedelta(days=1) if ends else None
    if first and last and last < first:
        raise NotApplicable("deleted on or before its effective date (never in force)")
    return {
        "addon_code": addon, "primary_code": primary,
        "effective_from": first.isoformat() if first else "",
        "effective_to": last.isoformat() if last else "",
    }


# --------------------------------------------------------------------------------------
# The layouts
# --------------------------------------------------------------------------------------

ASP_CROSSWALK = Kind(
    name="asp_crosswalk", title="ASP NDC-HCPCS crosswalk", table="ndc_hcpcs_crosswalk.csv",
    aliases=(
        (r"_\d{4}_code|hcpcs|hcpcs code", "hcpcs"),
        (r"ndc2|ndc|ndc11", "ndc"),
        (r"short description", "short_description"),
        (r"labeler name", "labeler"),
        (r"drug name", "drug_name"),
        (r"hcpcs dosage", "dosage"),
        (r"pkg size", "pkg_size"),
        (r"pkg qty", "pkg_qty"),
        (r"billunits", "billunits"),
        (r"billunitspkg", "billunitspkg"),
    ),
    required=("hcpcs", "ndc", "billunits"),
    parse=_crosswalk,
    year_patterns=(r"\b_(\d{4})_code\b", r"\b(\d{4}) asp ndc"),
)

ASP_PRICING = Kind(
    name="asp_pricing", title="ASP payment-limit file", table="asp_payment_limits.csv",
    aliases=(
        (r"hcpcs code|hcpcs", "hcpcs"),
        (r"short description", "short_description"),
        (r"hcpcs code dosage|dosage", "dosage"),
        (r"payment limit|payment allowance limit", "payment_limit"),
        (r"co-?insurance percentage", "coinsurance_percent"),
    ),
    required=("hcpcs", "dosage", "payment_limit"),
    parse=_asp_limit,
)

PFS_RVU = Kind(
    name="pfs_rvu", title="PFS relative value file (PPRRVU)", table="pfs_rvu.csv",
    aliases=(
        (r"hcpcs", "hcpcs"),
        (r"mod", "modifier"),
        (r"(?:.* )?description", "description"),
        (r"status code", "status"),
        (r"work rvu", "work_rvu"),
        (r"non-fac pe rvu", "nonfacility_pe_rvu"),
        (r"non-fac na indicator", "nonfacility_na"),
        (r"facility pe rvu", "facility_pe_rvu"),
        (r"facility na indicator", "facility_na"),
        (r"mp rvu", "mp_rvu"),
        (r"non-facility total", "nonfacility_total"),
        (r"facility total", "facility_total"),
        (r"pctc ind", "pctc"),
        (r"glob days", "global_days"),
        (r"conv factor", "conversion_factor"),
    ),
    required=("hcpcs", "modifier", "status", "nonfacility_total", "facility_total",
              "conversion_factor"),
    parse=_pfs,
    year_patterns=(r"\b(\d{4}) national physician fee schedule",),
    stacked_header=True,
)

PFS_GPCI = Kind(
    name="pfs_gpci", title="PFS GPCI file", table="pfs_gpci.csv",
    aliases=(
        (r"medicare administrative contractor(?: \(mac\))?|mac|contractor", "mac"),
        (r"state", "state"),
        (r"locality number|locality", "locality"),
        (r"locality name", "locality_name"),
        (r"(?:\d{4} )?pw gpci.*", "pw_gpci"),
        (r"(?:\d{4} )?pe gpci.*", "pe_gpci"),
        (r"(?:\d{4} )?mp gpci.*", "mp_gpci"),
    ),
    required=("mac", "locality", "pw_gpci", "pe_gpci", "mp_gpci"),
    parse=_gpci,
    year_patterns=(r"\bcy (\d{4}) geographic", r"\b(\d{4}) pw gpci"),
    code_column="locality",
)

OPPS_ADDENDUM_B = Kind(
    name="opps_addendum_b", title="OPPS Addendum B", table="opps_addendum_b.csv",
    aliases=(
        (r"hcpcs code|hcpcs", "hcpcs"),
        (r"short descriptor", "short_descriptor"),
        (r"si|status indicator", "status_indicator"),
        (r"apc", "apc"),
        (r"relative weight", "relative_weight"),
        (r"payment rate", "payment_rate"),
        (r"national unadjusted copayment", "national_unadjusted_copayment"),
        (r"minimum unadjusted copayment", "minimum_unadjusted_copayment"),
    ),
    required=("hcpcs", "status_indicator", "apc", "payment_rate"),
    parse=_opps,
    year_patterns=(r"opps payment by hcpcs code for cy (\d{4})", r"\bcy (\d{4})\b"),
)

MUE_PRACTITIONER = Kind(
    name="mue_practitioner", title="MUE practitioner services table", table="mue.csv",
    aliases=(
        (r"hcpcs\s*/\s*cpt code|hcpcs code|cpt code", "code"),
        (r"practitioner services mue values?", "value"),
        (r"mue adjudication indicator", "mai"),
        (r"mue rationale", "rationale"),
    ),
    required=("code", "value", "mai"),
    parse=_mue,
    code_column="code",
)

NCCI_PTP = Kind(
    name="ncci_ptp", title="NCCI PTP practitioner edits", table="ncci_ptp.csv",
    aliases=(
        (r"column 1", "column1"),
        (r"column 2", "column2"),
        (r"\*\s*=\s*in existence prior to 1996", "pre_1996"),
        (r"effective date", "effective"),
        (r"deletion date.*", "deletion"),
        (r"modifier.*0\s*=\s*not allowed.*", "modifier_indicator"),
        (r"ptp edit rationale", "rationale"),
    ),
    required=("column1", "column2", "effective", "deletion", "modifier_indicator"),
    parse=_ptp,
    dated_by="rows",
    code_column="column1",
)

def _aoc_date(name: str) -> str:
    return rf"{name}[ _](?:date|dt)(?:[ _]?\(?julian\)?)?"


ADDON_CODES = Kind(
    name="addon_codes", title="NCCI add-on code file", table="addon_codes.csv",
    # The spreadsheet's names (ADD-ON CODE, PRIMARY CODE, AOC EDIT TYPE, AOC_EDIT_EFF_DT,
    # AOC_EDIT_DEL_DT, AOC_DEL_DT, PRIMARY_CODE_DEL_DT, with or without "(Julian)"),
    # matched with spaces or underscores and "date" or "dt".
    aliases=(
        (r"add[- _]?on[ _]code", "addon_code"),
        (r"primary[ _]code", "primary_code"),
        (r"aoc[ _]edit[ _]type|add[- _]?on[ _]code[ _]type", "aoc_type"),
        (_aoc_date(r"primary[ _]code[ _]eff(?:ective)?"), "primary_effective"),
        (_aoc_date(r"primary[ _]code[ _]del(?:etion)?"), "primary_deletion"),
        (_aoc_date(r"aoc[ _](?:edit[ _])?eff(?:ective)?"), "aoc_effective"),
        (_aoc_date(r"aoc[ _]edit[ _]del(?:etion)?"), "aoc_deletion"),
        (_aoc_date(r"(?:aoc|add[- _]?on[ _]code)[ _]del(?:etion)?"), "addon_deletion"),
        (r"special[ _]instruction[ _]notes?", "notes"),
    ),
    required=("addon_code", "primary_code", "aoc_effective"),
    parse=_addon,
    dated_by="rows",
    code_column="addon_code",
)

#: Recognised but not imported: the locality <-> county list is for people choosing a
#: locality; the GPCI file carries the numbers.
LOCALITY_COUNTIES = Kind(
    name="pfs_locality_counties", title="PFS locality-county list", table="",
    aliases=(
        (r"medicare adminstrative contractor|medicare administrative contractor", "mac"),
        (r"locality number", "locality"),
        (r"fee schedule area", "area"),
        (r"counties", "counties"),
    ),
    required=("mac", "locality", "area", "counties"),
    parse=lambda row: {},
)

#: Recognised but not imported: the MUE zip also holds the outpatient-hospital and DME
#: tables; the engine checks professional claims against the practitioner table.
MUE_OTHER = Kind(
    name="mue_hospital_or_dme", title="MUE outpatient hospital / DME table", table="",
    aliases=(
        (r"hcpcs\s*/\s*cpt code|hcpcs code|cpt code", "code"),
        (r"(?:outpatient hospital|facility|dme supplier|dme) services mue values?", "value"),
    ),
    required=("code", "value"),
    parse=lambda row: {},
)

KINDS: tuple[Kind, ...] = (
    ASP_CROSSWALK, ASP_PRICING, PFS_RVU, PFS_GPCI, OPPS_ADDENDUM_B, MUE_PRACTITIONER,
    NCCI_PTP, ADDON_CODES, LOCALITY_COUNTIES, MUE_OTHER,
)
