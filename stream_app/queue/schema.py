"""Versioned SQL migrations (migrations/NNNN_name.sql), applied in order, idempotently.

`migrate` runs as the schema owner, records each applied file (version, name, SHA-256)
in ``schema_migration`` and makes the service's login roles members of
``chargecap_queue_service``, the role the migrations grant to. `check_schema` is what the
service runs before it starts: it refuses a database whose applied versions are not
exactly the ones this code knows (a newer schema, an edited migration, a missing one).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SERVICE_GROUP_ROLE = "chargecap_queue_service"
# Any constant: one migrate at a time per database.
_LOCK_KEY = 0x51_75_65_75_65  # "Queue"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaError(RuntimeError):
    """The database's schema is not one this code can run on."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def known_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    out = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise SchemaError(f"{path}: migration files are named NNNN_name.sql")
        out.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise SchemaError(f"{directory}: migration versions must be 1..N without gaps, got {versions}")
    return out


def latest_version() -> int:
    return known_migrations()[-1].version


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migration (
  version     integer PRIMARY KEY,
  name        text        NOT NULL,
  checksum    text        NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migration ORDER BY version").fetchall()
    return {v: (n, c) for v, n, c in rows}


def _compare(applied: dict[int, tuple[str, str]], known: list[Migration]) -> None:
    by_version = {m.version: m for m in known}
    unknown = sorted(v for v in applied if v not in by_version)
    if unknown:
        raise SchemaError(
            f"the database has schema version(s) {unknown} that this chargecap does not know "
            f"(it knows 1..{known[-1].version}); run the chargecap release that wrote them"
        )
    for version, (name, checksum) in applied.items():
        if checksum != by_version[version].checksum:
            raise SchemaError(
                f"migration {version:04d}_{name} applied to the database differs from the file "
                "shipped with this chargecap (a migration is never edited once released)"
            )


def migrate(dsn: str, service_logins: list[str] = ()) -> list[str]:
    """Applies the missing migrations; returns the names applied (empty when up to date)."""
    known = known_migrations()
    done: list[str] = []
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_CREATE_LEDGER)
            applied = _applied(conn)
            _compare(applied, known)
            for m in known:
                if m.version in applied:
                    continue
                conn.execute(m.sql)
                conn.execute(
                    "INSERT INTO schema_migration (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
                done.append(f"{m.version:04d}_{m.name}")
            conn.execute(
                sql.SQL("GRANT SELECT ON schema_migration TO {}").format(sql.Identifier(SERVICE_GROUP_ROLE))
            )
            for login in service_logins:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(SERVICE_GROUP_ROLE), sql.Identifier(login)
                    )
                )
    return done


def check_schema_sync(conn: psycopg.Connection) -> int:
    known = known_migrations()
    try:
        applied = _applied(conn)
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError("the database has no chargecap schema; run `chargecap queue migrate`") from exc
    _compare(applied, known)
    missing = [m.version for m in known if m.version not in applied]
    if missing:
        raise SchemaError(f"schema version(s) {missing} not applied yet; run `chargecap queue migrate`")
    return known[-1].version


async def check_schema(conn: psycopg.AsyncConnection) -> int:
    known = known_migrations()
    try:
        cur = await conn.execute("SELECT version, name, checksum FROM schema_migration ORDER BY version")
        applied = {v: (n, c) for v, n, c in await cur.fetchall()}
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError("the database has no chargecap schema; run `chargecap queue migrate`") from exc
    finally:
        await conn.rollback()
    _compare(applied, known)
    missing = [m.version for m in known if m.version not in applied]
    if missing:
        raise SchemaError(f"schema version(s) {missing} not applied yet; run `chargecap queue migrate`")
    return known[-1].version
