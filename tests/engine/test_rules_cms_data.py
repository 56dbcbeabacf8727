"""Decisions from imported CMS data (docs/rule-data.md "Rules from CMS data"): the real
January 2025 / January 2026 ASP files and the 2025 PFS files of ../shared/cms, imported
with `chargecap rules import` into a temporary directory (never copied into the repo).

Expected values come from the CMS files (read here with the csv module), from
shared/cms/README.md and from the contract's example, never from the engine's output.
NCCI PTP and MUE files are not available: the edits below are written in the published
layouts and EVERY VALUE IN THEM IS AN EXAMPLE, not a CMS edit.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from stream_app import vocabulary as V
from stream_app.cms import import_files
from stream_app.engine import RuleDataError
from stream_app.replay import replay
from stream_app.rules import load_rules
from tests.engine.builders import (
    NPI_2,
    RULES_DIR,
    admin_raw,
    em_raw,
    engine,
    run,
)
from tests.support.cms_rules import Q2025, Q2026, imported_rules_dir, with_ptp_examples

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO.parent / "shared/spec/examples/office-visit.ndjson"
FEB_2025, JAN_2026 = date(2025, 2, 10), date(2026, 1, 15)
CF_2025 = 32.3465  # PPRRVU 2025 conversion factor (shared/cms/README.md)
NDC = "00409-7332-01"  # ceftriaxone 1 g vial, J0696 (shared/cms/README.md)


def _cms_rows(path: Path, first_header_cell: str) -> list[dict[str, str]]:
    """Rows of a CMS CSV under its header row (the preamble above it skipped)."""
    with path.open(encoding="cp1252", newline="") as handle:
        rows = list(csv.reader(handle))
    start = next(i for i, r in enumerate(rows) if r and r[0].strip() == first_header_cell)
    header = [h.strip() for h in rows[start]]
    return [dict(zip(header, r, strict=False)) for r in rows[start + 1:] if any(r)]


def _payment_limit_in_file(path: Path, hcpcs: str) -> float:
    row = next(r for r in _cms_rows(path, "HCPCS Code") if r["HCPCS Code"] == hcpcs)
    return float(row["Payment Limit"])


def _crosswalk_row(path: Path, ndc: str) -> dict[str, str]:
    return next(r for r in _cms_rows(path, "_2025_CODE") if r["NDC2"] == ndc)


def _factor(payer_class: str, column: str) -> float:
    with open(RULES_DIR / "payer_price_factors.csv", newline="") as fh:
        return float(next(r for r in csv.DictReader(fh) if r["payer_class"] == payer_class)[column])


@pytest.fixture(scope="module")
def cms_dir() -> Path:
    return imported_rules_dir()


@pytest.fixture(scope="module")
def cms_rules(cms_dir):
    return load_rules(cms_dir)


# ---------------------------------------------------------------- look-ups


def test_ndc_to_j0696_with_four_billing_units_per_vial(cms_rules):
    row = _crosswalk_row(Q2025 / "asp-ndc-hcpcs-crosswalk.csv", NDC)
    assert (row["_2025_CODE"], row["BILLUNITS"]) == ("J0696", "4")
    assert cms_rules.hcpcs_for_ndc("00409733201", FEB_2025) == "J0696"
    assert cms_rules.package_billing_units("00409733201", "J0696", FEB_2025) == 4
    # 250 mg per billing unit, from the payment-limit file's dosage
    unit = cms_rules.billing_unit("J0696", FEB_2025)
    assert (unit.amount, unit.unit) == (250, "mg")


def test_j0696_payment_limit_by_service_date(cms_rules):
    assert cms_rules.payment_limit("J0696", FEB_2025) == 0.446  # shared/cms/README.md
    jan_2026 = _payment_limit_in_file(Q2026 / "asp-pricing.csv", "J0696")
    assert cms_rules.payment_limit("J0696", JAN_2026) == jan_2026
    # between the imported quarters there is no limit
    assert cms_rules.payment_limit("J0696", date(2025, 7, 1)) is None


def test_pfs_allowances_96372_and_99213(cms_rules):
    assert cms_rules.pfs_allowance("96372", FEB_2025, facility=False) == 13.91
    assert round(0.43 * CF_2025, 2) == 13.91
    # facility PE is NA: not payable to the professional in a facility setting
    assert cms_rules.pfs_rvu("96372", FEB_2025).facility_total is None
    assert cms_rules.pfs_allowance("96372", FEB_2025, facility=True) == 0.0
    assert cms_rules.pfs_allowance("99213", FEB_2025, facility=False) == round(2.75 * CF_2025, 2)
    assert cms_rules.pfs_allowance("99213", FEB_2025, facility=True) == round(1.97 * CF_2025, 2)
    # Medicare, POS 11 (office) and POS 22 (outpatient hospital, a facility POS)
    assert cms_rules.unit_price("96372", "medicare", "11", FEB_2025) == 13.91
    assert cms_rules.unit_price("96372", "medicare", "22", FEB_2025) == 0.0
    # other payer classes: the factor over Medicare
    assert cms_rules.unit_price("99213", "medicaid", "11", FEB_2025) == pytest.approx(
        round(2.75 * CF_2025, 2) * _factor("medicaid", "professional_factor"))


def test_pfs_locality_uses_its_gpcis(cms_dir):
    gpci = next(r for r in csv.DictReader((cms_dir / "pfs_gpci.csv").open(newline=""))
                if (r["mac"], r["locality"]) == ("01112", "05"))
    rules = load_rules(cms_dir, pfs_locality="01112-05")
    # 96372: work 0.17, non-facility PE 0.25, MP 0.01 (PPRRVU 2025)
    expected = (0.17 * float(gpci["pw_gpci"]) + 0.25 * float(gpci["pe_gpci"])
                + 0.01 * float(gpci["mp_gpci"])) * CF_2025
    assert rules.pfs_allowance("96372", FEB_2025, facility=False) == round(expected, 2)
    with pytest.raises(RuleDataError, match="locality"):
        load_rules(cms_dir, pfs_locality="99999-99")


def test_without_cms_tables_the_fee_schedule_prices():
    rules = load_rules()
    with open(RULES_DIR / "fee_schedule.csv", newline="") as fh:
        fees = {(r["payer_class"], r["code"]): float(r["amount"]) for r in csv.DictReader(fh)}
    for key in (("medicare", "96372"), ("commercial", "99213"), ("medicare", "J0696")):
        assert rules.unit_price(key[1], key[0], "11", FEB_2025) == fees[key]
    assert rules.payment_limit("J0696", FEB_2025) is None
    assert not rules.has_ptp


# ---------------------------------------------------------------- the contract's example


def test_contract_example_against_imported_data_keeps_three_lines_and_no_alerts(cms_dir):
    res = replay([str(EXAMPLE)], engine(cms_dir))
    active = sorted((v for v in res.lines.values() if v["state"] == "active"),
                    key=lambda v: v["code"])
    assert [(v["code"], v["modifiers"], v["units"]) for v in active] == [
        ("96372", [], 1), ("99213", ["25"], 1), ("J0696", [], 2)]
    assert [a for a in res.alerts.values() if a["state"] == "open"] == []
    prof, drug = _factor("commercial", "professional_factor"), _factor("commercial", "drug_factor")
    expected = [round(13.91 * prof, 2), round(round(2.75 * CF_2025, 2) * prof, 2),
                round(0.446 * 2 * drug, 2)]
    assert [v["expected_reimbursement"] for v in active] == expected


def _medicare_example(tmp_path: Path, wasted_amount) -> Path:
    records = [json.loads(line) for line in EXAMPLE.read_text().splitlines() if line.strip()]
    for r in records:
        if "payer_class" in r:
            r["payer_class"] = "medicare"
        if "drug" in r:
            r["drug"]["wasted_amount"] = wasted_amount
    path = tmp_path / "medicare.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_medicare_visit_with_waste_zero_gets_the_waste_alert_with_two_jw_units(cms_dir, tmp_path):
    res = replay([str(_medicare_example(tmp_path, 0))], engine(cms_dir))
    alerts = [a for a in res.alerts.values() if a["state"] == "open"]
    assert [a["reason_code"] for a in alerts] == [V.WASTE_UNITS_MISMATCH]
    alert = alerts[0]
    # 1 g vial = 4 units of 250 mg; 500 mg given = 2 units; 2 JW units
    assert alert["details"]["expected_jw_units"] == 2
    assert alert["details"]["documented_jw_units"] == 0
    assert alert["details"]["package_billing_units"] == 4
    assert alert["details"]["recoverable_revenue"] == round(2 * 0.446, 2)
    assert "J0696-JW x 2" in alert["suggested_fix"]
    assert (alert["severity"], alert["work_queue"]) == ("block", "pharmacy")
    # the drug line is held; the administration and the E/M stay active
    active = sorted(v["code"] for v in res.lines.values() if v["state"] == "active")
    assert active == ["96372", "99213"]
    assert alert["revenue_at_risk"] == round(2 * 0.446, 2)


def test_medicare_visit_with_the_package_waste_documented_bills_jw(cms_dir, tmp_path):
    res = replay([str(_medicare_example(tmp_path, 500))], engine(cms_dir))
    assert [a for a in res.alerts.values() if a["state"] == "open"] == []
    drug = sorted((v["modifiers"], v["units"], v["expected_reimbursement"])
                  for v in res.lines.values() if v["code"] == "J0696" and v["state"] == "active")
    assert drug == [([], 2, 0.89), (["JW"], 2, 0.89)]


def test_waste_within_one_billing_unit_of_the_package_is_accepted(cms_dir):
    # 300 mg from the 1 g vial leaves 700 mg = 2.8 units: documented 700 mg agrees
    res = run([admin_raw(payer_class="medicare", drug={"dose": 300, "wasted_amount": 700})],
              rules_dir=cms_dir)
    assert V.WASTE_UNITS_MISMATCH not in res.reasons()


def test_waste_check_only_for_payers_with_the_jw_policy(cms_dir):
    res = run([admin_raw(payer_class="commercial", drug={"wasted_amount": 0})], rules_dir=cms_dir)
    assert res.reasons() == []


# ---------------------------------------------------------------- NCCI PTP (EXAMPLE edits)

# EXAMPLE edits only (not CMS data): column 1, column 2, modifier indicator[, effective]
PTP_EXAMPLES = [
    ("96374", "96372", 1),   # IV push / IM injection
    ("96373", "96372", 0),   # intra-arterial / IM injection
    ("96401", "96372", 9),   # SC antineoplastic / IM injection
    ("96372", "99211", 1),
    ("96372", "99213", 1),
    ("96374", "99214", 0),
    ("96372", "J0696", 1, "20250401"),  # not yet in force in March 2025
]


@pytest.fixture(scope="module")
def ptp_dir(tmp_path_factory) -> Path:
    return with_ptp_examples(tmp_path_factory.mktemp("ptp") / "rules", PTP_EXAMPLES)


def _push(**over):
    return admin_raw(record_id="push", time="09:00", route="IV_PUSH", drug="ondansetron", **over)


def _alerts(res, reason):
    return [a for a in res.alerts if a["reason_code"] == reason]


def test_ptp_indicator_1_without_modifier_holds_column_2(ptp_dir):
    res = run([_push(), admin_raw(record_id="im", time="09:20")], rules_dir=ptp_dir)
    assert res.reasons() == [V.PTP_MODIFIER_REQUIRED]
    alert = res.alert(V.PTP_MODIFIER_REQUIRED)
    assert alert["code"] == "96372" and alert["predicted_denial"]["carc"] == "CO-97"
    assert alert["details"]["column1_code"] == "96374"
    assert alert["details"]["modifier_indicator"] == 1
    assert "96372" not in res.codes() and "96374" in res.codes()


@pytest.mark.parametrize("modifier", ["59", "XS"])
def test_ptp_indicator_1_with_a_distinct_modifier_passes(ptp_dir, modifier):
    res = run([_push(), admin_raw(record_id="im", time="09:20", charge_code="96372",
                                  charge_modifiers=[modifier])], rules_dir=ptp_dir)
    assert res.reasons() == []
    assert res.line("96372")["modifiers"] == [modifier]


@pytest.mark.parametrize("modifiers", [[], ["59"]])
def test_ptp_indicator_0_is_never_bypassed_by_a_modifier(ptp_dir, modifiers):
    arterial = admin_raw(record_id="ia", time="09:00", route="INTRA_ARTERIAL", drug="ketorolac")
    res = run([arterial, admin_raw(record_id="im", time="09:20", charge_code="96372",
                                   charge_modifiers=modifiers)], rules_dir=ptp_dir)
    assert res.reasons() == [V.PTP_BUNDLED]
    assert res.alert(V.PTP_BUNDLED)["code"] == "96372"
    assert "96372" not in res.codes() and "96373" in res.codes()


def test_ptp_indicator_9_different_provider_or_edit_not_in_force_is_no_edit(ptp_dir):
    chemo = admin_raw(record_id="sc", time="09:00", route="SC",
                      drug={"name": "methotrexate", "category": "antineoplastic",
                            "hcpcs": "J9250"})
    res = run([chemo, admin_raw(record_id="im", time="09:20")], rules_dir=ptp_dir)
    assert "96401" in res.codes() and "96372" in res.codes()
    assert not {V.PTP_BUNDLED, V.PTP_MODIFIER_REQUIRED} & set(res.reasons())
    other_npi = run([_push(rendering_npi=NPI_2), admin_raw(record_id="im", time="09:20")],
                    rules_dir=ptp_dir)
    assert other_npi.reasons() == []
    # 96372 / J0696 is in force only from 2025-04-01: the March visit has no edit
    assert run([admin_raw()], rules_dir=ptp_dir).reasons() == []


def test_ptp_does_not_double_the_hand_coded_e_m_rules(ptp_dir):
    res = run([admin_raw(), em_raw(record_id="em", code="99211", modifiers=[],
                                   separately_identifiable=False)], rules_dir=ptp_dir)
    assert res.reasons() == [V.EM_99211_SAME_DAY]  # not also PTP_MODIFIER_REQUIRED
    res = run([admin_raw(), em_raw(record_id="em", modifiers=[])], rules_dir=ptp_dir)
    assert res.reasons() == [V.EM_MISSING_MODIFIER_25]
    # 25 on a separately identifiable 99213: the E/M rules and the indicator-1 edit agree
    assert run([admin_raw(), em_raw(record_id="em")], rules_dir=ptp_dir).reasons() == []


def test_ptp_indicator_0_holds_an_e_m_even_with_25(ptp_dir):
    res = run([_push(), em_raw(record_id="em", code="99214")], rules_dir=ptp_dir)
    assert res.reasons() == [V.PTP_BUNDLED]
    assert res.alert(V.PTP_BUNDLED)["code"] == "99214"


# ---------------------------------------------------------------- MUE and add-on tables

# EXAMPLE values only (not CMS MUEs / add-on edits), in the published layouts.
MUE_EXAMPLE = (
    '"CPT codes and descriptions only are copyright American Medical Association."\r\n'
    '"HCPCS/\r\nCPT Code","Practitioner Services\r\nMUE Values",'
    '"MUE Adjudication\r\nIndicator","MUE Rationale"\r\n'
    '96372,1,"2 Date of Service Edit: Policy",EXAMPLE value\r\n'
)
AOC_EXAMPLE = "\r\n".join([
    "Add-on Code,Primary Code,AOC Edit Type,Primary Code Effective Date,"
    "Primary Code Deletion Date,AOC Effective Date,AOC Deletion Date,Special Instruction Notes",
    "96375,96365,1,19990101,*,20130401,*,EXAMPLE",
    "",
])


def test_imported_mue_and_addon_tables_drive_the_rules(tmp_path):
    into = tmp_path / "rules"
    shutil.copytree(imported_rules_dir(), into)
    mue = tmp_path / "mue-example.csv"
    mue.write_bytes(MUE_EXAMPLE.encode("cp1252"))
    aoc = tmp_path / "aoc-example.csv"
    aoc.write_bytes(AOC_EXAMPLE.encode("cp1252"))
    import_files([mue], into, effective_from=date(2025, 1, 1), effective_to=date(2025, 3, 31))
    import_files([aoc], into)
    rules = load_rules(into)
    assert (rules.mue("96372", date(2025, 3, 14)).value, rules.mue("96372", date(2025, 3, 14)).mai) == (1, 2)
    assert rules.mue("96372", date(2025, 4, 1)) is None  # outside the imported quarter
    assert rules.addon_primaries("96375", date(2025, 3, 14)) == {"96365"}
    # two 96372 lines (different drugs) against the EXAMPLE MUE of 1, MAI 2: the second blocks
    res = run([admin_raw(record_id="a", time="09:00"),
               admin_raw(record_id="b", time="09:20", drug="ketorolac")], rules_dir=into)
    alert = res.alert(V.MUE_EXCEEDED)
    assert (alert["severity"], alert["details"]["mue"]) == ("block", 1)


# ---------------------------------------------------------------- strict loading


@pytest.mark.parametrize(("table", "edit", "column", "message"), [
    ("asp_payment_limits.csv", lambda r: {**r, "payment_limit": "N/A"}, "payment_limit",
     "not a number"),
    ("pfs_rvu.csv", lambda r: {**r, "facility_na": "true", "facility_total": "0.43"},
     "facility_total", "NA"),
    ("pfs_rvu.csv", lambda r: {**r, "conversion_factor": "0"}, "conversion_factor",
     "greater than 0"),
    ("pfs_gpci.csv", lambda r: {**r, "locality": "5"}, "locality", "2 digits"),
    ("opps_addendum_b.csv", lambda r: {**r, "apc": "56"}, "apc", "4 digits"),
])
def test_a_bad_cell_in_an_imported_table_names_file_line_and_column(tmp_path, table, edit,
                                                                     column, message):
    source = imported_rules_dir() / table
    with source.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    rows[2] = edit(rows[2])
    into = tmp_path / "rules"
    into.mkdir()
    with (into / table).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows[:5])
    with pytest.raises(RuleDataError) as err:
        load_rules(into)
    assert (err.value.file, err.value.line, err.value.column) == (str(into / table), 4, column)
    assert message in err.value.message


def test_ptp_indicator_outside_0_1_9_is_refused(tmp_path):
    into = tmp_path / "rules"
    into.mkdir()
    (into / "ncci_ptp.csv").write_text(
        "column1,column2,effective_from,effective_to,deletion_date,modifier_indicator,"
        "pre_1996,rationale,source\n"
        "96374,96372,2025-01-01,,,2,false,EXAMPLE,x\n")
    with pytest.raises(RuleDataError, match=r"ncci_ptp.csv:2:modifier_indicator"):
        load_rules(into)


def test_an_unknown_csv_beside_the_imported_tables_is_still_refused(tmp_path):
    into = tmp_path / "rules"
    shutil.copytree(imported_rules_dir(), into)
    (into / "MCR_MUE_PractitionerServices.csv").write_text("x\n")
    with pytest.raises(RuleDataError, match="unknown rule file name"):
        load_rules(into)


def test_medicare_has_no_row_in_the_payer_factors(tmp_path):
    into = tmp_path / "rules"
    into.mkdir()
    shutil.copy(RULES_DIR / "payer_price_factors.csv", into)
    with (into / "payer_price_factors.csv").open("a") as fh:
        fh.write("medicare,1.1,1.1,,,EXAMPLE\n")
    with pytest.raises(RuleDataError, match="payer_price_factors.csv:6:payer_class"):
        load_rules(into)
    assert math.isclose(_factor("commercial", "professional_factor"), 20.00 / 14.50, abs_tol=1e-4)


# ---------------------------------------------------------------- replay command


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app", *argv], capture_output=True,
                          cwd=REPO, timeout=120)


def test_replay_command_loads_the_imported_directory_with_a_locality(cms_dir, tmp_path):
    gpci = next(r for r in csv.DictReader((cms_dir / "pfs_gpci.csv").open(newline=""))
                if (r["mac"], r["locality"]) == ("01112", "05"))
    out = tmp_path / "out"
    proc = _cli("replay", str(EXAMPLE), "--out", str(out), "--rules-dir", str(cms_dir),
                "--pfs-locality", "01112-05")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(x) for x in (out / "charge_lines.ndjson").read_text().splitlines()]
    assert sorted(v["code"] for v in lines) == ["96372", "99213", "J0696"]
    assert (out / "alerts.ndjson").read_text() == ""
    allowance = round((0.17 * float(gpci["pw_gpci"]) + 0.25 * float(gpci["pe_gpci"])
                       + 0.01 * float(gpci["mp_gpci"])) * CF_2025, 2)
    injection = next(v for v in lines if v["code"] == "96372")
    assert injection["expected_reimbursement"] == round(
        allowance * _factor("commercial", "professional_factor"), 2)


def test_replay_command_refuses_a_malformed_or_unknown_locality(cms_dir, tmp_path):
    proc = _cli("replay", str(EXAMPLE), "--out", str(tmp_path / "a"), "--pfs-locality", "SF")
    assert proc.returncode != 0 and b"MAC-LOCALITY" in proc.stderr
    proc = _cli("replay", str(EXAMPLE), "--out", str(tmp_path / "b"), "--rules-dir",
                str(cms_dir), "--pfs-locality", "99999-99")
    assert proc.returncode != 0 and b"pfs_gpci.csv:0:locality" in proc.stderr
