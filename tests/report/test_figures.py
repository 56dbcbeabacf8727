"""Every figure of the report's summary, denial-risk, audit and where-to-act tables, read
back from the HTML, equals the count made independently (tests/report/dataset.py): from
the replay files recounted in plain Python, and per reason from the generator's record
of what it injected."""

from __future__ import annotations

import pytest

from tests.report import dataset
from tests.report.html_tables import tables

PERIOD, PREVIOUS = dataset.PERIOD, dataset.PREVIOUS


@pytest.fixture(scope="module")
def shown(aggregate_report) -> dict[str, list[list]]:
    return tables(aggregate_report[0].read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def counts(report_dataset) -> dataset.OutputCounts:
    return dataset.OutputCounts(report_dataset.replay_dir)


@pytest.fixture(scope="module")
def injected(report_dataset) -> dataset.LabelExpectations:
    return dataset.from_labels(report_dataset.stream, PERIOD)


def _approx(row):
    return [pytest.approx(x, abs=0.0005) if isinstance(x, float) else x for x in row]


def _keyed(rows, width=1) -> dict:
    return {tuple(r[:width]) if width > 1 else r[0]: r[width:] for r in rows}


def test_the_dataset_has_something_to_audit(counts, injected):
    assert len(counts.lines_in(PERIOD)) > 1000 and len(counts.alerts_in(PERIOD)) > 100
    assert len(counts.lines_in(PREVIOUS)) > 1000
    assert len(injected.by_reason) >= 12  # most reason codes of the generator's kinds


def test_summary_by_payer_class(shown, counts):
    expected = counts.summary(PERIOD)
    got = _keyed(shown["summary"])
    assert set(got) == set(expected)
    for payer, row in expected.items():
        assert got[payer] == _approx(list(row)), payer


def test_summary_against_the_previous_period(shown, counts):
    cur, prev = counts.summary(PERIOD)["all"], counts.summary(PREVIOUS)["all"]
    rows = shown["summary_previous"]
    assert [r[0] for r in rows] == ["Lines validated", "Never held", "First-pass clean rate",
                                    "Alerts opened", "Alerts resolved", "At risk now",
                                    "Recovered", "Expected reimbursement"]
    for r, a, b in zip(rows, cur, prev, strict=True):
        assert r[1:3] == _approx([a, b]), r[0]
    assert cur[0] != prev[0]  # the two periods really are different data


def test_alerts_by_reason_match_the_outputs_and_the_injected_problems(shown, counts, injected):
    got = _keyed(shown["by_reason"], 2)
    assert got == {k: _approx(list(v)) for k, v in counts.by_reason(PERIOD).items()}
    per_reason = {}
    for (reason, _queue), row in got.items():
        per_reason[reason] = per_reason.get(reason, 0) + row[0]
    # Every injected problem still present at the end is an alert of its reason. The
    # generator's facility encounters also raise FACILITY_SETTING on unlabelled records for
    # some payer classes, and a missing NDC can follow from dispense matching of another
    # record: for those two the injected count is a floor, for every other reason exact.
    for reason, n in injected.by_reason.items():
        if reason in ("FACILITY_SETTING", "MISSING_NDC"):
            assert per_reason.get(reason, 0) >= n, reason
        else:
            assert per_reason.get(reason, 0) == n, reason


def test_alerts_by_work_queue_and_carc(shown, counts):
    assert _keyed(shown["by_queue"]) == {k: _approx(list(v)) for k, v in counts.by_queue(PERIOD).items()}
    assert _keyed(shown["by_carc"]) == {k: _approx(list(v)) for k, v in counts.by_carc(PERIOD).items()}


def test_denial_risk_distribution_of_active_lines(shown, counts):
    got = {r[0]: r[1] for r in shown["risk_distribution"]}
    expected = counts.risk_distribution(PERIOD)
    assert got == {label: expected.get(label, 0) for label in got}
    assert sum(got.values()) == sum(expected.values())


def test_ndc_completeness_by_hcpcs(shown, counts, injected):
    got = _keyed(shown["ndc"])
    assert got == {k: _approx(list(v)) for k, v in counts.ndc(PERIOD).items()}
    assert sum(r[1] for r in got.values()) >= injected.by_reason["INVALID_NDC"]


def test_jw_jz_on_medicare_single_dose_drugs(shown, counts, injected):
    got = _keyed(shown["jwjz"])
    assert got == {k: _approx(list(v)) for k, v in counts.jwjz(PERIOD).items()}
    assert sum(r[2] for r in got.values()) == injected.by_reason["WASTE_MODIFIER_MISSING"]
    assert sum(r[0] for r in got.values()) > 0  # JZ lines exist to compare against


def test_modifier_usage_against_alerts(shown, counts, injected):
    got = _keyed(shown["modifiers"])
    assert got == {k: _approx(list(v)) for k, v in counts.modifiers(PERIOD).items()}
    assert got["25"][1] == injected.modifier_25_alerts
    assert got["59"][0] > 0 and got["76"][0] + got["77"][0] > 0  # repeat_same_drug derives 76/77


def test_frequency_and_mue_hits(shown, counts):
    expected = counts.frequency_mue(PERIOD)
    assert _keyed(shown["frequency_mue"], 3) == {k: _approx(list(v)) for k, v in expected.items()}


def test_duplicates(shown, counts, injected):
    got = _keyed(shown["duplicates"])
    assert got == {k: _approx(list(v)) for k, v in counts.duplicates(PERIOD).items()}
    assert sum(r[0] for r in got.values()) == injected.by_reason["DUPLICATE_SERVICE"]


def test_documentation_gaps_by_missing_field(shown, counts, injected):
    got = _keyed(shown["documentation"])
    assert got == {k: _approx(list(v)) for k, v in counts.documentation(PERIOD).items()}
    for field, n in injected.missing_fields.items():
        assert got[field][0] == n, field


def test_99211_same_day_conflicts(shown, counts, injected):
    got = _keyed(shown["em99211"])
    assert got == {k: _approx(list(v)) for k, v in counts.em99211(PERIOD).items()}
    for payer, n in injected.em99211_by_payer.items():
        assert got[payer][0] == n, payer
    assert got["all"][0] == sum(injected.em99211_by_payer.values())


def test_where_to_act(shown, counts):
    for key, expected in (("top_npis", counts.top_npis(PERIOD)),
                          ("top_drugs", counts.top_drugs(PERIOD))):
        assert shown[key] == [_approx(list(r)) for r in expected], key
    assert len(shown["top_npis"]) == 10 and len(shown["top_drugs"]) == 10


def test_replay_cannot_know_resolution_times(shown, aggregate_report):
    # a replay's outputs carry no clock: the table says so rather than inventing times
    assert all(r[3] is None and r[4] is None for r in shown["resolution"])
    assert "carry no clock" in aggregate_report[0].read_text(encoding="utf-8")
