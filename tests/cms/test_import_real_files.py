"""`rules import` on the real CMS files of ../shared/cms (read in place, never copied):
January 2025 and January 2026 ASP crosswalk and payment limits, the January 2025 OPPS
Addendum B, and the 2025 PFS relative-value and GPCI files.

Expected values come from the files themselves (read here with the csv module), from
shared/cms/README.md and from billing-rules.md §6 (NDC formats), never from the
importer's output.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from stream_app.cms import REPORT_FILE, import_files
from stream_app.rules import load_rules
from tests.cms.helpers import PFS2025, Q2025, Q2026, in_force, physical_line, require_shared, table_rows

# billing-rules.md §6: 5-4-2, or the 10-digit label forms 4-4-2 / 5-3-2 / 5-4-1 (hyphens
# needed: 10 plain digits are ambiguous), or the 11-digit claim form.
NDC_FORMS = re.compile(r"\d{5}-\d{4}-\d{2}|\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d"
                       r"|\d{11}")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    require_shared()
    into = tmp_path_factory.mktemp("rules")
    report = import_files([Q2025, Q2026, PFS2025], into)
    return into, report


def _report_file(report_json: dict, path: Path) -> dict:
    return next(f for f in report_json["files"] if f["file"] == str(path))


def _crosswalk_data_rows(path: Path) -> list[list[str]]:
    """Rows under the `_YYYY_CODE` header row, read with the csv module."""
    with path.open(encoding="cp1252", newline="") as handle:
        rows = list(csv.reader(handle))
    start = next(i for i, r in enumerate(rows) if r and re.fullmatch(r"_\d{4}_CODE", r[0]))
    return [r for r in rows[start + 1:] if any(c.strip() for c in r)]


def test_two_quarters_and_pfs_import_with_a_json_report(imported):
    into, report = imported
    data = json.loads((into / REPORT_FILE).read_text(encoding="utf-8"))
    kinds = {f"{Path(f['file']).parent.name}/{Path(f['file']).name}": f["kind"]
             for f in data["files"]}
    assert kinds == {
        "2025-q1/asp-ndc-hcpcs-crosswalk.csv": "asp_crosswalk",
        "2025-q1/asp-pricing.csv": "asp_pricing",
        "2025-q1/opps-addendum-b.csv": "opps_addendum_b",
        "2026-q1/asp-ndc-hcpcs-crosswalk.csv": "asp_crosswalk",
        "2026-q1/asp-pricing.csv": "asp_pricing",
        "pfs-2025/PPRRVU2025_Oct.csv": "pfs_rvu",
        "pfs-2025/GPCI2025.csv": "pfs_gpci",
        "pfs-2025/25LOCCO.csv": "pfs_locality_counties",
    }
    for name in ("ndc_hcpcs_crosswalk.csv", "asp_payment_limits.csv", "pfs_rvu.csv",
                 "pfs_gpci.csv", "opps_addendum_b.csv"):
        assert (into / name).is_file(), name
    # Periods as the files state them ("Effective January 1, 2025 through March 31, 2025").
    xwalk25 = _report_file(data, Q2025 / "asp-ndc-hcpcs-crosswalk.csv")
    assert (xwalk25["effective_from"], xwalk25["effective_to"]) == ("2025-01-01", "2025-03-31")
    pricing26 = _report_file(data, Q2026 / "asp-pricing.csv")
    assert (pricing26["effective_from"], pricing26["effective_to"]) == ("2026-01-01", "2026-03-31")
    pfs = _report_file(data, PFS2025 / "PPRRVU2025_Oct.csv")
    assert (pfs["effective_from"], pfs["effective_to"]) == ("2025-01-01", "2025-12-31")


@pytest.mark.parametrize("quarter", [Q2025, Q2026], ids=["2025-q1", "2026-q1"])
def test_the_j7331_device_row_is_set_aside_with_its_line_and_reason(imported, quarter):
    into, report = imported
    path = quarter / "asp-ndc-hcpcs-crosswalk.csv"
    line = physical_line(path, "888867413689")
    data = json.loads((into / REPORT_FILE).read_text(encoding="utf-8"))
    rows = _report_file(data, path)["set_aside_rows"]
    j7331 = [r for r in rows if r["line"] == line]
    assert len(j7331) == 1
    assert j7331[0]["code"] == "J7331"
    assert j7331[0]["column"] == "NDC2"
    assert "888867413689" in j7331[0]["reason"] and "not an NDC" in j7331[0]["reason"]
    printed = report.text()
    assert f"line {line} (J7331), NDC2: NDC '888867413689' is not an NDC" in printed


@pytest.mark.parametrize("quarter,start", [(Q2025, "2025-01-01"), (Q2026, "2026-01-01")],
                         ids=["2025-q1", "2026-q1"])
def test_imported_crosswalk_rows_are_the_rows_with_a_valid_ndc(imported, quarter, start):
    into, report = imported
    path = quarter / "asp-ndc-hcpcs-crosswalk.csv"
    rows = _crosswalk_data_rows(path)
    valid = [r for r in rows if NDC_FORMS.fullmatch(r[3].strip())]
    assert len(valid) < len(rows)  # the file does hold non-NDC product ids
    written = [r for r in table_rows(into / "ndc_hcpcs_crosswalk.csv")
               if r["effective_from"] == start]
    assert len(written) == len(valid)
    summary = next(f for f in report.files if f.path == path)
    assert (summary.rows_read, len(summary.rows), len(summary.set_aside)) == (
        len(rows), len(valid), len(rows) - len(valid))


def test_ndc_00409_7332_01_is_j0696_with_4_billing_units_per_vial(imported):
    into, _ = imported
    rows = table_rows(into / "ndc_hcpcs_crosswalk.csv")
    for on in (date(2025, 2, 10), date(2026, 1, 15)):
        found = in_force(rows, on, NDC2="00409-7332-01")
        assert [(r["HCPCS Code"], r["BILLUNITS"]) for r in found] == [("J0696", "4")]
    # Between the quarters imported there is no crosswalk row (not last year's, not next).
    assert in_force(rows, date(2025, 6, 1), NDC2="00409-7332-01") == []


def test_the_current_loader_accepts_the_written_crosswalk(imported, tmp_path):
    into, _ = imported
    shutil.copy(into / "ndc_hcpcs_crosswalk.csv", tmp_path / "ndc_hcpcs_crosswalk.csv")
    rules = load_rules(tmp_path)
    assert rules.hcpcs_for_ndc("00409733201", date(2025, 2, 10)) == "J0696"
    assert rules.hcpcs_for_ndc("00409733201", date(2026, 1, 15)) == "J0696"
    assert rules.hcpcs_for_ndc("00409733201", date(2025, 7, 1)) is None


def _pricing_limit(path: Path, hcpcs: str) -> str:
    with path.open(encoding="cp1252", newline="") as handle:
        for row in csv.reader(handle):
            if row and row[0] == hcpcs:
                return row[3]
    raise AssertionError(f"{hcpcs} not in {path}")


def test_j0696_payment_limit_by_service_date(imported):
    into, _ = imported
    rows = table_rows(into / "asp_payment_limits.csv")
    jan_2025 = in_force(rows, date(2025, 2, 10), hcpcs="J0696")
    assert [(r["dosage"], Decimal(r["payment_limit"])) for r in jan_2025] == [
        ("250 MG", Decimal("0.446"))]
    jan_2026_file = Decimal(_pricing_limit(Q2026 / "asp-pricing.csv", "J0696"))
    assert jan_2026_file != Decimal("0.446")
    jan_2026 = in_force(rows, date(2026, 1, 15), hcpcs="J0696")
    assert [Decimal(r["payment_limit"]) for r in jan_2026] == [jan_2026_file]


def test_a9606_without_a_numeric_limit_is_set_aside(imported):
    _, report = imported
    path = Q2025 / "asp-pricing.csv"
    line = physical_line(path, "A9606,")
    summary = next(f for f in report.files if f.path == path)
    assert [(r.line, r.code, r.column) for r in summary.set_aside] == [
        (line, "A9606", "Payment Limit")]


def test_pfs_96372_and_99213(imported):
    into, _ = imported
    rows = table_rows(into / "pfs_rvu.csv")
    on = date(2025, 2, 10)
    (inj,) = in_force(rows, on, code="96372", modifier="")
    assert Decimal(inj["nonfacility_total"]) == Decimal("0.43")
    assert inj["nonfacility_na"] == "false"
    # Facility NA indicator: not payable to the professional in a facility setting.
    assert (inj["facility_total"], inj["facility_na"]) == ("", "true")
    assert Decimal(inj["conversion_factor"]) == Decimal("32.3465")
    medicare = Decimal(inj["nonfacility_total"]) * Decimal(inj["conversion_factor"])
    assert medicare.quantize(Decimal("0.01")) == Decimal("13.91")
    (visit,) = in_force(rows, on, code="99213", modifier="")
    assert (Decimal(visit["nonfacility_total"]), Decimal(visit["facility_total"])) == (
        Decimal("2.75"), Decimal("1.97"))
    assert visit["facility_na"] == "false"


def test_opps_96372_and_the_a4341_row_cms_got_wrong(imported):
    into, report = imported
    rows = table_rows(into / "opps_addendum_b.csv")
    (inj,) = in_force(rows, date(2025, 2, 10), hcpcs="96372")
    assert (inj["status_indicator"], inj["apc"], Decimal(inj["payment_rate"])) == (
        "Q1", "5692", Decimal("71.17"))
    path = Q2025 / "opps-addendum-b.csv"
    line = physical_line(path, "A4341")
    summary = next(f for f in report.files if f.path == path)
    assert [(r.line, r.column) for r in summary.set_aside] == [(line, "HCPCS Code")]


def test_gpci_rows_and_footnotes(imported):
    into, report = imported
    rows = table_rows(into / "pfs_gpci.csv")
    (alaska,) = in_force(rows, date(2025, 5, 1), mac="02102", locality="01")
    assert (alaska["pw_gpci"], alaska["pe_gpci"], alaska["mp_gpci"]) == ("1.5", "1.081", "0.592")
    summary = next(f for f in report.files if f.path == PFS2025 / "GPCI2025.csv")
    assert summary.set_aside == [] and summary.note_lines == 3


def test_the_2026_quarter_reports_changes_against_2025(imported):
    _, report = imported
    pricing = next(f for f in report.files if f.path == Q2026 / "asp-pricing.csv")
    changed = {c["key"]: (c["from"], c["to"]) for c in pricing.changes["values_changed"]
               if c["column"] == "payment_limit"}
    assert changed["J0696"] == ("0.446", _pricing_limit(Q2026 / "asp-pricing.csv", "J0696"))
    with (Q2025 / "asp-pricing.csv").open(encoding="cp1252", newline="") as handle:
        codes_2025 = {r[0] for r in list(csv.reader(handle))[9:] if r}
    with (Q2026 / "asp-pricing.csv").open(encoding="cp1252", newline="") as handle:
        codes_2026 = {r[0] for r in list(csv.reader(handle))[9:] if r}
    # A9606 is set aside in both quarters, so it is neither added nor removed.
    assert set(pricing.changes["codes_added"]) == codes_2026 - codes_2025
    assert set(pricing.changes["codes_removed"]) == codes_2025 - codes_2026
    crosswalk = next(f for f in report.files if f.path == Q2026 / "asp-ndc-hcpcs-crosswalk.csv")
    assert crosswalk.changes["compared_with"].startswith("rows in force on 2025-03-31")
    assert crosswalk.changes["ndcs_moved"], "NDCs recoded between January 2025 and 2026"


def test_reimporting_a_quarter_changes_nothing(imported, tmp_path):
    into, _ = imported
    copy = tmp_path / "rules"
    shutil.copytree(into, copy)
    report = import_files([Q2026], copy)
    for name in ("ndc_hcpcs_crosswalk.csv", "asp_payment_limits.csv"):
        assert (copy / name).read_bytes() == (into / name).read_bytes(), name
    for summary in report.files:
        assert summary.changes["codes_added"] == summary.changes["codes_removed"] == []
        assert summary.changes["values_changed"] == []


def test_cp1252_bytes_are_read_as_text(imported):
    into, _ = imported
    raw = (Q2025 / "asp-pricing.csv").read_bytes()
    assert b"1 million\xa0PFU" in raw  # a cp1252 non-breaking space inside the dosage
    rows = table_rows(into / "asp_payment_limits.csv")
    (talimogene,) = in_force(rows, date(2025, 2, 10), hcpcs="J9325")
    assert talimogene["dosage"] == "1 MILLION PFU"
    crosswalk = table_rows(into / "ndc_hcpcs_crosswalk.csv")
    (vutrisiran,) = in_force(crosswalk, date(2025, 2, 10), NDC2="71336-1003-01")
    assert vutrisiran["Drug Name"] == "Amvuttra"  # "Amvuttra\xa0" in the file
