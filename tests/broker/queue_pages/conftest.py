"""One shared stack per module: real Kafka topics, PostgreSQL, the worker, the queue
service (sink + API + pages), Prometheus scraping both, and Debian's Chromium."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream_app.vocabulary import TOPIC_CHARGE_LINES, TOPIC_CORRECTION_ALERTS, WORK_QUEUES
from tests.broker.queue.support import Worker, db_latest, last_per_key
from tests.queue.pg import REPO, QueueDb, create_queue_db, drop_queue_db, pg_server  # noqa: F401 - fixture
from tests.queue.service import QueueService, add_user, chargecap
from tests.support.kafka import delete_topics_with_prefix, make_unique_name
from tests.support.prometheus import Prometheus, ensure_prometheus

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "queue"
LAPTOP = {"width": 1280, "height": 800}
PASSWORDS = {
    "biller": "biller-password-pages-1",
    "pharm": "pharm-password-pages-1",
    "lead": "lead-password-pages-1",
}


def run_async(make_coroutine):
    """Runs a coroutine to its end on a thread of its own: Playwright's sync API keeps an
    event loop running on the test's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    db: QueueDb
    worker: Worker
    service: QueueService
    prometheus: Prometheus
    tmp: Path

    def url(self, path: str) -> str:
        return self.service.url(path)

    def generate(self, *args: str, background: bool = False):
        cmd = [
            "generate",
            *args,
            "--produce",
            "--broker",
            f"kafka://{self.bootstrap}",
            "--topic-prefix",
            self.prefix,
        ]
        if background:
            return subprocess.Popen(
                [sys.executable, "-m", "stream_app", *cmd],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        done = chargecap(*cmd, timeout=300)
        assert done.returncode == 0, done.stderr
        return done

    def topics_view(self) -> tuple[dict, dict]:
        async def both():
            return (
                await last_per_key(self.bootstrap, self.prefix + TOPIC_CORRECTION_ALERTS, "alert_id"),
                await last_per_key(self.bootstrap, self.prefix + TOPIC_CHARGE_LINES, "line_id"),
            )

        return run_async(both)

    def settle(self, timeout: float = 240) -> dict[str, dict]:
        """Waits until the worker's output stops changing and the database holds exactly
        its last message per key; the alerts of the compacted topic, by alert id."""
        deadline = time.monotonic() + timeout
        while True:
            first = self.topics_view()
            time.sleep(3)
            second = self.topics_view()
            in_db = (db_latest(self.db, "alert", "alert_id"), db_latest(self.db, "charge_line", "line_id"))
            if first == second and second[0] and in_db == second:
                return second[0]
            assert time.monotonic() < deadline, "the database never equalled the settled topics"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, pg_server, tmp_path_factory):  # noqa: F811 - pg_server is the fixture
    from stream_app.topics import apply_topics

    binary, why = ensure_prometheus()
    assert binary, f"Prometheus is required (make prometheus): {why}"
    tmp = tmp_path_factory.mktemp("queue-pages")
    prefix = make_unique_name("t") + "."
    run_async(lambda: apply_topics(kafka_bootstrap, prefix))
    db = create_queue_db(*pg_server)
    add_user(db, "biller", "coding", PASSWORDS["biller"])
    add_user(db, "pharm", "pharmacy", PASSWORDS["pharm"])
    add_user(db, "lead", ",".join(WORK_QUEUES), PASSWORDS["lead"])
    worker = Worker(tmp, kafka_bootstrap, make_unique_name("app"), prefix)
    service = QueueService(
        tmp,
        db,
        command="run",
        extra=[
            "--broker",
            f"kafka://{kafka_bootstrap}",
            "--topic-prefix",
            prefix,
            "--sink-group",
            make_unique_name("sink"),
        ],
    )
    # Prometheus scrapes the worker and the service; the pages read from it.
    prometheus = Prometheus(tmp, [f"127.0.0.1:{worker.port}", f"127.0.0.1:{service.port}"], binary=binary)
    service.args += ["--prometheus-url", prometheus.url(""), "--prometheus-scrape-seconds", "1"]
    stack = Stack(kafka_bootstrap, prefix, db, worker, service, prometheus, tmp)
    try:
        worker.start()
        service.start()
        prometheus.start()
        worker.wait_ready()
        service.wait_ready()
        stack.generate(
            "--seed",
            "21",
            "--records",
            "1500",
            "--amend-rate",
            "0.05",
            "--malformed-rate",
            "0.02",
            "--rate",
            "0",
        )
        stack.settle()
        yield stack
    finally:
        service.stop()
        worker.stop()
        prometheus.stop()
        drop_queue_db(db)
        run_async(lambda: delete_topics_with_prefix(kafka_bootstrap, prefix))


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


class Tab:
    """A browser tab of its own context (cookies), collecting console errors."""

    def __init__(self, browser, stack: Stack):
        self.context = browser.new_context(viewport=LAPTOP)
        self.page = self.context.new_page()
        self.stack = stack
        self.problems: list[str] = []
        self.page.on(
            "console", lambda m: self.problems.append(f"{m.type}: {m.text}") if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))

    def goto(self, path: str):
        return self.page.goto(self.stack.url(path), wait_until="load")

    def sign_in(self, user: str) -> None:
        self.goto("/queues")
        assert "/sign-in" in self.page.url
        self.page.get_by_label("User name").fill(user)
        self.page.get_by_label("Password").fill(PASSWORDS[user])
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url("**/queues")

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab_factory(browser, stack):
    tabs: list[Tab] = []

    def make() -> Tab:
        tabs.append(Tab(browser, stack))
        return tabs[-1]

    yield make
    for t in tabs:
        t.close()
