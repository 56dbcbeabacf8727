"""Every figure of the report: SQL over the tables of `sources.py`, one query per table.

The same queries run whichever source filled the tables, so a figure is computed once.
Periods are by **service date** (the date a claim's timely filing and audits count from):
`current` is [from, to], `previous` the same number of days just before.

Definitions (docs/report.md repeats them for the reader):

* a *line validated* is every charge line the outputs know: emitted lines (any state) and
  the lines alerts name (a line held from its first evaluation is never emitted);
* a line is *never held* when no `block` alert, open or resolved, names it; the
  first-pass clean rate is never-held lines / lines validated;
* *dollars at risk now* is the sum of `revenue_at_risk` over open alerts, *dollars
  recovered* the same over resolved alerts (as the `chargecap_revenue_at_risk_dollars`
  gauge sums it), *expected reimbursement* the sum over active lines;
* a *drug line* is a line whose code is a HCPCS level II code (letter and four digits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import duckdb

from stream_app import vocabulary as v

# column kinds: how the renderer formats a value
TEXT, COUNT, DOLLARS, PERCENT, HOURS = "text", "count", "dollars", "percent", "hours"

DRUG_CODE = "regexp_matches(code, '^[A-Z][0-9]{4}$')"
AGING_BUCKETS = ((0, 7, "0–7 d"), (8, 14, "8–14 d"), (15, 30, "15–30 d"), (31, 60, "31–60 d"),
                 (61, None, "61+ d"))
RISK_BUCKETS = ((0.0, 0.0, "0"), (0.0, 0.1, "≤ 0.10"), (0.1, 0.25, "0.10–0.25"),
                (0.25, 0.5, "0.25–0.50"), (0.5, 1.0, "> 0.50"))
AUDIT_MODIFIERS = ("25", "59", "XE", "XS", "XP", "XU", "76", "77")
NDC_REASONS = (v.MISSING_NDC, v.INVALID_NDC)
DOCUMENTATION_REASONS = (v.MISSING_DOCUMENTATION, v.MISSING_DIAGNOSIS)
TOP_N = 10


@dataclass(frozen=True)
class Period:
    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        return Period(self.first - timedelta(days=self.days), self.first - timedelta(days=1))


@dataclass
class Table:
    key: str
    title: str
    columns: list[tuple[str, str]]  # (heading, kind)
    rows: list[tuple] = field(default_factory=list)

    def column(self, heading: str) -> list:
        i = [c for c, _ in self.columns].index(heading)
        return [r[i] for r in self.rows]


def _in(values) -> str:
    return "(" + ", ".join(f"'{x}'" for x in values) + ")"


def prepare(con: duckdb.DuckDBPyConnection, period: Period) -> None:
    """Derived tables every query uses: lines known to the outputs, with period and hold."""
    prev = period.previous()
    period_sql = (f"CASE WHEN service_date BETWEEN DATE '{period.first}' AND DATE '{period.last}' "
                  f"THEN 'current' WHEN service_date BETWEEN DATE '{prev.first}' "
                  f"AND DATE '{prev.last}' THEN 'previous' END")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE held AS
        SELECT DISTINCT al.line_id FROM alert_line al JOIN alert a USING (alert_id)
        WHERE a.severity = '{v.BLOCK}';
        CREATE OR REPLACE TEMP TABLE kline AS
        WITH named AS (
          SELECT al.line_id, any_value(al.code) AS code, any_value(a.payer_class) AS payer_class,
                 any_value(a.service_date) AS service_date,
                 any_value(al.expected_reimbursement) AS expected_reimbursement
          FROM alert_line al JOIN alert a USING (alert_id)
          WHERE NOT EXISTS (SELECT 1 FROM line l WHERE l.line_id = al.line_id)
          GROUP BY al.line_id),
        known AS (
          SELECT line_id, code, payer_class, service_date, state, expected_reimbursement,
                 modifiers, ndc, denial_risk, true AS emitted FROM line
          UNION ALL
          SELECT line_id, code, payer_class, service_date, 'not emitted', expected_reimbursement,
                 NULL, NULL, NULL, false FROM named)
        SELECT k.*, {period_sql} AS period, coalesce(k.payer_class, 'unknown') AS payer,
               h.line_id IS NOT NULL AS ever_held
        FROM known k LEFT JOIN held h USING (line_id);
        CREATE OR REPLACE TEMP TABLE kalert AS
        SELECT a.*, {period_sql} AS period, coalesce(a.payer_class, 'unknown') AS payer,
               d.drug_code
        FROM alert a LEFT JOIN (
          SELECT alert_id, min(code) AS drug_code FROM alert_line WHERE {DRUG_CODE}
          GROUP BY alert_id) d USING (alert_id);
    """)


