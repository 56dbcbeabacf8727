"""MUE_EXCEEDED, FREQUENCY_LIMIT and DUPLICATE_SERVICE (contract.md §3; billing-rules.md §5)."""

from __future__ import annotations

import pytest

from stream_app import vocabulary as V
from tests.engine.builders import DROP, NPI_2, admin_raw, at, rules_dir_with, run

FIVE = ["ceftriaxone", "ketorolac", "dexamethasone", "promethazine", "b12"]


def _injections(n: int, **kw) -> list[dict]:
    return [admin_raw(record_id=f"r{i}", time=f"{9 + i:02d}:00", drug=FIVE[i], **kw)
            for i in range(n)]


def _by_record(records, res, code) -> dict[str, dict]:
    ev = {r["event_id"]: r["record_id"] for r in records}
    out = {}
    for ln in res.lines:
        if ln["code"] == code:
            out[ev[ln["source_event_ids"][0]]] = ln
    return out


def _set_mue(code: str, value: str, mai: str):
    def edit(rows):
        rows = [r for r in rows if r[0] != code]
        rows.append([code, value, mai, "test override", "", ""])
        return rows
    return edit


# ---------------------------------------------------------------- MUE_EXCEEDED


def test_four_96372_lines_are_within_the_mue():
    res = run(_injections(4))
    assert res.alerts == []


def test_fifth_96372_line_is_warned_mai_1():
    recs = _injections(5)
    res = run(list(reversed(recs)))  # arrival order does not decide which is the excess
    alert = res.alert(V.MUE_EXCEEDED)
    assert alert["severity"] == "warn" and alert["code"] == "96372"
    assert alert["predicted_denial"]["carc"] == "CO-151"
    lines = _by_record(recs, res, "96372")
    assert len(lines) == 5  # warn: nothing held
    assert {k: v["warnings"] for k, v in lines.items()} == {
        "r0": [], "r1": [], "r2": [], "r3": [], "r4": [V.MUE_EXCEEDED]}
    assert lines["r4"]["denial_risk"] == 0.5
    # MUE concerns only the excess 96372 line, not the record's drug line
    assert res.line("J3420")["warnings"] == []


def test_mai_2_blocks_only_the_excess_lines(tmp_path):
    d = rules_dir_with(tmp_path, "mue.csv", _set_mue("96372", "2", "2 Date of Service Edit: Policy"))
    recs = _injections(4)
    res = run(recs, rules_dir=d)
    alert = res.alert(V.MUE_EXCEEDED)
    assert alert["severity"] == "block"
    excess = alert["details"]["excess_line_ids"]
    assert len(excess) == 2 and not set(excess) & {ln["line_id"] for ln in res.lines}
    assert sorted(_by_record(recs, res, "96372")) == ["r0", "r1"]
    # only the excess administration lines are held; every drug line stays active
    assert sorted(ln["code"] for ln in res.lines if ln["code"].startswith("J")) == \
        ["J0696", "J1100", "J1885", "J2550"]


def test_mai_3_blocks_too(tmp_path):
    d = rules_dir_with(tmp_path, "mue.csv", _set_mue("96372", "1", "3 Date of Service Edit: Clinical"))
    recs = _injections(2)
    res = run(recs, rules_dir=d)
    assert res.alert(V.MUE_EXCEEDED)["severity"] == "block"
    assert sorted(_by_record(recs, res, "96372")) == ["r0"]


def test_mue_sums_units_not_lines(tmp_path):
    # one 96366 line of 3 units (211-minute infusion) against an MUE of 2, MAI 3
    d = rules_dir_with(tmp_path, "mue.csv", _set_mue("96366", "2", "3"))
    res = run([admin_raw(route="IV_INFUSION", time="08:00", ended_at=at("11:31"),
                         drug="ondansetron")], rules_dir=d)
    alert = res.alert(V.MUE_EXCEEDED)
    assert alert["code"] == "96366" and alert["details"]["units"] == 3
    assert "96366" not in res.codes()
    assert "96365" in res.codes()


