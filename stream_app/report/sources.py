"""The report's two sources, loaded into one in-process DuckDB database of the same shape.

Every figure of the report is computed by the SQL of `figures.py` over the three tables
below, whichever source filled them: a replay output directory (`charge_lines.ndjson`,
`alerts.ndjson`, read by DuckDB's JSON reader) or the work queue's PostgreSQL (its
`charge_line`, `alert` and `alert_revision` tables, copied out as CSV with one query each).
Only the rows of the loaded service-date window are read.

* `line`: the latest revision of every charge line the outputs carry.
* `alert`: the latest revision of every correction alert; `first_open_at` and
  `resolved_at` come from the queue's history and are NULL from a replay (a replay's
  clock stands still, its outputs carry no time).
* `alert_line`: every line each alert holds or warns about (the alert's `lines`; outputs
  written before alerts carried `lines` give the one `line_id` with the alert's code).
  A line held from its first evaluation is never emitted on its own, so these are the
  only rows that know it.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb

TABLES_SQL = """
CREATE TABLE line (
  line_id VARCHAR, state VARCHAR, service_date DATE, payer_class VARCHAR, code VARCHAR,
  modifiers VARCHAR[], units DOUBLE, ndc VARCHAR, rendering_npi VARCHAR,
  expected_reimbursement DOUBLE, denial_risk DOUBLE, patient_id VARCHAR, encounter_id VARCHAR);
CREATE TABLE alert (
  alert_id VARCHAR, state VARCHAR, reason_code VARCHAR, severity VARCHAR, work_queue VARCHAR,
  carc VARCHAR, payer_class VARCHAR, service_date DATE, code VARCHAR, rendering_npi VARCHAR,
  revenue_at_risk DOUBLE, modifiers VARCHAR[], missing_fields VARCHAR[],
  patient_id VARCHAR, encounter_id VARCHAR, message VARCHAR,
  first_open_at TIMESTAMPTZ, resolved_at TIMESTAMPTZ);
CREATE TABLE alert_line (alert_id VARCHAR, line_id VARCHAR, code VARCHAR,
  expected_reimbursement DOUBLE);
