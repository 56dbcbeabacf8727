"""Fixtures of the report tests: one generated, replayed dataset per session, and its
report rendered with and without the worklist (command line, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.report import dataset

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "report"


@pytest.fixture(scope="session")
def report_dataset(tmp_path_factory) -> dataset.Dataset:
    return dataset.build(tmp_path_factory.mktemp("report-data"))


def run_report(replay_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    first, last = dataset.PERIOD
    cmd = [sys.executable, "-m", "stream_app", "report", "--from", str(first), "--to", str(last),
           "--replay-dir", str(replay_dir), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, check=False)


@pytest.fixture(scope="session")
def aggregate_report(report_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(HTML, PDF) with default options."""
    d = tmp_path_factory.mktemp("report-aggregate")
    html, pdf = d / "report.html", d / "report.pdf"
    done = run_report(report_dataset.replay_dir, html, "--pdf", str(pdf))
    assert done.returncode == 0, done.stderr
    return html, pdf


@pytest.fixture(scope="session")
def worklist_report(report_dataset, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("report-worklist")
    html, pdf = d / "report.html", d / "report.pdf"
    done = run_report(report_dataset.replay_dir, html, "--pdf", str(pdf), "--worklist")
    assert done.returncode == 0, done.stderr
    return html, pdf