def _rows(con, sql: str, params: list | None = None) -> list[tuple]:
    return [tuple(r) for r in con.execute(sql, params or []).fetchall()]


def _order_payers(rows: list[tuple]) -> list[tuple]:
    order = {p: i for i, p in enumerate((*v.PAYER_CLASSES, "unknown", "all"))}
    return sorted(rows, key=lambda r: order.get(r[0], 99))


# --------------------------------------------------------------------------- summary

_SUMMARY_SQL = """
WITH l AS (
  SELECT period, CASE WHEN grouping(payer) = 1 THEN 'all' ELSE payer END AS payer,
         count(*) AS lines, count(*) FILTER (WHERE NOT ever_held) AS clean,
         round(coalesce(sum(expected_reimbursement) FILTER (WHERE state = 'active'), 0), 2) AS expected
  FROM kline WHERE period IS NOT NULL GROUP BY GROUPING SETS ((period, payer), (period))),
a AS (
  SELECT period, CASE WHEN grouping(payer) = 1 THEN 'all' ELSE payer END AS payer,
         count(*) AS opened, count(*) FILTER (WHERE state = 'resolved') AS resolved,
         round(coalesce(sum(revenue_at_risk) FILTER (WHERE state = 'open'), 0), 2) AS at_risk,
         round(coalesce(sum(revenue_at_risk) FILTER (WHERE state = 'resolved'), 0), 2) AS recovered
  FROM kalert WHERE period IS NOT NULL GROUP BY GROUPING SETS ((period, payer), (period)))
SELECT period, payer, coalesce(lines, 0), coalesce(clean, 0),
       CASE WHEN coalesce(lines, 0) > 0 THEN clean / lines END,
       coalesce(opened, 0), coalesce(resolved, 0), coalesce(at_risk, 0), coalesce(recovered, 0),
       coalesce(expected, 0)
FROM l FULL JOIN a USING (period, payer)
"""
SUMMARY_COLUMNS = [("Payer class", TEXT), ("Lines validated", COUNT), ("Never held", COUNT),
                   ("First-pass clean rate", PERCENT), ("Alerts opened", COUNT),
                   ("Alerts resolved", COUNT), ("At risk now", DOLLARS),
                   ("Recovered", DOLLARS), ("Expected reimbursement", DOLLARS)]


def summary(con) -> tuple[Table, Table]:
    rows = _rows(con, _SUMMARY_SQL)
    current = _order_payers([r[1:] for r in rows if r[0] == "current"])
    if not any(r[0] == "all" for r in current):
        current.append(("all", 0, 0, None, 0, 0, 0.0, 0.0, 0.0))
    by_payer = Table("summary", "Summary by payer class", SUMMARY_COLUMNS, current)
    totals = {r[0]: r[2:] for r in rows if r[1] == "all"}
    empty = (0, 0, None, 0, 0, 0.0, 0.0, 0.0)
    cur, prev = totals.get("current", empty), totals.get("previous", empty)
    compare = Table("summary_previous", "This period against the previous period",
                    [("Figure", TEXT), ("This period", TEXT), ("Previous period", TEXT)], [])
    for (heading, kind), a, b in zip(SUMMARY_COLUMNS[1:], cur, prev, strict=True):
        compare.rows.append((heading, (kind, a), (kind, b)))
    return by_payer, compare