"""

_LINES_STRUCT = "STRUCT(line_id VARCHAR, code VARCHAR, expected_reimbursement DOUBLE)[]"


class SourceError(Exception):
    """A source that cannot be read: names what and where."""


@dataclass(frozen=True)
class Window:
    """The service dates loaded: the previous period's first day to the report's last."""

    first: date
    last: date


def new_database() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads TO {max(1, min(4, os.cpu_count() or 1))}")
    con.execute(TABLES_SQL)
    return con


# --------------------------------------------------------------------------- replay directory

_LINE_COLUMNS = {
    "line_id": "VARCHAR", "state": "VARCHAR", "service_date": "DATE", "payer_class": "VARCHAR",
    "code": "VARCHAR", "modifiers": "VARCHAR[]", "units": "DOUBLE", "ndc": "VARCHAR",
    "rendering_npi": "VARCHAR", "expected_reimbursement": "DOUBLE", "denial_risk": "DOUBLE",
    "patient_id": "VARCHAR", "encounter_id": "VARCHAR",
}
_ALERT_COLUMNS = {
    "alert_id": "VARCHAR", "state": "VARCHAR", "reason_code": "VARCHAR", "severity": "VARCHAR",
    "work_queue": "VARCHAR", "predicted_denial": "STRUCT(carc VARCHAR, rarc VARCHAR)",
    "payer_class": "VARCHAR", "service_date": "DATE", "code": "VARCHAR",
    "rendering_npi": "VARCHAR", "line_id": "VARCHAR", "revenue_at_risk": "DOUBLE",
    "details": "JSON", "patient_id": "VARCHAR", "encounter_id": "VARCHAR", "message": "VARCHAR",
    "lines": _LINES_STRUCT,
}


def _read_json(path: Path, columns: dict[str, str]) -> str:
    cols = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
    literal = str(path).replace("'", "''")
    return (f"read_json('{literal}', format='newline_delimited', columns={cols}, "
            "maximum_object_size=16777216)")


def load_replay_dir(con: duckdb.DuckDBPyConnection, directory: Path, window: Window) -> None:
    """Fills the tables from `python -m stream_app replay … --out DIR`'s files."""
    files = {name: directory / name for name in ("charge_lines.ndjson", "alerts.ndjson")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SourceError(f"replay directory {directory} lacks {', '.join(missing)} "
                          "(written by `python -m stream_app replay FILE… --out DIR`)")
    params = [window.first, window.last]
    try:
        if files["charge_lines.ndjson"].stat().st_size:
            con.execute(f"""
                INSERT INTO line
                SELECT {', '.join(_LINE_COLUMNS)}
                FROM {_read_json(files['charge_lines.ndjson'], _LINE_COLUMNS)}
                WHERE service_date BETWEEN ? AND ?""", params)
        if files["alerts.ndjson"].stat().st_size:
            con.execute(f"""
                CREATE TEMP TABLE raw_alert AS
                SELECT * FROM {_read_json(files['alerts.ndjson'], _ALERT_COLUMNS)}
                WHERE service_date BETWEEN ? AND ?""", params)
            con.execute("""
                INSERT INTO alert
                SELECT alert_id, state, reason_code, severity, work_queue, predicted_denial.carc,
                       payer_class, service_date, code, rendering_npi, revenue_at_risk,
                       CAST(details->'modifiers' AS VARCHAR[]),
                       CAST(details->'missing_fields' AS VARCHAR[]),
                       patient_id, encounter_id, message, NULL, NULL
                FROM raw_alert""")
            _insert_alert_lines(con, "raw_alert")
            con.execute("DROP TABLE raw_alert")
    except duckdb.Error as exc:
        raise SourceError(f"cannot read replay directory {directory}: {exc}") from exc


def _insert_alert_lines(con: duckdb.DuckDBPyConnection, table: str) -> None:
    con.execute(f"""
        INSERT INTO alert_line
        SELECT alert_id, l.line_id, l.code, l.expected_reimbursement
        FROM (SELECT alert_id, UNNEST(lines) AS l FROM {table} WHERE lines IS NOT NULL)
        UNION ALL
        SELECT alert_id, line_id, code, revenue_at_risk FROM {table}
        WHERE lines IS NULL AND line_id IS NOT NULL""")


# --------------------------------------------------------------------------- PostgreSQL

# The work queue's tables (stream_app/queue/migrations): latest revision per key in
# charge_line/alert, every revision in alert_revision. Fields the columns lack come from
# the stored payload (the engine's message as published).
_PG_LINES = """
SELECT line_id, state, service_date, payer_class, code,
       (payload->'modifiers')::text AS modifiers, (payload->>'units')::float8 AS units,
       payload->>'ndc' AS ndc, rendering_npi, expected_reimbursement::float8,
       (payload->>'denial_risk')::float8 AS denial_risk,
       payload->>'patient_id' AS patient_id, payload->>'encounter_id' AS encounter_id
FROM charge_line WHERE service_date BETWEEN %(first)s AND %(last)s
"""
_PG_ALERTS = """
SELECT a.alert_id, a.state, a.reason_code, a.severity, a.work_queue,
       a.payload->'predicted_denial'->>'carc' AS carc, a.payer_class, a.service_date, a.code,
       a.payload->>'rendering_npi' AS rendering_npi, a.revenue_at_risk::float8,
       (a.payload->'details'->'modifiers')::text AS modifiers,
       (a.payload->'details'->'missing_fields')::text AS missing_fields,
       a.payload->>'patient_id' AS patient_id, a.payload->>'encounter_id' AS encounter_id,
       a.payload->>'message' AS message,
       h.first_open_at,
       CASE WHEN a.state = 'resolved' THEN a.resolved_at END AS resolved_at,
       a.line_id, (a.payload->'lines')::text AS lines
FROM alert a
-- per alert of the window only, through alert_revision's primary key (alert_id, revision)
LEFT JOIN LATERAL (SELECT min(r.kafka_ts) AS first_open_at FROM alert_revision r
                   WHERE r.alert_id = a.alert_id AND r.state = 'open') h ON true
WHERE a.service_date BETWEEN %(first)s AND %(last)s
"""


def load_postgres(con: duckdb.DuckDBPyConnection, dsn: str, window: Window) -> None:
    """Fills the tables from the work queue's database (read-only queries)."""
    import psycopg

    params = {"first": window.first, "last": window.last}
    with tempfile.TemporaryDirectory(prefix="chargecap-report-") as tmp:
        lines_csv, alerts_csv = Path(tmp) / "lines.csv", Path(tmp) / "alerts.csv"
        try:
            with psycopg.connect(dsn, autocommit=True) as pg:
                pg.execute("SET default_transaction_read_only = on")
                for sql, path in ((_PG_LINES, lines_csv), (_PG_ALERTS, alerts_csv)):
                    # COPY takes no bind parameters: the dates are quoted client-side
                    query = psycopg.ClientCursor(pg).mogrify(sql, params)
                    with pg.cursor().copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)") \
                            as copy, open(path, "wb") as fh:
                        for chunk in copy:
                            fh.write(chunk)
        except psycopg.Error as exc:
            raise SourceError(f"cannot read the work queue's database: "
                              f"{type(exc).__name__}: {str(exc).strip()}") from exc
        _load_csv(con, lines_csv, alerts_csv)


def _load_csv(con: duckdb.DuckDBPyConnection, lines_csv: Path, alerts_csv: Path) -> None:
    def reader(path: Path) -> str:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh))
        types = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in header) + "}"
        return f"read_csv('{path}', header=true, columns={types}, quote='\"', escape='\"')"

    con.execute(f"""
        INSERT INTO line
        SELECT line_id, state, CAST(service_date AS DATE), payer_class, code,
               CAST(CAST(modifiers AS JSON) AS VARCHAR[]), CAST(units AS DOUBLE), ndc,
               rendering_npi, CAST(expected_reimbursement AS DOUBLE),
               CAST(denial_risk AS DOUBLE), patient_id, encounter_id
        FROM {reader(lines_csv)}""")
    con.execute(f"""
        CREATE TEMP TABLE raw_alert AS
        SELECT alert_id, state, reason_code, severity, work_queue, carc, payer_class,
               CAST(service_date AS DATE) AS service_date, code, rendering_npi,
               CAST(revenue_at_risk AS DOUBLE) AS revenue_at_risk,
               CAST(CAST(modifiers AS JSON) AS VARCHAR[]) AS modifiers,
               CAST(CAST(missing_fields AS JSON) AS VARCHAR[]) AS missing_fields,
               patient_id, encounter_id, message,
               CAST(first_open_at AS TIMESTAMPTZ) AS first_open_at,
               CAST(resolved_at AS TIMESTAMPTZ) AS resolved_at, line_id,
               CAST(CAST(lines AS JSON) AS {_LINES_STRUCT}) AS lines
        FROM {reader(alerts_csv)}""")
    con.execute("""
        INSERT INTO alert
        SELECT alert_id, state, reason_code, severity, work_queue, carc, payer_class,
               service_date, code, rendering_npi, revenue_at_risk, modifiers, missing_fields,
               patient_id, encounter_id, message, first_open_at, resolved_at
        FROM raw_alert""")
    _insert_alert_lines(con, "raw_alert")
    con.execute("DROP TABLE raw_alert")