def test_held_lines_count_towards_the_mue():
    recs = _injections(5)
    recs[0]["diagnosis_codes"] = []  # r0 held by MISSING_DIAGNOSIS, still counted
    res = run(recs)
    assert sorted(res.reasons()) == sorted([V.MISSING_DIAGNOSIS, V.MUE_EXCEEDED])
    assert _by_record(recs, res, "96372")["r4"]["warnings"] == [V.MUE_EXCEEDED]


def test_withdrawn_records_do_not_count_towards_the_mue():
    recs = _injections(5)
    wd = {**recs[2], "event_id": "ev-wd", "status": "entered-in-error",
          "recorded_at": at("23:00")}
    res = run(recs + [wd])
    assert res.alerts == []
    assert len(_by_record(recs, res, "96372")) == 4


def test_blocked_duplicates_do_not_count_towards_the_mue():
    recs = _injections(4)
    dup = admin_raw(record_id="dup", time="09:03", drug="ceftriaxone", rendering_npi=NPI_2)
    res = run(recs + [dup])
    assert res.reasons() == [V.DUPLICATE_SERVICE]


# ---------------------------------------------------------------- FREQUENCY_LIMIT

B12_MEDICARE = {"drug": "b12", "payer_class": "medicare"}


def _j3420_warnings(records, res) -> dict[str, list[str]]:
    return {k: v["warnings"] for k, v in _by_record(records, res, "J3420").items()}


@pytest.mark.parametrize("later", ["2025-03-02", "2025-03-14", "2025-03-30"])
def test_medicare_j3420_twice_within_30_days_warns_the_later(later):
    recs = [admin_raw(record_id="first", day="2025-03-01", **B12_MEDICARE),
            admin_raw(record_id="second", day=later, **B12_MEDICARE)]
    res = run(list(reversed(recs)))
    alert = res.alert(V.FREQUENCY_LIMIT)
    assert alert["severity"] == "warn" and alert["service_date"] == later
    assert alert["predicted_denial"]["carc"] == "CO-119"
    assert _j3420_warnings(recs, res) == {"first": [], "second": [V.FREQUENCY_LIMIT]}
    assert all(ln["warnings"] == [] for ln in res.lines if ln["code"] == "96372")


def test_medicare_j3420_31_days_apart_is_fine():
    recs = [admin_raw(record_id="first", day="2025-03-01", **B12_MEDICARE),
            admin_raw(record_id="second", day="2025-04-01", **B12_MEDICARE)]
    res = run(recs)
    assert res.alerts == []


def test_medicare_j3420_30_days_apart_is_outside_the_window():
    # Spec silent on the window edge; engine choice: "per 30 days" is a rolling window of
    # 30 calendar days ending on the service date, so day 1 and day 31 are apart enough.
    recs = [admin_raw(record_id="first", day="2025-03-01", **B12_MEDICARE),
            admin_raw(record_id="second", day="2025-03-31", **B12_MEDICARE)]
    assert run(recs).alerts == []


def test_frequency_limit_is_per_payer_class():
    recs = [admin_raw(record_id="first", day="2025-03-01", drug="b12"),
            admin_raw(record_id="second", day="2025-03-14", drug="b12")]  # commercial
    assert run(recs).alerts == []


def test_frequency_limit_same_day_twice():
    recs = [admin_raw(record_id="first", time="09:00", **B12_MEDICARE),
            admin_raw(record_id="second", time="15:00", **B12_MEDICARE)]
    res = run(recs)
    assert _j3420_warnings(recs, res) == {"first": [], "second": [V.FREQUENCY_LIMIT]}


def test_blocking_frequency_limit_holds_only_the_excess_drug_line():
    # medicare J0585 1 per 84 days, severity block in rules/frequency_limits.csv
    botox = {"drug": "botox", "payer_class": "medicare"}
    recs = [admin_raw(record_id="first", day="2025-01-10", **botox),
            admin_raw(record_id="second", day="2025-03-14", **botox)]
    res = run(recs)
    alert = res.alert(V.FREQUENCY_LIMIT)
    assert alert["severity"] == "block" and alert["service_date"] == "2025-03-14"
    assert sorted(_by_record(recs, res, "J0585")) == ["first"]
    assert sorted(_by_record(recs, res, "96372")) == ["first", "second"]


# ---------------------------------------------------------------- DUPLICATE_SERVICE