# --------------------------------------------------------------------------- denial risk

ALERT_COLUMNS = [("Alerts", COUNT), ("Open", COUNT), ("Resolved", COUNT), ("At risk now", DOLLARS),
                 ("Recovered", DOLLARS)]
_ALERT_AGG = """count(*), count(*) FILTER (WHERE state = 'open'),
  count(*) FILTER (WHERE state = 'resolved'),
  round(coalesce(sum(revenue_at_risk) FILTER (WHERE state = 'open'), 0), 2),
  round(coalesce(sum(revenue_at_risk) FILTER (WHERE state = 'resolved'), 0), 2)"""


def by_reason(con) -> Table:
    rows = _rows(con, f"""SELECT reason_code, work_queue, {_ALERT_AGG} FROM kalert
                          WHERE period = 'current' GROUP BY ALL ORDER BY 7 DESC, 3 DESC, 1""")
    return Table("by_reason", "Alerts by reason code",
                 [("Reason code", TEXT), ("Work queue", TEXT), *ALERT_COLUMNS], rows)


def by_queue(con) -> Table:
    rows = _rows(con, f"""SELECT work_queue, {_ALERT_AGG} FROM kalert
                          WHERE period = 'current' GROUP BY ALL ORDER BY 5 DESC, 2 DESC, 1""")
    return Table("by_queue", "Alerts by work queue", [("Work queue", TEXT), *ALERT_COLUMNS], rows)


def by_carc(con) -> Table:
    rows = _rows(con, f"""SELECT coalesce(carc, 'none'), {_ALERT_AGG} FROM kalert
                          WHERE period = 'current' GROUP BY ALL ORDER BY 2 DESC, 1""")
    return Table("by_carc", "Predicted denial (CARC) of the alerts",
                 [("CARC", TEXT), *ALERT_COLUMNS], rows)


def risk_distribution(con) -> Table:
    cases = " ".join(
        f"WHEN denial_risk {'=' if lo == hi else '>'} {lo}"
        + ("" if lo == hi else f" AND denial_risk <= {hi}") + f" THEN {i}"
        for i, (lo, hi, _) in enumerate(RISK_BUCKETS))
    got = dict((b, (n, d)) for b, n, d in _rows(con, f"""
        SELECT CASE {cases} END AS bucket, count(*),
               round(coalesce(sum(expected_reimbursement), 0), 2)
        FROM kline WHERE period = 'current' AND state = 'active' GROUP BY 1"""))
    rows = [(label, *got.get(i, (0, 0.0))) for i, (_, _, label) in enumerate(RISK_BUCKETS)]
    return Table("risk_distribution", "Denial risk of active lines",
                 [("Denial risk", TEXT), ("Active lines", COUNT), ("Expected reimbursement", DOLLARS)],
                 rows)


# --------------------------------------------------------------------------- audit points

def ndc_completeness(con) -> Table:
    rows = _rows(con, f"""
        WITH bad AS (
          SELECT al.line_id, bool_or(a.state = 'open') AS open_now
          FROM alert_line al JOIN alert a USING (alert_id)
          WHERE a.reason_code IN {_in(NDC_REASONS)} GROUP BY al.line_id)
        SELECT k.code, count(*), count(bad.line_id), count(*) FILTER (WHERE bad.open_now),
               (count(*) - count(bad.line_id)) / count(*)
        FROM kline k LEFT JOIN bad USING (line_id)
        WHERE k.period = 'current' AND regexp_matches(k.code, '^[A-Z][0-9]{{4}}$')
        GROUP BY k.code ORDER BY 3 DESC, 2 DESC, 1""")
    return Table("ndc", "NDC completeness on drug lines",
                 [("HCPCS", TEXT), ("Drug lines", COUNT), ("NDC missing or invalid", COUNT),
                  ("Still open", COUNT), ("Complete", PERCENT)], rows)


