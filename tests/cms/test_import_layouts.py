"""`rules import` on small files written in CMS's published layouts.

The MUE, NCCI PTP and add-on code files are not available here: the files below follow
the published layouts (shared/cms/README.md) and EVERY VALUE IN THEM IS AN EXAMPLE, not a
CMS edit. The crosswalk and payment-limit files are derived from the real files' first
lines (their preamble and header, read from ../shared/cms) with rows written here.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest

from stream_app.cli import main
from stream_app.cms import REPORT_FILE, CmsFileError, import_files
from stream_app.rules import load_rules
from tests.cms.helpers import PFS2025, Q2025, in_force, require_shared, table_rows

# EXAMPLE values only (not CMS MUEs): practitioner MUE layout after a copyright preamble,
# quoted header cells with line breaks, as CMS's CSV has them.
MUE_EXAMPLE = (
    '"CPT codes and descriptions only are copyright 2024 American Medical Association. '
    'All Rights Reserved."\r\n'
    ",,,\r\n"
    '"HCPCS/\r\nCPT Code","Practitioner Services\r\nMUE Values",'
    '"MUE Adjudication\r\nIndicator","MUE Rationale"\r\n'
    '96372,4,"1 Line Edit",EXAMPLE value\r\n'
    '96374,1,"2 Date of Service Edit: Policy",EXAMPLE value\r\n'
    '96375,many,"3 Date of Service Edit: Clinical",EXAMPLE bad value\r\n'
    '96376,0,"7 Unknown",EXAMPLE bad indicator\r\n'
)

# EXAMPLE values only (not CMS edits): tab-separated practitioner PTP layout.
PTP_EXAMPLE = "\r\n".join([
    "CPT codes and descriptions only are copyright 2024 American Medical Association.",
    "",
    "\t".join(["Column 1", "Column 2", "*=in existence prior to 1996", "Effective Date",
               "Deletion Date *=no data", "Modifier 0=not allowed 1=allowed 9=not applicable",
               "PTP Edit Rationale"]),
    "\t".join(["99213", "96372", "", "20250101", "*", "1", "EXAMPLE indicator 1"]),
    "\t".join(["96372", "96374", "*", "19960101", "20250401", "0", "EXAMPLE indicator 0"]),
    "\t".join(["96374", "96376", "", "20251341", "*", "1", "EXAMPLE bad date"]),
    "\t".join(["96365", "96374", "", "20250101", "*", "9", "EXAMPLE indicator 9"]),
    "\t".join(["96360", "96361", "", "20250101", "20250101", "9", "EXAMPLE never in force"]),
    "",
])

# EXAMPLE values only (not the CMS add-on file): columns of the AOC spreadsheet.
AOC_EXAMPLE = "\r\n".join([
    "Add-on Code,Primary Code,AOC Edit Type,Primary Code Effective Date,"
    "Primary Code Deletion Date,AOC Effective Date,AOC Deletion Date,Special Instruction Notes",
    "96375,96374,1,19990101,*,20130401,*,EXAMPLE",
    "96375,96365,1,19990101,*,20130401,*,EXAMPLE",
    "96376,96374,1,20050101,*,20130401,20250101,EXAMPLE deleted",
    "99354,CCCCC,2,,,20130401,*,EXAMPLE contractor-defined primaries",
    "9637,96374,1,19990101,*,20130401,*,EXAMPLE bad code",
    "",
])


def _write(path: Path, text: str, encoding: str = "cp1252") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _real_head(path: Path) -> str:
    """The preamble and header of a real CMS file, up to and including the header row."""
    lines = path.read_bytes().decode("cp1252").split("\r\n")
    end = next(i for i, line in enumerate(lines)
               if line.startswith(("_2025_CODE", "HCPCS Code,")))
    return "\r\n".join(lines[:end + 1]) + "\r\n"


def _pricing(tmp_path: Path, rows: list[str], effective: str | None = None) -> Path:
    require_shared()
    head = _real_head(Q2025 / "asp-pricing.csv")
    if effective:
        head = head.replace("January 1, 2025 through March 31, 2025", effective)
    name = f"pricing-{len(list(tmp_path.iterdir()))}.csv"
    return _write(tmp_path / name, head + "\r\n".join(rows) + "\r\n")


def _result(report, path: Path):
    return next(f for f in report.files if f.path == path)


def test_mue_needs_a_period_and_then_imports_for_the_current_loader(tmp_path):
    mue = _write(tmp_path / "mue-example.csv", MUE_EXAMPLE)
    into = tmp_path / "rules"
    with pytest.raises(CmsFileError) as caught:
        import_files([mue], into)
    assert str(mue) in str(caught.value) and "--effective-from" in str(caught.value)
    assert not into.exists()

    report = import_files([mue], into, date(2025, 1, 1), date(2025, 3, 31))
    result = _result(report, mue)
    assert (result.rows_read, len(result.rows)) == (4, 2)
    assert [(r.line, r.column, r.code) for r in result.set_aside] == [
        (9, "Practitioner Services MUE Values", "96375"),
        (10, "MUE Adjudication Indicator", "96376")]
    loadable = tmp_path / "only-mue"
    loadable.mkdir()
    shutil.copy(into / "mue.csv", loadable / "mue.csv")
    rules = load_rules(loadable)
    assert (rules.mue("96372", date(2025, 2, 1)).value, rules.mue("96372", date(2025, 2, 1)).mai) \
        == (4, 1)
    assert rules.mue("96372", date(2025, 4, 1)) is None


def test_ptp_rows_carry_their_own_dates(tmp_path):
    ptp = _write(tmp_path / "ptp-example.txt", PTP_EXAMPLE)
    into = tmp_path / "rules"
    report = import_files([ptp], into)
    result = _result(report, ptp)
    assert result.rows_read == 5
    assert [(r.line, r.column, r.code) for r in result.set_aside] == [
        (6, "Effective Date", "96374")]
    assert "20251341" in result.set_aside[0].reason
    assert sum(result.not_applicable.values()) == 1  # deleted on its effective date
    rows = table_rows(into / "ncci_ptp.csv")
    assert {(r["column1"], r["column2"]): r["modifier_indicator"] for r in rows} == {
        ("99213", "96372"): "1", ("96372", "96374"): "0", ("96365", "96374"): "9"}
    # A deletion date is the first day the edit no longer applies.
    assert in_force(rows, date(2025, 3, 31), column1="96372", column2="96374")
    assert not in_force(rows, date(2025, 4, 1), column1="96372", column2="96374")
    (old,) = [r for r in rows if r["column1"] == "96372"]
    assert (old["effective_from"], old["deletion_date"], old["pre_1996"]) == (
        "1996-01-01", "2025-04-01", "true")


def test_addon_file_for_the_current_loader(tmp_path):
    aoc = _write(tmp_path / "aoc-example.csv", AOC_EXAMPLE)
    into = tmp_path / "rules"
    report = import_files([aoc], into)
    result = _result(report, aoc)
    assert [(r.line, r.column) for r in result.set_aside] == [(6, "Add-on Code")]
    assert sum(result.not_applicable.values()) == 1  # CCCCC: contractor-defined primaries
    loadable = tmp_path / "only-aoc"
    loadable.mkdir()
    shutil.copy(into / "addon_codes.csv", loadable / "addon_codes.csv")
    rules = load_rules(loadable)
    assert rules.addon_primaries("96375", date(2025, 6, 1)) == {"96374", "96365"}
    assert rules.addon_primaries("96376", date(2024, 12, 31)) == {"96374"}
    assert rules.addon_primaries("96376", date(2025, 1, 1)) == frozenset()


def test_a_file_with_an_unknown_header_fails_naming_it_and_writes_nothing(tmp_path, capsys):
    good = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.446,20.000,,,,,,,"])
    unknown = _write(tmp_path / "mystery.csv", "Title line\r\nfoo,bar,baz\r\n1,2,3\r\n")
    into = tmp_path / "rules"
    with pytest.raises(CmsFileError) as caught:
        import_files([good, unknown], into)
    assert caught.value.path == str(unknown)
    assert "header not recognised" in str(caught.value)
    assert not into.exists()
    assert main(["rules", "import", str(good), str(unknown), "--into", str(into)]) == 2
    assert str(unknown) in capsys.readouterr().err
    assert not into.exists()


def test_bad_ndc_bad_date_and_non_numeric_limit_are_set_aside_and_the_rest_imports(tmp_path):
    require_shared()
    crosswalk = _write(tmp_path / "crosswalk.csv", _real_head(Q2025 / "asp-ndc-hcpcs-crosswalk.csv")
                       + "J0696,Ceftriaxone sodium injection,Pfizer Inc,00409-7332-01,"
                         "Ceftriaxone,250 MG,1,10,4,40,,,\r\n"
                         "J0696,Ceftriaxone sodium injection,Example Labs,0409-733201,"
                         "Ceftriaxone,250 MG,1,10,4,40,,,\r\n"
                         "J1100,Dexamethasone sodium phos,Example Labs,63323-165-01,"
                         "Dexamethasone,1 MG,1,25,4,100,,,\r\n")
    pricing = _pricing(tmp_path, [
        "J0696,Ceftriaxone sodium injection,250 MG,0.446,20.000,,,,,,,",
        "J1100,Dexamethasone sodium phos,1 MG,abc,20.000,,,,,,,",
        "J1885,Ketorolac trometh inj 15 mg,15 MG,0.100,20.000,,,,,,,",
    ])
    ptp = _write(tmp_path / "ptp-example.txt", PTP_EXAMPLE)
    into = tmp_path / "rules"
    report = import_files([crosswalk, pricing, ptp], into)
    xw = _result(report, crosswalk)
    assert [(r.line, r.column, r.code) for r in xw.set_aside] == [(11, "NDC2", "J0696")]
    assert "0409-733201" in xw.set_aside[0].reason
    written = table_rows(into / "ndc_hcpcs_crosswalk.csv")
    assert sorted((r["NDC2"], r["HCPCS Code"]) for r in written) == [
        ("00409-7332-01", "J0696"), ("63323-0165-01", "J1100")]  # 5-3-2 made 5-4-2
    pr = _result(report, pricing)
    assert [(r.line, r.column, r.code) for r in pr.set_aside] == [(11, "Payment Limit", "J1100")]
    assert {r["hcpcs"] for r in table_rows(into / "asp_payment_limits.csv")} == {"J0696", "J1885"}
    pt = _result(report, ptp)
    assert [(r.line, r.column) for r in pt.set_aside] == [(6, "Effective Date")]
    data = json.loads((into / REPORT_FILE).read_text(encoding="utf-8"))
    assert data["set_aside"] == 3
    assert {f["file"]: [r["line"] for r in f["set_aside_rows"]] for f in data["files"]} == {
        str(crosswalk): [11], str(pricing): [11], str(ptp): [6]}


def test_strict_exits_non_zero_when_rows_were_set_aside(tmp_path, capsys):
    clean = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.446,20.000,,,,,,,"])
    into = tmp_path / "rules"
    assert main(["rules", "import", str(clean), "--into", str(into), "--strict"]) == 0
    dirty = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,N/A,20.000,,,,,,,"],
                     effective="April 1, 2025 through June 30, 2025")
    assert main(["rules", "import", str(dirty), "--into", str(into)]) == 0
    assert main(["rules", "import", str(dirty), "--into", str(into), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "line 10 (J0696), Payment Limit: 'N/A' is not a non-negative number" in out


def test_quarters_stack_up_and_a_later_file_replaces_its_own_period_only(tmp_path):
    q1 = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.446,20.000,,,,,,,",
                             "J1885,Ketorolac trometh inj 15 mg,15 MG,0.100,20.000,,,,,,,"])
    q2 = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.450,20.000,,,,,,,",
                             "J2405,Ondansetron hcl injection,1 MG,0.050,20.000,,,,,,,"],
                  effective="April 1, 2025 through June 30, 2025")
    into = tmp_path / "rules"
    import_files([q1], into)
    report = import_files([q2], into)
    changes = _result(report, q2).changes
    assert changes["codes_added"] == ["J2405"] and changes["codes_removed"] == ["J1885"]
    assert changes["values_changed"] == [
        {"key": "J0696", "column": "payment_limit", "from": "0.446", "to": "0.450"}]
    rows = table_rows(into / "asp_payment_limits.csv")
    assert [r["payment_limit"] for r in in_force(rows, date(2025, 3, 31), hcpcs="J0696")] == [
        "0.446"]
    assert [r["payment_limit"] for r in in_force(rows, date(2025, 4, 1), hcpcs="J0696")] == [
        "0.450"]
    before = (into / "asp_payment_limits.csv").read_bytes()
    again = import_files([q1], into)
    assert (into / "asp_payment_limits.csv").read_bytes() == before
    assert _result(again, q1).changes["values_changed"] == []


def test_two_files_for_the_same_table_and_period_fail(tmp_path):
    a = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.446,20.000,,,,,,,"])
    b = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.999,20.000,,,,,,,"])
    with pytest.raises(CmsFileError, match="overlaps"):
        import_files([a, b], tmp_path / "rules")


def test_year_only_files_take_a_narrower_period_from_the_command_line(tmp_path):
    require_shared()
    head = (Q2025 / "opps-addendum-b.csv").read_bytes().split(b"\r\n")[:5]
    opps = tmp_path / "addendum-b.csv"
    opps.write_bytes(b"\r\n".join([*head, b"96372,Ther/proph/diag inj sc/im,Q1,5692,0.7982,"
                                          b"$71.17,.,$14.24,,,,,", b""]))
    into = tmp_path / "rules"
    report = import_files([opps], into, date(2025, 1, 1), date(2025, 3, 31))
    assert _result(report, opps).period == (date(2025, 1, 1), date(2025, 3, 31))
    with pytest.raises(CmsFileError, match="outside"):
        import_files([opps], into, date(2024, 10, 1), date(2024, 12, 31))


def test_a_reissued_ptp_edit_replaces_the_old_row_and_overlaps_in_one_file_are_set_aside(
        tmp_path):
    header = PTP_EXAMPLE.split("\r\n")[:3]
    first = _write(tmp_path / "ptp-q1.txt", "\r\n".join([
        *header,
        "\t".join(["99213", "96372", "", "20250101", "*", "1", "EXAMPLE open edit"]),
        ""]))
    # The next quarter's EXAMPLE file: the same edit now deleted, and the same pair listed
    # twice on overlapping dates with different indicators.
    second = _write(tmp_path / "ptp-q2.txt", "\r\n".join([
        *header,
        "\t".join(["99213", "96372", "", "20250101", "20250701", "1", "EXAMPLE deleted"]),
        "\t".join(["96365", "96374", "", "20250101", "*", "1", "EXAMPLE"]),
        "\t".join(["96365", "96374", "", "20250301", "*", "0", "EXAMPLE overlapping"]),
        ""]))
    into = tmp_path / "rules"
    import_files([first], into)
    report = import_files([second], into)
    assert [(r.line, r.code) for r in _result(report, second).set_aside] == [(6, "96365")]
    assert _result(report, second).changes["values_changed"] == [
        {"key": "99213/96372", "column": "effective_to", "from": "", "to": "2025-06-30"}]
    rows = table_rows(into / "ncci_ptp.csv")
    pair = [r for r in rows if (r["column1"], r["column2"]) == ("99213", "96372")]
    assert [(r["effective_to"], r["deletion_date"]) for r in pair] == [
        ("2025-06-30", "2025-07-01")]


def test_an_existing_table_that_cannot_be_merged_stops_the_import_before_any_write(tmp_path):
    pricing = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.446,20.000,,,,,,,"])
    mue = _write(tmp_path / "mue-example.csv", MUE_EXAMPLE)
    into = tmp_path / "rules"
    into.mkdir()
    (into / "mue.csv").write_text("code,limit\n96372,4\n", encoding="utf-8")
    with pytest.raises(CmsFileError) as caught:
        import_files([pricing, mue], into, date(2025, 1, 1), date(2025, 3, 31))
    assert caught.value.path == str(into / "mue.csv")
    assert sorted(p.name for p in into.iterdir()) == ["mue.csv"]


def test_addon_spreadsheet_names_with_julian_dates(tmp_path):
    # EXAMPLE values only; the column names of the AOC spreadsheet saved as CSV.
    aoc = _write(tmp_path / "aoc-julian-example.csv", "\r\n".join([
        "ADD-ON CODE,PRIMARY CODE,AOC EDIT TYPE,AOC_EDIT_EFF_DT (Julian),"
        "AOC_EDIT_DEL_DT (Julian),AOC_DEL_DT (Julian),PRIMARY_CODE_DEL_DT (Julian),"
        "SPECIAL INSTRUCTION NOTES",
        "96375,96374,1,2013091,,,,EXAMPLE",
        "96367,96365,1,2013091,2025001,,,EXAMPLE deleted 2025-01-01",
        "96366,96365,1,2013091,,,2024366,EXAMPLE primary deleted 2024-12-31",
        "96376,96374,1,2013400,,,,EXAMPLE bad Julian day",
        ""]))
    into = tmp_path / "rules"
    result = _result(import_files([aoc], into), aoc)
    assert [(r.line, r.column) for r in result.set_aside] == [(5, "AOC_EDIT_EFF_DT (Julian)")]
    rows = {(r["addon_code"], r["primary_code"]): (r["effective_from"], r["effective_to"])
            for r in table_rows(into / "addon_codes.csv")}
    assert rows == {("96375", "96374"): ("2013-04-01", ""),
                    ("96367", "96365"): ("2013-04-01", "2024-12-31"),
                    ("96366", "96365"): ("2013-04-01", "2024-12-30")}


def test_pfs_na_written_in_the_rvu_cells_themselves(tmp_path):
    require_shared()
    lines = (PFS2025 / "PPRRVU2025_Oct.csv").read_bytes().decode("utf-8").split("\r\n")
    header = lines[:10]
    # EXAMPLE row in the PPRRVU layout with NA in the facility PE and total cells.
    row = ("99999,,EXAMPLE code,A,,1.00,0.50,,NA,,0.10,1.60,NA,0,XXX,0.00,0.00,0.00,"
           "0,0,0,0,0,,32.3465,09,0,99,0.00,0.00,0.00")
    pfs = _write(tmp_path / "pfs-example.csv", "\r\n".join([*header, row, ""]), "utf-8")
    into = tmp_path / "rules"
    import_files([pfs], into)
    (written,) = table_rows(into / "pfs_rvu.csv")
    assert (written["facility_pe_rvu"], written["facility_total"], written["facility_na"]) == (
        "", "", "true")
    assert (written["nonfacility_total"], written["nonfacility_na"]) == ("1.60", "false")


def test_the_hospital_mue_table_of_the_same_zip_is_recognised_and_not_imported(tmp_path):
    # EXAMPLE values only.
    hospital = _write(tmp_path / "mue-hospital-example.csv", MUE_EXAMPLE.replace(
        "Practitioner Services", "Outpatient Hospital Services"))
    practitioner = _write(tmp_path / "mue-example.csv", MUE_EXAMPLE)
    into = tmp_path / "rules"
    report = import_files([tmp_path], into, date(2025, 1, 1), date(2025, 3, 31))
    assert _result(report, hospital).kind.table == ""
    assert len(_result(report, practitioner).rows) == 2
    assert "mue-hospital-example.csv: MUE outpatient hospital / DME table (recognised, not " \
           "imported)" in report.text()


def test_python_dash_m_stream_app_rules_import(tmp_path):
    import subprocess
    import sys

    pricing = _pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.446,20.000,,,,,,,",
                                  "J1100,Dexamethasone sodium phos,1 MG,N/A,20.000,,,,,,,"])
    into = tmp_path / "rules"
    done = subprocess.run([sys.executable, "-m", "stream_app", "rules", "import", str(pricing),
                           "--into", str(into), "--strict"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "rows read 2, imported 1, set aside 1" in done.stdout
    assert "--strict: 1 row(s) set aside" in done.stderr
    assert [r["hcpcs"] for r in table_rows(into / "asp_payment_limits.csv")] == ["J0696"]


def test_hand_kept_tables_in_the_directory_are_left_as_they_are(tmp_path):
    packaged = Path(__file__).resolve().parents[2] / "stream_app" / "rules"
    into = tmp_path / "rules"
    into.mkdir()
    kept = ("reason_codes.csv", "code_sets.csv", "facility_pos.csv", "fee_schedule.csv",
            "hcpcs_units.csv", "frequency_limits.csv", "payer_profiles.csv")
    for name in kept:
        shutil.copy(packaged / name, into / name)
    before = {name: (into / name).read_bytes() for name in kept}
    import_files([_pricing(tmp_path, ["J0696,Ceftriaxone sodium injection,250 MG,0.446,"
                                      "20.000,,,,,,,"]),
                  _write(tmp_path / "mue-example.csv", MUE_EXAMPLE)],
                 into, date(2025, 1, 1), date(2025, 3, 31))
    assert {name: (into / name).read_bytes() for name in kept} == before
    assert sorted(p.name for p in into.iterdir()) == sorted(
        [*kept, "asp_payment_limits.csv", "mue.csv", REPORT_FILE])
