"""The pages in a real browser (Debian's Chromium via Playwright) over the real stack: the
worker's alerts reach a biller's queue with the counts and dollars the compacted topics
hold, a correction produced to Kafka resolves the open item on screen without a reload,
a pharmacy user never sees a coding item, forms need their CSRF token, the back button
shows nothing after signing out, and the operations page charts what Prometheus scraped.

Expected figures come from the topics (last message per key), never from the service."""

from __future__ import annotations

import re
import time
from collections import Counter

import orjson
import psycopg
import pytest
import requests
from playwright.sync_api import expect

from stream_app.vocabulary import TOPIC_EM_SERVICES
from tests.broker.queue.support import produce, wait_until
from tests.broker.queue.test_worker_to_api import TOPIC_OF, office_visit
from tests.broker.queue_pages.conftest import Stack, Tab, run_async
from tests.support.kafka import make_unique_name
from tests.support.worker import metric_value

pytestmark = pytest.mark.integration


def money(v: float) -> str:
    return f"${v:,.2f}"


def open_alerts(alerts: dict[str, dict], queue: str) -> list[dict]:
    return [a for a in alerts.values() if a["work_queue"] == queue and a["state"] == "open"]


def produce_visit(stack: Stack, patient: str, *, modifiers: list[str], em_event: str, recorded_at=None):
    records = office_visit(patient, em_modifiers=modifiers, em_event=em_event, recorded_at=recorded_at)
    if modifiers:  # the amendment: only the corrected E/M service
        records = [r for r in records if r["event_type"] == "em.service"]
    run_async(
        lambda: produce(
            stack.bootstrap,
            [
                (
                    stack.prefix + (TOPIC_EM_SERVICES if modifiers else TOPIC_OF[r["event_type"]]),
                    patient.encode(),
                    orjson.dumps(r),
                )
                for r in records
            ],
        )
    )


def alert_of_patient(stack: Stack, patient: str) -> str:
    def find():
        with psycopg.connect(stack.db.admin_dsn) as conn:
            row = conn.execute(
                "SELECT alert_id FROM alert WHERE payload->>'patient_id' = %s AND state = 'open'", (patient,)
            ).fetchone()
        return row and row[0]

    return wait_until(find, 60, "the visit's alert in the database")


def cell_texts(tab: Tab, selector: str) -> list[str]:
    return tab.page.locator(selector).all_inner_texts()


