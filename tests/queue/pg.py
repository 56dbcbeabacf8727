"""PostgreSQL for the queue tests, started the way the Kafka fixture starts its broker.

* ``pg_server`` (session): ``(host, port)`` of a real PostgreSQL. Port ``PG_PORT`` (default
  55432). Reuses a server already answering there (and then never stops it); otherwise
  starts ``deploy/postgres-local/pg.sh up`` (which installs Debian's package when missing)
  and stops it at the end of the session. If none can be had the tests fail, never skip.
* ``queue_db`` (function): a fresh database with the migrations applied; its
  ``admin_dsn`` (schema owner) and ``dsn`` (the service's login role, chargecap_queue,
  with only the migrations' grants). Dropped afterwards.

Imported by the conftest.py of tests/queue/ and tests/broker/queue/.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

REPO = Path(__file__).resolve().parents[2]
PG_SH = REPO / "deploy" / "postgres-local" / "pg.sh"
SERVICE_LOGIN = "chargecap_queue"


def pg_answers(host: str, port: int) -> bool:
    try:
        with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_server():
    host, port = "127.0.0.1", int(os.environ.get("PG_PORT", "55432"))
    if pg_answers(host, port):
        yield host, port  # someone else's server: use it, never stop it
        return
    env = {**os.environ, "PG_PORT": str(port)}
    started = subprocess.run(["bash", str(PG_SH), "up"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0 or not pg_answers(host, port):
        pytest.fail(f"could not start the local PostgreSQL ({PG_SH} up):\n{started.stdout}\n{started.stderr}")
    try:
        yield host, port
    finally:
        subprocess.run(["bash", str(PG_SH), "down"], env=env, capture_output=True, timeout=120)


@dataclass(frozen=True)
class QueueDb:
    host: str
    port: int
    name: str

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.name}"

    @property
    def dsn(self) -> str:
        return f"postgresql://{SERVICE_LOGIN}@{self.host}:{self.port}/{self.name}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)


def create_queue_db(host: str, port: int) -> QueueDb:
    from stream_app.queue.schema import migrate

    name = f"q_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (SERVICE_LOGIN,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(SERVICE_LOGIN)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = QueueDb(host, port, name)
    migrate(db.admin_dsn, [SERVICE_LOGIN])
    return db


def drop_queue_db(db: QueueDb) -> None:
    with psycopg.connect(
        host=db.host, port=db.port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name)))


@pytest.fixture
def queue_db(pg_server):
    db = create_queue_db(*pg_server)
    try:
        yield db
    finally:
        drop_queue_db(db)
