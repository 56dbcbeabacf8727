"""The report as a document: it opens in Debian's headless Chromium without console errors
(screenshots of page 1 and of one chart under test-artifacts/report/), `--pdf` has the
pages of Chromium's own print of the HTML, it needs no network, and privacy holds: by
default no patient, encounter or record id of the input is in the HTML or the PDF; with
`--worklist` they are, and page 1 says the file contains PHI.

Chromium is Debian's `chromium` package (`make chromium`), driven through Playwright with
`executable_path`; no browser is downloaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.report.conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LETTER_VIEWPORT = {"width": 816, "height": 1056}  # 8.5 x 11 in at 96 px per inch


def _pdf_pages(path: Path) -> int:
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


def _pdf_text(path: Path, first: int | None = None, last: int | None = None) -> str:
    cmd = ["pdftotext", "-layout"]
    if first:
        cmd += ["-f", str(first), "-l", str(last or first)]
    return subprocess.run([*cmd, str(path), "-"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is required: make chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _open(browser, html: Path):
    page = browser.new_page(viewport=LETTER_VIEWPORT)
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.resolve().as_uri(), wait_until="load")
    return page, problems, requests


def test_opens_in_chromium_without_console_errors(browser, aggregate_report):
    html, _ = aggregate_report
    page, problems, requests = _open(browser, html)
    try:
        assert problems == []
        assert requests == [html.resolve().as_uri()]  # self-contained: nothing else fetched
        assert page.locator("figure svg").count() >= 17  # every chart drawn inline
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        first = ARTIFACTS / "page-1.png"
        page.screenshot(path=str(first))  # the viewport is the first Letter page
        chart = ARTIFACTS / "chart-by-reason.png"
        page.locator("#chart-by_reason").screenshot(path=str(chart))
        for png in (first, chart):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    finally:
        page.close()


def test_pdf_has_the_pages_of_chromiums_print_of_the_html(browser, aggregate_report):
    html, pdf = aggregate_report
    page, problems, _ = _open(browser, html)
    try:
        printed = ARTIFACTS / "chromium-print.pdf"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.pdf(path=str(printed), prefer_css_page_size=True)
    finally:
        page.close()
    assert problems == []
    assert _pdf_pages(pdf) == _pdf_pages(printed) > 5


def _ids_of_input(input_path: Path) -> set[str]:
    ids = set()
    with open(input_path, "rb") as fh:
        for raw in fh:
            rec = orjson.loads(raw)
            for name in ("patient_id", "encounter_id", "record_id"):
                if rec.get(name):
                    ids.add(rec[name])
    return ids


def _ids_in(text: str, ids: set[str]) -> set[str]:
    return {tok for tok in re.findall(r"[A-Za-z0-9][A-Za-z0-9_.:-]*[A-Za-z0-9]", text) if tok in ids}


def _diagnoses_of_input(input_path: Path) -> set[str]:
    codes = set()
    with open(input_path, "rb") as fh:
        for raw in fh:
            codes.update(orjson.loads(raw).get("diagnosis_codes") or [])
    return codes


def test_default_report_has_no_ids_and_no_diagnoses(report_dataset, aggregate_report):
    html, pdf = aggregate_report
    ids = _ids_of_input(report_dataset.input_path)
    assert len(ids) > 1000
    html_text, pdf_text = html.read_text(encoding="utf-8"), _pdf_text(pdf)
    assert "Aggregates only" in _pdf_text(pdf, 1)
    for text in (html_text, pdf_text):
        assert _ids_in(text, ids) == set()
        # ICD-10-CM codes of the input (letter, digits, a dot): none is printed
        dx = {c for c in _diagnoses_of_input(report_dataset.input_path) if "." in c}
        assert not [c for c in dx if re.search(rf"(?<![\w.]){re.escape(c)}(?![\w.])", text)]
    assert "PHI" not in _pdf_text(pdf, 1)


def test_worklist_lists_ids_and_says_phi_on_page_one(report_dataset, worklist_report):
    html, pdf = worklist_report
    ids = _ids_of_input(report_dataset.input_path)
    html_text, pdf_text = html.read_text(encoding="utf-8"), _pdf_text(pdf)
    open_alerts = [orjson.loads(x) for x in open(report_dataset.replay_dir / "alerts.ndjson", "rb")]
    in_period = [a for a in open_alerts if a["state"] == "open"
                 and "2025-03-10" <= a["service_date"] <= "2025-03-16"]
    for text in (html_text, pdf_text):
        found = _ids_in(text, ids)
        assert {a["patient_id"] for a in in_period} <= found
        assert {a["encounter_id"] for a in in_period if a["encounter_id"]} <= found
        assert any(i.startswith("mar-") for i in found)  # record ids, in the items' messages
    assert "CONTAINS PHI" in _pdf_text(pdf, 1)