def test_biller_works_the_queue_and_sees_a_correction_live(stack, tab_factory):
    patient = make_unique_name("P")
    produce_visit(stack, patient, modifiers=[], em_event=f"{patient}-em1")
    alert_id = alert_of_patient(stack, patient)
    alerts = stack.settle()
    coding = open_alerts(alerts, "coding")
    assert alert_id in {a["alert_id"] for a in coding}

    tab = tab_factory()
    tab.sign_in("biller")
    page = tab.page
    # The overview: only the biller's queue, with the topics' count and dollars.
    row = page.locator('tr[data-queue="coding"]')
    assert row.locator('[data-field="open_items"]').inner_text() == str(len(coding))
    assert row.locator('[data-field="dollars_at_risk"]').inner_text() == money(
        round(sum(a["revenue_at_risk"] for a in coding), 2)
    )
    assert page.locator("tr[data-queue]").count() == 1
    tab.screenshot("overview-biller")

    # The list, filtered by the commonest reason and sorted by dollars, smallest first.
    page.get_by_role("link", name="coding", exact=True).first.click()
    page.wait_for_url("**/queues/coding")
    assert page.locator('[data-field="total"]').inner_text() == str(len(coding))
    reason, n_reason = Counter(a["reason_code"] for a in coding).most_common(1)[0]
    page.get_by_label("Reason").select_option(reason)
    page.get_by_label("Sort by").select_option("dollars_at_risk")
    page.get_by_label("Order").select_option("asc")
    page.get_by_label("Per page").select_option("200")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r".*reason_code=.*"))
    assert page.locator('[data-field="total"]').inner_text() == str(n_reason)
    rows = page.locator("tbody tr[data-alert-id]")
    assert rows.count() == min(n_reason, 200)
    assert set(cell_texts(tab, "tbody tr[data-alert-id] td:nth-child(2)")) == {reason}
    shown = [
        float(t.strip("$").replace(",", "")) for t in cell_texts(tab, 'tbody [data-field="revenue_at_risk"]')
    ]
    assert shown == sorted(shown)
    expected = sorted(round(a["revenue_at_risk"], 2) for a in coding if a["reason_code"] == reason)
    assert shown == expected[: len(shown)]
    tab.screenshot("list")

    # The CSV export of the filtered list (the API's export, with the session cookie).
    cookies = {c["name"]: c["value"] for c in tab.context.cookies()}
    csv_url = page.get_by_role("link", name="Export these items as CSV").get_attribute("href")
    exported = requests.get(stack.url(csv_url), cookies=cookies, timeout=30)
    assert exported.status_code == 200 and exported.headers["Content-Type"].startswith("text/csv")
    assert len(exported.text.strip().splitlines()) == n_reason + 1

    # Search by the patient id, open the item, assign it to oneself, add a note.
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Alert, patient or encounter id").fill(patient)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r".*search=.*"))
    assert page.locator("tbody tr[data-alert-id]").count() == 1
    page.locator(f'tr[data-alert-id="{alert_id}"] a').click()
    page.wait_for_url(f"**/items/{alert_id}")
    assert page.locator("#item-status").get_attribute("data-status") == "new"
    page.get_by_role("button", name="Assign to me").click()
    page.wait_for_url("**done=assign")
    assert page.locator("#item-assignee").inner_text() == "biller"
    assert page.locator("#item-status").get_attribute("data-status") == "in_progress"
    page.get_by_label("Add a note").fill("Asked Dr. Lee to add modifier 25.")
    page.get_by_role("button", name="Add note").click()
    page.wait_for_url("**done=note")
    assert "Asked Dr. Lee to add modifier 25." in page.locator("#item-notes").inner_text()
    assert alerts[alert_id]["predicted_denial"]["carc"] in page.locator(".facts").inner_text()

    # The clinician amends the E/M with modifier 25: the open page shows it resolved.
    page.evaluate("window.__sameDocument = true")
    sent = time.monotonic()
    produce_visit(
        stack, patient, modifiers=["25"], em_event=f"{patient}-em2", recorded_at="2025-03-14T15:00:00Z"
    )
    expect(page.locator("#item-status")).to_have_attribute(
        "data-status", "resolved_by_correction", timeout=10_000
    )
    assert time.monotonic() - sent <= 10
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    assert "resolved by correction" in page.locator("#item-history").inner_text()
    tab.screenshot("item")
    assert tab.problems == []
    assert all(u.startswith(stack.url("/")) for u in tab.requests), "a request left the service"


def test_pharmacy_user_sees_no_coding_item(stack, tab_factory):
    alerts = stack.settle()
    coding_ids = {a["alert_id"] for a in alerts.values() if a["work_queue"] == "coding"}
    pharmacy_open = open_alerts(alerts, "pharmacy")
    assert coding_ids and pharmacy_open
    some_coding = sorted(coding_ids)[0]

    tab = tab_factory()
    tab.sign_in("pharm")
    page = tab.page
    assert [r.get_attribute("data-queue") for r in page.locator("tr[data-queue]").all()] == ["pharmacy"]
    assert page.locator('a[href="/queues/coding"]').count() == 0
    assert page.locator('tr[data-queue="pharmacy"] [data-field="open_items"]').inner_text() == str(
        len(pharmacy_open)
    )

    tab.goto("/queues/pharmacy?page_size=200&status=all")
    listed = {r.get_attribute("data-alert-id") for r in page.locator("tbody tr[data-alert-id]").all()}
    assert listed and not listed & coding_ids
    page.get_by_label("Alert, patient or encounter id").fill(some_coding)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r".*search=.*"))
    assert page.locator('[data-field="total"]').inner_text() == "0"
    assert some_coding not in page.locator("#list-live").inner_html()

    denied = [tab.goto(f"/items/{some_coding}"), tab.goto("/queues/coding")]
    for response in denied:
        assert response.status == 403
        assert page.get_by_role("heading", level=1).inner_text().startswith("Not allowed")
    assert some_coding not in page.content()
    # The typed URLs' 403 responses are the only errors the browser reports.
    assert [p for p in tab.problems if "status of 403" not in p] == []
    assert len(tab.problems) <= len(denied)