def jw_jz(con) -> Table:
    rows = _rows(con, f"""
        WITH lines AS (
          SELECT code, count(*) FILTER (WHERE list_contains(modifiers, 'JZ')) AS jz,
                 count(*) FILTER (WHERE list_contains(modifiers, 'JW')) AS jw
          FROM kline WHERE period = 'current' AND payer = 'medicare' AND emitted
            AND state = 'active' AND {DRUG_CODE} GROUP BY code),
        missing AS (
          SELECT coalesce(drug_code, code) AS code, count(*) AS alerts,
                 count(*) FILTER (WHERE state = 'open') AS open_now
          FROM kalert WHERE period = 'current' AND reason_code = '{v.WASTE_MODIFIER_MISSING}'
          GROUP BY 1)
        SELECT code, coalesce(jz, 0), coalesce(jw, 0), coalesce(alerts, 0), coalesce(open_now, 0),
               (coalesce(jz, 0) + coalesce(jw, 0))
                 / (coalesce(jz, 0) + coalesce(jw, 0) + coalesce(alerts, 0))
        FROM lines FULL JOIN missing USING (code)
        WHERE coalesce(jz, 0) + coalesce(jw, 0) + coalesce(alerts, 0) > 0
        ORDER BY 4 DESC, 2 DESC, 1""")
    return Table("jwjz", "JW/JZ on Medicare single-dose drugs",
                 [("HCPCS", TEXT), ("Lines with JZ", COUNT), ("Lines with JW", COUNT),
                  ("Waste modifier missing", COUNT), ("Still open", COUNT),
                  ("Compliant", PERCENT)], rows)


def modifier_usage(con) -> Table:
    em25 = _in((v.EM_MISSING_MODIFIER_25, v.EM_NOT_SEPARATELY_IDENTIFIABLE))
    mods = ", ".join(f"('{m}', {i})" for i, m in enumerate(AUDIT_MODIFIERS))
    rows = _rows(con, f"""
        WITH m(modifier, pos) AS (VALUES {mods}),
        used AS (SELECT m.modifier, count(k.line_id) AS n FROM m LEFT JOIN kline k
                 ON k.period = 'current' AND k.state = 'active'
                 AND list_contains(k.modifiers, m.modifier) GROUP BY m.modifier),
        about AS (SELECT m.modifier, count(a.alert_id) AS n,
                         count(a.alert_id) FILTER (WHERE a.state = 'open') AS open_now,
                         round(coalesce(sum(a.revenue_at_risk) FILTER (WHERE a.state = 'open'), 0), 2)
                           AS at_risk
                  FROM m LEFT JOIN kalert a ON a.period = 'current' AND (
                    (a.reason_code = '{v.MODIFIER_NOT_ALLOWED}' AND list_contains(a.modifiers, m.modifier))
                    OR (m.modifier = '25' AND a.reason_code IN {em25}))
                  GROUP BY m.modifier)
        SELECT m.modifier, used.n, about.n, about.open_now, about.at_risk
        FROM m JOIN used USING (modifier) JOIN about USING (modifier) ORDER BY m.pos""")
    return Table("modifiers", "Modifiers 25, 59/X{EPSU}, 76, 77: usage and alerts",
                 [("Modifier", TEXT), ("Active lines with it", COUNT), ("Alerts about it", COUNT),
                  ("Still open", COUNT), ("At risk now", DOLLARS)], rows)


