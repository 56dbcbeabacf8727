"""Schema migrations: applied once, idempotent, and a service that refuses a schema it does
not know."""

from __future__ import annotations

import pytest

from stream_app.queue.schema import SchemaError, check_schema_sync, known_migrations, migrate
from tests.queue.service import QueueService, chargecap


def tables(db) -> list[tuple]:
    with db.admin() as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()


def test_migrate_is_idempotent(queue_db):
    before = tables(queue_db)
    assert migrate(queue_db.admin_dsn, ["chargecap_queue"]) == []
    r = chargecap("queue", "migrate", "--admin-dsn", queue_db.admin_dsn)
    assert r.returncode == 0 and "nothing (up to date)" in r.stdout
    assert tables(queue_db) == before
    with queue_db.admin() as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migration ORDER BY 1")]
    assert versions == [m.version for m in known_migrations()]


def test_check_accepts_the_known_schema(queue_db):
    with queue_db.admin() as conn:
        assert check_schema_sync(conn) == known_migrations()[-1].version


def test_service_refuses_to_start_on_an_unknown_schema_version(queue_db, tmp_path):
    with queue_db.admin() as conn:
        conn.execute(
            "INSERT INTO schema_migration (version, name, checksum) VALUES (999, 'from_the_future', 'x')"
        )
        with pytest.raises(SchemaError, match="999"):
            check_schema_sync(conn)
    for command in ("serve", "sink"):
        svc = QueueService(tmp_path, queue_db, command=command).start()
        try:
            code = svc.proc.wait(60)
        finally:
            svc.stop()
        assert code == 3, svc.log()
        assert "refusing to start" in svc.log() and "999" in svc.log()
    r = chargecap("queue", "migrate", "--admin-dsn", queue_db.admin_dsn)
    assert r.returncode == 3 and "999" in r.stderr


def test_service_refuses_an_edited_migration(queue_db, tmp_path):
    with queue_db.admin() as conn:
        conn.execute("UPDATE schema_migration SET checksum = 'edited' WHERE version = 1")
    svc = QueueService(tmp_path, queue_db).start()
    try:
        assert svc.proc.wait(60) == 3
    finally:
        svc.stop()
    assert "differs from the file" in svc.log()


def test_service_refuses_an_empty_database(pg_server, tmp_path):
    import psycopg

    from tests.queue.pg import QueueDb, drop_queue_db

    host, port = pg_server
    db = QueueDb(host, port, "q_empty_" + tmp_path.name[-8:].replace("-", "_"))
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db.name}"')
    try:
        svc = QueueService(tmp_path, db).start()
        try:
            assert svc.proc.wait(60) == 3
        finally:
            svc.stop()
        assert "chargecap queue migrate" in svc.log()
    finally:
        drop_queue_db(db)