def test_same_ndc_by_two_providers_4_minutes_apart_blocks_the_later():
    recs = [admin_raw(record_id="a", time="09:20"),
            admin_raw(record_id="b", time="09:24", rendering_npi=NPI_2, performer_id="nurse-9")]
    res = run(list(reversed(recs)))
    alert = res.alert(V.DUPLICATE_SERVICE)
    assert recs[1]["event_id"] in alert["source_event_ids"]
    assert alert["predicted_denial"]["carc"] == "CO-18"
    assert sorted(_by_record(recs, res, "96372")) == ["a"]
    assert sorted(_by_record(recs, res, "J0696")) == ["a"]


def test_exactly_5_minutes_apart_is_a_duplicate():
    # "within 5 minutes of each other": engine treats 5:00 as within (inclusive)
    recs = [admin_raw(record_id="a", time="09:20"), admin_raw(record_id="b", time="09:25")]
    assert run(recs).reasons() == [V.DUPLICATE_SERVICE]


def test_6_minutes_apart_is_not_a_duplicate():
    recs = [admin_raw(record_id="a", time="09:20"),
            admin_raw(record_id="b", time="09:26", rendering_npi=NPI_2)]
    res = run(recs)
    assert res.alerts == []
    assert _by_record(recs, res, "96372")["b"]["modifiers"] == ["77"]


@pytest.mark.parametrize("arrival", [0, 1])
def test_duplicate_tie_on_occurred_at_blocks_the_larger_record_id(arrival):
    recs = [admin_raw(record_id="mar-a", time="09:20"),
            admin_raw(record_id="mar-b", time="09:20", rendering_npi=NPI_2)]
    res = run(recs if arrival == 0 else list(reversed(recs)))
    assert res.reasons() == [V.DUPLICATE_SERVICE]
    assert recs[1]["event_id"] in res.alert(V.DUPLICATE_SERVICE)["source_event_ids"]
    assert sorted(_by_record(recs, res, "96372")) == ["mar-a"]


def test_duplicate_by_name_when_there_is_no_ndc():
    recs = [admin_raw(record_id="a", time="09:20", drug={"ndc": DROP}),
            admin_raw(record_id="b", time="09:22", drug={"ndc": DROP, "name": "CEFTRIAXONE"})]
    res = run(recs, settle=False)  # before settling: no MISSING_NDC yet
    assert res.reasons() == [V.DUPLICATE_SERVICE]


def test_same_ndc_under_another_name_is_a_duplicate():
    recs = [admin_raw(record_id="a", time="09:20"),
            admin_raw(record_id="b", time="09:21", drug={"name": "Rocephin"})]
    assert run(recs).reasons() == [V.DUPLICATE_SERVICE]


def test_different_drugs_a_minute_apart_are_not_duplicates():
    recs = [admin_raw(record_id="a", time="09:20"),
            admin_raw(record_id="b", time="09:21", drug="ketorolac")]
    assert run(recs).alerts == []


def test_withdrawing_the_first_releases_the_duplicate():
    a = admin_raw(record_id="a", time="09:20", recorded_at=at("09:21"))
    b = admin_raw(record_id="b", time="09:23", rendering_npi=NPI_2)
    wd = {**a, "event_id": "ev-wd-a", "status": "entered-in-error", "recorded_at": at("12:00")}
    res = run([a, b, wd])
    assert res.alerts == []
    assert sorted(_by_record([a, b], res, "96372")) == ["b"]
    assert _by_record([a, b], res, "96372")["b"]["modifiers"] == []


def test_same_drug_across_midnight_is_not_a_duplicate():
    # Engine choice: the contract says "within 5 minutes"; billing-rules.md §5 says "on the
    # same date". The engine checks duplicates within one patient-day (one claim date),
    # so 23:58 and 00:02 (facility time) on two dates are both billed (76 is not needed:
    # they are on different days).
    recs = [admin_raw(record_id="a", occurred_at="2025-03-14T23:58:00-05:00"),
            admin_raw(record_id="b", occurred_at="2025-03-15T00:02:00-05:00",
                      rendering_npi=NPI_2)]
    res = run(recs)
    assert res.alerts == []
    assert sorted(ln["service_date"] for ln in res.lines if ln["code"] == "96372") == \
        ["2025-03-14", "2025-03-15"]