def frequency_mue(con) -> Table:
    rows = _rows(con, f"""
        SELECT reason_code, code, severity, {_ALERT_AGG} FROM kalert
        WHERE period = 'current' AND reason_code IN {_in((v.FREQUENCY_LIMIT, v.MUE_EXCEEDED))}
        GROUP BY ALL ORDER BY 1, 4 DESC, 2, 3""")
    return Table("frequency_mue", "Frequency-limit and MUE hits",
                 [("Reason code", TEXT), ("Code", TEXT), ("Severity", TEXT), *ALERT_COLUMNS], rows)


def duplicates(con) -> Table:
    rows = _rows(con, f"""
        SELECT coalesce(drug_code, code), {_ALERT_AGG} FROM kalert
        WHERE period = 'current' AND reason_code = '{v.DUPLICATE_SERVICE}'
        GROUP BY ALL ORDER BY 2 DESC, 1""")
    return Table("duplicates", "Duplicate services by drug",
                 [("Drug (HCPCS) or code", TEXT), *ALERT_COLUMNS], rows)


def documentation_gaps(con) -> Table:
    rows = _rows(con, f"""
        WITH gaps AS (
          SELECT UNNEST(missing_fields) AS field, state, revenue_at_risk FROM kalert
          WHERE period = 'current' AND reason_code = '{v.MISSING_DOCUMENTATION}'
          UNION ALL
          SELECT 'diagnosis_codes', state, revenue_at_risk FROM kalert
          WHERE period = 'current' AND reason_code = '{v.MISSING_DIAGNOSIS}')
        SELECT field, {_ALERT_AGG} FROM gaps GROUP BY ALL ORDER BY 2 DESC, 1""")
    return Table("documentation", "Documentation gaps by missing field",
                 [("Missing field", TEXT), *ALERT_COLUMNS], rows)


def em_99211(con) -> Table:
    rows = _order_payers(_rows(con, f"""
        SELECT CASE WHEN grouping(payer) = 1 THEN 'all' ELSE payer END, {_ALERT_AGG}
        FROM kalert WHERE period = 'current' AND reason_code = '{v.EM_99211_SAME_DAY}'
        GROUP BY GROUPING SETS ((payer), ())"""))
    return Table("em99211", "99211 on an injection day", [("Payer class", TEXT), *ALERT_COLUMNS],
                 rows)


# --------------------------------------------------------------------------- operations

def time_to_resolution(con) -> Table:
    rows = _rows(con, """
        WITH r AS (
          SELECT work_queue, epoch(resolved_at - first_open_at) / 3600.0 AS hours, state
          FROM kalert WHERE period = 'current')
        SELECT work_queue, count(*) FILTER (WHERE state = 'resolved'),
               count(hours) FILTER (WHERE state = 'resolved'),
               quantile_cont(hours, 0.5) FILTER (WHERE state = 'resolved'),
               quantile_cont(hours, 0.9) FILTER (WHERE state = 'resolved')
        FROM r GROUP BY 1 ORDER BY 1""")
    return Table("resolution", "Time to resolution per work queue",
                 [("Work queue", TEXT), ("Resolved", COUNT), ("With open and resolve times", COUNT),
                  ("Median", HOURS), ("90th percentile", HOURS)], rows)


def aging(con, as_of: date) -> Table:
    buckets = ", ".join(
        f"count(*) FILTER (WHERE age >= {lo}" + ("" if hi is None else f" AND age <= {hi}") + ")"
        for lo, hi, _ in AGING_BUCKETS)
    rows = _rows(con, f"""
        WITH o AS (SELECT work_queue, date_diff('day', service_date, DATE '{as_of}') AS age,
                          revenue_at_risk FROM kalert WHERE period = 'current' AND state = 'open')
        SELECT work_queue, {buckets}, count(*), round(sum(revenue_at_risk), 2)
        FROM o GROUP BY 1 ORDER BY 1""")
    return Table("aging", f"Open alerts by age since the service date (as of {as_of})",
                 [("Work queue", TEXT), *((label, COUNT) for _, _, label in AGING_BUCKETS),
                  ("Open", COUNT), ("At risk now", DOLLARS)], rows)