def test_form_without_csrf_token_is_refused(stack, tab_factory):
    alerts = stack.settle()
    alert_id = sorted(a["alert_id"] for a in open_alerts(alerts, "coding"))[0]
    tab = tab_factory()
    tab.sign_in("biller")
    tab.goto(f"/items/{alert_id}")
    page = tab.page
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    page.get_by_label("Add a note").fill("This note has no token.")
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Add note").click()
    assert nav.value.status == 403
    assert "refused" in page.locator("main").inner_text()
    with psycopg.connect(stack.db.admin_dsn) as conn:
        notes = conn.execute(
            "SELECT count(*) FROM alert_note WHERE body = 'This note has no token.'"
        ).fetchone()[0]
    assert notes == 0
    assert [p for p in tab.problems if "status of 403" not in p] == []


def test_back_button_after_sign_out_shows_nothing(stack, tab_factory):
    alerts = stack.settle()
    item = sorted(open_alerts(alerts, "coding"), key=lambda a: a["alert_id"])[0]
    tab = tab_factory()
    tab.sign_in("biller")
    tab.goto(f"/items/{item['alert_id']}")
    page = tab.page
    assert item["patient_id"] in page.locator("main").inner_text()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    page.go_back(wait_until="load")
    assert "/sign-in" in page.url
    text = page.locator("body").inner_text()
    assert item["patient_id"] not in text and item["message"] not in text
    assert page.get_by_role("button", name="Sign in").is_visible()
    assert tab.problems == []


def test_operations_page_charts_what_prometheus_scraped(stack, tab_factory):
    # A steady stream, so that the latest rate is comparable with the worker's counter.
    rate = 60
    producer = stack.generate(
        "--seed", "77", "--records", "3000", "--rate", str(rate), "--malformed-rate", "0.02", background=True
    )
    worker_metrics = f"http://127.0.0.1:{stack.worker.port}/metrics"

    def consumed() -> float:
        return metric_value(requests.get(worker_metrics, timeout=5).text, "chargecap_events_consumed_total")

    try:
        start = consumed()
        wait_until(lambda: consumed() > start + rate * 5, 60, "the worker to consume the steady stream")
        time.sleep(10)
        t0, c0 = time.monotonic(), consumed()
        time.sleep(16)
        t1, c1 = time.monotonic(), consumed()
        worker_rate = (c1 - c0) / (t1 - t0)

        tab = tab_factory()
        tab.sign_in("lead")
        tab.screenshot("overview")
        tab.goto("/operations?hours=1")
        page = tab.page
        expect(page.locator("#charts")).to_have_attribute("data-loaded", re.compile(".+"), timeout=30_000)
        assert producer.poll() is None, "the steady stream ended before the page read its rate"
    finally:
        if producer.poll() is None:
            producer.terminate()
        producer.wait(30)

    assert page.locator("#ops-errors").is_hidden(), page.locator("#ops-errors").inner_text()
    for chart in page.locator("section.chart").all():
        name = chart.get_attribute("data-chart")
        assert int(chart.locator(".plot").get_attribute("data-series")) > 0, f"{name} has no data"
        assert chart.locator("canvas").count() == 1, f"{name} drew no chart"
    page_rate = float(page.locator("#latest-throughput").get_attribute("data-latest-total"))
    assert abs(page_rate - worker_rate) <= 0.10 * worker_rate, (page_rate, worker_rate)
    tab.screenshot("operations")
    assert tab.problems == []
    assert all(u.startswith(stack.url("/")) for u in tab.requests), "a request left the service"
