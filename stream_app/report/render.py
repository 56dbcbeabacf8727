"""The report as one self-contained HTML file: inline CSS and SVG, no script, no link.

Print CSS gives Letter pages with margins, each part on a new page and no chart or table
row split across pages, so the browser's print (and `--pdf`) is the paper version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from stream_app.report.figures import COUNT, DOLLARS, HOURS, PERCENT, Figures, Table

CSS = """
@page { size: Letter; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", Arial, sans-serif; font-size: 10pt; color: #1a202c;
       margin: 0 auto; max-width: 8in; padding: 12px; }
h1 { font-size: 18pt; margin: 0 0 4px; }
h2 { font-size: 14pt; border-bottom: 2px solid #2b6cb0; padding-bottom: 2px; margin: 18px 0 8px; }
h3 { font-size: 11pt; margin: 14px 0 4px; }
p.meta { color: #4a5568; margin: 2px 0; }
p.note { color: #4a5568; font-size: 8.5pt; margin: 4px 0 8px; }
.banner { padding: 8px 10px; border-radius: 4px; margin: 10px 0; font-weight: bold; }
.banner.aggregate { background: #ebf8ff; border: 1px solid #90cdf4; }
.banner.phi { background: #fff5f5; border: 2px solid #c53030; color: #9b2c2c; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 10px; font-size: 8.5pt; }
th, td { border-bottom: 1px solid #e2e8f0; padding: 3px 5px; text-align: right; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
th { background: #f7fafc; }
tr.total td { font-weight: bold; border-top: 1px solid #718096; }
figure { margin: 4px 0; break-inside: avoid; page-break-inside: avoid; }
figure svg { width: 100%; height: auto; max-height: 4.2in; }
h3, p.note { break-after: avoid; page-break-after: avoid; }
tr { break-inside: avoid; page-break-inside: avoid; }
thead { display: table-header-group; }
section { break-before: page; page-break-before: always; }
section.first { break-before: auto; page-break-before: auto; }
/* the open items need the width of a landscape page: ids never wrap */
@page worklist { size: Letter landscape; margin: 12mm 10mm; }
section#worklist { page: worklist; }
table.worklist td, table.worklist th { font-size: 7pt; text-align: left; padding: 2px 3px; }
table.worklist td.id { white-space: nowrap; }
@media print { body { max-width: none; padding: 0; } }
"""


def _fmt(kind: str, value) -> str:
    if value is None:
        return "—"
    if kind == COUNT:
        return f"{int(value):,}"
    if kind == DOLLARS:
        return f"${value:,.2f}"
    if kind == PERCENT:
        return f"{100 * value:.1f} %"
    if kind == HOURS:
        return f"{value:,.1f} h"
    return str(value)


def _change(kind: str, a, b) -> str:
    if a is None or b is None:
        return "—"
    d = a - b
    if kind == PERCENT:
        return f"{100 * d:+.1f} pts"
    if kind == DOLLARS:
        return f"{'+' if d >= 0 else '−'}${abs(d):,.2f}"
    return f"{int(d):+,}"


def table_html(t: Table, css_class: str = "", total_label: str | None = "all",
               nowrap: tuple[str, ...] = ()) -> str:
    head = "".join(f'<th class="{k}">{escape(c)}</th>' for c, k in t.columns)
    body = []
    for row in t.rows:
        cls = ' class="total"' if total_label is not None and row and row[0] == total_label else ""
        cells = "".join(f'<td class="{k}{" id" if c in nowrap else ""}">{escape(_fmt(k, x))}</td>'
                        for (c, k), x in zip(t.columns, row, strict=True))
        body.append(f"<tr{cls}>{cells}</tr>")
    if not t.rows:
        body.append(f'<tr><td class="text" colspan="{len(t.columns)}">none in this period</td></tr>')
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<table id="table-{t.key}"{cls}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def compare_html(t: Table) -> str:
    rows = []
    for name, (kind, a), (_, b) in t.rows:
        rows.append(f'<tr><td class="text">{escape(name)}</td><td>{escape(_fmt(kind, a))}</td>'
                    f"<td>{escape(_fmt(kind, b))}</td><td>{escape(_change(kind, a, b))}</td></tr>")
    return (f'<table id="table-{t.key}"><thead><tr><th>Figure (all payers)</th><th>This period</th>'
            f"<th>Previous period</th><th>Change</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _point(key: str, fig: Figures, charts: dict[str, str], note: str) -> str:
    t = fig.tables[key]
    chart = charts.get(key, "")
    return (f'<div class="point" id="point-{key}"><h3>{escape(t.title)}</h3>'
            f'<p class="note">{escape(note)}</p>'
            f'<figure id="chart-{key}">{chart}</figure>{table_html(t)}</div>')


NOTES = {
    "summary": "Lines validated: every charge line the outputs know (emitted, or named by an "
               "alert). Never held: no blocking alert, open or resolved, ever named the line.",
    "by_reason": "Alerts whose service date is in the period; dollars are the alert's revenue "
                 "at risk (open: now; resolved: recovered).",
    "by_queue": "The same alerts by the work queue that fixes them.",
    "by_carc": "The denial each alert predicts if the claim went out as is.",
    "risk_distribution": "Active lines by denial risk (1 − Π(1 − weight) over their open warnings).",
    "ndc": "Drug (HCPCS) lines and how many had a MISSING_NDC or INVALID_NDC alert.",
    "jwjz": "Medicare drug lines with JZ (nothing wasted) or JW (the wasted amount), against "
            "WASTE_MODIFIER_MISSING alerts; lines held by another alert are not counted.",
    "modifiers": "Active lines carrying each modifier, and alerts about it (MODIFIER_NOT_ALLOWED "
                 "naming it; for 25 also EM_MISSING_MODIFIER_25 and EM_NOT_SEPARATELY_IDENTIFIABLE).",
    "frequency_mue": "Payer frequency limits and medically unlikely edits exceeded, by code.",
    "duplicates": "DUPLICATE_SERVICE alerts by the drug administered twice.",
    "documentation": "MISSING_DOCUMENTATION alerts by each missing field, and MISSING_DIAGNOSIS.",
    "em99211": "EM_99211_SAME_DAY: a 99211 billed on a day with an injection code.",
    "resolution": "From the alert's first open revision to its resolution, resolved alerts only.",
    "aging": "Open alerts by days from the service date to the period's last day.",
    "weekly": "Lines validated, new alerts and dollars still at risk, by service-date week.",
    "top_npis": "Open alerts and dollars at risk by the line's rendering NPI.",
    "top_drugs": "Open alerts and dollars at risk by the drug (HCPCS) of the lines they hold.",
}


def render(fig: Figures, charts: dict[str, str], source: str, worklist: bool,
           generated_at: datetime | None = None) -> str:
    p, prev = fig.period, fig.period.previous()
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    banner = (
        '<div class="banner phi" id="phi-notice">CONTAINS PHI: this report lists open items with '
        "patient, encounter and alert ids (section “Open items”). Handle, store and share it "
        "as protected health information.</div>" if worklist else
        '<div class="banner aggregate" id="privacy-notice">Aggregates only: no patient, '
        "encounter or record ids and no diagnosis codes.</div>")
    t = fig.tables
    parts = [
        '<section class="first" id="summary">',
        "<h1>Charge-capture audit report</h1>",
        f'<p class="meta">Service dates {p.first} to {p.last} ({p.days} days); previous period '
        f"{prev.first} to {prev.last}.</p>",
        f'<p class="meta">Source: {escape(source)}. Generated {when}.</p>',
        banner,
        "<h2>Summary</h2>",
        compare_html(t["summary_previous"]),
        _point("summary", fig, charts, NOTES["summary"]),
        "</section>",
        '<section id="denial-risk"><h2>Denial risk</h2>',
        *(_point(k, fig, charts, NOTES[k]) for k in ("by_reason", "by_queue", "by_carc",
                                                    "risk_distribution")),
        "</section>",
        '<section id="audit-points"><h2>Audit points</h2>',
        *(_point(k, fig, charts, NOTES[k]) for k in ("ndc", "jwjz", "modifiers", "frequency_mue",
                                                    "duplicates", "documentation", "em99211")),
        "</section>",
        '<section id="operations"><h2>Operations</h2>',
        *(_point(k, fig, charts, NOTES[k]) for k in ("resolution", "aging", "weekly")),
        "</section>",
        '<section id="where-to-act"><h2>Where to act</h2>',
        *(_point(k, fig, charts, NOTES[k]) for k in ("top_npis", "top_drugs")),
        "</section>",
    ]
    if worklist and "worklist" in t:
        parts += ['<section id="worklist"><h2>Open items (contains PHI)</h2>',
                  table_html(t["worklist"], "worklist", total_label=None,
                             nowrap=("Alert id", "Patient id", "Encounter id", "Service date")), "</section>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Charge-capture audit {p.first} to {p.last}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