def weekly_trend(con) -> Table:
    rows = _rows(con, """
        WITH a AS (SELECT date_trunc('week', service_date)::DATE AS week, count(*) AS alerts,
                          round(coalesce(sum(revenue_at_risk) FILTER (WHERE state = 'open'), 0), 2)
                            AS at_risk
                   FROM kalert WHERE period IS NOT NULL GROUP BY 1),
             l AS (SELECT date_trunc('week', service_date)::DATE AS week, count(*) AS lines
                   FROM kline WHERE period IS NOT NULL GROUP BY 1)
        SELECT strftime(week, '%Y-%m-%d'), coalesce(lines, 0), coalesce(alerts, 0),
               coalesce(at_risk, 0)
        FROM l FULL JOIN a USING (week) ORDER BY week""")
    return Table("weekly", "Weekly trend (weeks starting Monday, both periods)",
                 [("Week of", TEXT), ("Lines validated", COUNT), ("New alerts", COUNT),
                  ("At risk now", DOLLARS)], rows)


# --------------------------------------------------------------------------- where to act

def top_npis(con) -> Table:
    rows = _rows(con, f"""
        SELECT coalesce(rendering_npi, 'none'), count(*), round(sum(revenue_at_risk), 2)
        FROM kalert WHERE period = 'current' AND state = 'open'
        GROUP BY 1 ORDER BY 3 DESC, 2 DESC, 1 LIMIT {TOP_N}""")
    return Table("top_npis", f"Top {TOP_N} rendering NPIs by dollars at risk",
                 [("Rendering NPI", TEXT), ("Open alerts", COUNT), ("At risk now", DOLLARS)], rows)


def top_drugs(con) -> Table:
    rows = _rows(con, f"""
        SELECT drug_code, count(*), round(sum(revenue_at_risk), 2)
        FROM kalert WHERE period = 'current' AND state = 'open' AND drug_code IS NOT NULL
        GROUP BY 1 ORDER BY 3 DESC, 2 DESC, 1 LIMIT {TOP_N}""")
    return Table("top_drugs", f"Top {TOP_N} drugs (HCPCS) by dollars at risk",
                 [("HCPCS", TEXT), ("Open alerts", COUNT), ("At risk now", DOLLARS)], rows)


def worklist(con) -> Table:
    rows = _rows(con, """
        SELECT work_queue, alert_id, patient_id, encounter_id, strftime(service_date, '%Y-%m-%d'),
               reason_code, code, revenue_at_risk, message
        FROM kalert WHERE period = 'current' AND state = 'open'
        ORDER BY work_queue, revenue_at_risk DESC, service_date, alert_id""")
    return Table("worklist", "Open items (contains PHI)",
                 [("Work queue", TEXT), ("Alert id", TEXT), ("Patient id", TEXT),
                  ("Encounter id", TEXT), ("Service date", TEXT), ("Reason code", TEXT),
                  ("Code", TEXT), ("At risk", DOLLARS), ("Message", TEXT)], rows)


@dataclass
class Figures:
    period: Period
    tables: dict[str, Table]
    has_times: bool  # the source knows when alerts opened and resolved


def compute(con, period: Period, with_worklist: bool = False) -> Figures:
    prepare(con, period)
    by_payer, compare = summary(con)
    tables = [by_payer, compare, by_reason(con), by_queue(con), by_carc(con),
              risk_distribution(con), ndc_completeness(con), jw_jz(con), modifier_usage(con),
              frequency_mue(con), duplicates(con), documentation_gaps(con), em_99211(con),
              time_to_resolution(con), aging(con, period.last), weekly_trend(con),
              top_npis(con), top_drugs(con)]
    if with_worklist:
        tables.append(worklist(con))
    has_times = con.execute(
        "SELECT count(*) FROM alert WHERE first_open_at IS NOT NULL").fetchone()[0] > 0
    return Figures(period, {t.key: t for t in tables}, has_times)
