"""Test helpers: the queue service as a real subprocess, users made by the real CLI, alerts
and charge lines written by the sink's own batch writer, contract-shaped records."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import requests

from stream_app.queue.sink import Batch, alert_row, line_row, write_batch

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chargecap(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_app", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def add_user(db, name: str, queues: str, password: str) -> None:
    r = chargecap(
        "queue", "user", "add", name, "--queues", queues, "--admin-dsn", db.admin_dsn, stdin=password + "\n"
    )
    assert r.returncode == 0, r.stderr


class QueueService:
    """`python -m stream_app queue serve|sink|run` with its log in a file."""

    def __init__(
        self,
        tmp_path: Path,
        db,
        command: str = "serve",
        extra: list[str] | None = None,
        name: str | None = None,
    ):
        self.port = free_port()
        self.log_path = Path(tmp_path) / f"{name or command}-{self.port}.log"
        self.args = [
            sys.executable,
            "-m",
            "stream_app",
            "queue",
            command,
            "--dsn",
            db.dsn,
            "--listen",
            f"127.0.0.1:{self.port}",
            *(extra or []),
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> QueueService:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 30) -> QueueService:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"queue service exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url("/healthz"), timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"queue service not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        return self.proc.returncode if self.proc else None


def sign_in(service: QueueService, username: str, password: str) -> tuple[requests.Session, str]:
    """A requests session with the cookie set, and the session's CSRF token."""
    s = requests.Session()
    r = s.post(service.url("/api/v1/session"), json={"username": username, "password": password}, timeout=10)
    assert r.status_code == 200, r.text
    return s, r.json()["csrf_token"]


# ----------------------------------------------------------------------------- records


def alert(
    alert_id: str,
    revision: int = 1,
    *,
    state: str = "open",
    queue: str = "coding",
    reason: str = "EM_MISSING_MODIFIER_25",
    payer: str = "medicare",
    dollars: float = 10.0,
    service_date: str = "2025-03-14",
    line_id: str | None = None,
    sources: tuple[str, ...] = ("ev-1",),
    severity: str = "block",
) -> dict:
    """A correction alert shaped as contract.md §3 shows it."""
    return {
        "alert_id": alert_id,
        "revision": revision,
        "state": state,
        "final": False,
        "reason_code": reason,
        "severity": severity,
        "work_queue": queue,
        "message": f"E/M 99213 on the same day as injection 96372 needs modifier 25 ({alert_id})",
        "suggested_fix": "Append modifier 25 to 99213",
        "predicted_denial": {"carc": "CO-97", "rarc": None},
        "patient_id": "P1",
        "encounter_id": "E1",
        "service_date": service_date,
        "payer_class": payer,
        "code": "99213",
        "line_id": line_id or f"line-{alert_id}",
        "revenue_at_risk": dollars,
        "source_event_ids": list(sources),
        "details": {},
    }


def charge_line(
    line_id: str,
    revision: int = 1,
    *,
    state: str = "active",
    npi: str = "1234567893",
    payer: str = "medicare",
    sources: tuple[str, ...] = ("ev-1",),
    code: str = "96372",
) -> dict:
    return {
        "line_id": line_id,
        "revision": revision,
        "state": state,
        "final": False,
        "patient_id": "P1",
        "encounter_id": "E1",
        "service_date": "2025-03-14",
        "place_of_service": "11",
        "payer_class": payer,
        "code": code,
        "modifiers": [],
        "units": 1,
        "ndc": None,
        "ndc_qualifier": None,
        "ndc_quantity": None,
        "ndc_unit": None,
        "diagnosis_codes": ["J18.9"],
        "rendering_npi": npi,
        "source_event_ids": list(sources),
        "expected_reimbursement": 14.5,
        "denial_risk": 0.0,
        "warnings": [],
    }


def write(
    dsn: str, alerts: list[tuple[dict, datetime]] = (), lines: list[tuple[dict, datetime]] = ()
) -> None:
    """Writes records the way the sink does (one batch, one transaction)."""
    batch = Batch(
        alerts=[alert_row(orjson.dumps(a), ts) for a, ts in alerts],
        lines=[line_row(orjson.dumps(x), ts) for x, ts in lines],
    )

    async def go():
        conn = await psycopg.AsyncConnection.connect(dsn)
        try:
            await write_batch(conn, batch)
        finally:
            await conn.close()

    asyncio.run(go())


def ago(**kw) -> datetime:
    return datetime.now(UTC) - timedelta(**kw)
