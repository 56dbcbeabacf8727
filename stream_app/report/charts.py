"""Charts of the report: matplotlib figures written as SVG text, one per table.

matplotlib's SVG backend needs no browser, no JavaScript and no network, keeps text as
text (`svg.fonttype = none`: small files, sharp in print) and is deterministic with a
fixed hash salt and no date metadata. Each chart gets its own salt so that the ids of two
inline SVGs in one HTML page never collide.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("svg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from stream_app.report.figures import Figures, Table  # noqa: E402

BLUE, ORANGE, GREY, GREEN, RED = "#2b6cb0", "#dd6b20", "#a0aec0", "#2f855a", "#c53030"
WIDTH = 7.0  # inches: fits a Letter or A4 page with margins

plt.rcParams.update({
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
})


def _svg(fig, salt: str) -> str:
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": f"chargecap-{salt}"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    start = text.index("<svg")  # drop the XML prolog and DOCTYPE: the SVG is inline
    return text[start:]


def _no_data(salt: str, message: str) -> str:
    fig, ax = plt.subplots(figsize=(WIDTH, 0.8))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", color="#4a5568")
    return _svg(fig, salt)


def _barh(salt: str, labels: list[str], series: list[tuple[str, list[float], str]],
          xlabel: str, money: bool = False) -> str:
    if not labels:
        return _no_data(salt, "nothing in this period")
    labels, series = labels[::-1], [(n, vals[::-1], c) for n, vals, c in series]
    height = 0.55 + 0.17 * len(labels) * max(1.0, len(series) * 0.75)
    fig, ax = plt.subplots(figsize=(WIDTH, min(height, 4.2)))
    n = len(series)
    bar = 0.8 / n
    for i, (name, vals, color) in enumerate(series):
        pos = [y + (n - 1 - i) * bar - 0.4 + bar / 2 for y in range(len(labels))]
        ax.barh(pos, vals, height=bar, color=color, label=name)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel)
    if money:
        ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("${x:,.0f}"))
    else:  # counts: whole ticks only
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if n > 1:
        ax.legend(frameon=False, loc="lower right")
    ax.grid(axis="x", color="#e2e8f0")
    ax.set_axisbelow(True)
    return _svg(fig, salt)


def _stacked(salt: str, labels: list[str], parts: list[tuple[str, list[float], str]],
             xlabel: str) -> str:
    if not labels:
        return _no_data(salt, "nothing in this period")
    labels = labels[::-1]
    fig, ax = plt.subplots(figsize=(WIDTH, min(0.55 + 0.19 * len(labels), 4.2)))
    left = [0.0] * len(labels)
    for name, vals, color in parts:
        vals = vals[::-1]
        ax.barh(range(len(labels)), vals, left=left, color=color, label=name, height=0.7)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(frameon=False, loc="lower right", fontsize=7.5)
    ax.grid(axis="x", color="#e2e8f0")
    ax.set_axisbelow(True)
    return _svg(fig, salt)


def _col(t: Table, heading: str) -> list:
    return [0 if x is None else x for x in t.column(heading)]


def summary_chart(t: Table) -> str:
    rows = [r for r in t.rows if r[0] != "all"]
    labels = [r[0] for r in rows]
    i = [c for c, _ in t.columns]
    return _barh("summary", labels, [
        ("Expected reimbursement", [r[i.index("Expected reimbursement")] for r in rows], BLUE),
        ("At risk now", [r[i.index("At risk now")] for r in rows], ORANGE),
        ("Recovered", [r[i.index("Recovered")] for r in rows], GREEN),
    ], "dollars", money=True)


def charts_for(fig: Figures) -> dict[str, str]:
    """SVG text per table key (tables without a chart are absent)."""
    t = fig.tables
    out: dict[str, str] = {"summary": summary_chart(t["summary"])}
    for key, label in (("by_reason", "Reason code"), ("by_queue", "Work queue"), ("by_carc", "CARC")):
        out[key] = _barh(key, t[key].column(label), [
            ("Open", _col(t[key], "Open"), ORANGE), ("Resolved", _col(t[key], "Resolved"), GREEN),
        ], "alerts")
    rd = t["risk_distribution"]
    out["risk_distribution"] = _barh("risk", rd.column("Denial risk"),
                                     [("Active lines", _col(rd, "Active lines"), BLUE)], "active lines")
    ndc = t["ndc"]
    bad = _col(ndc, "NDC missing or invalid")
    out["ndc"] = _stacked("ndc", ndc.column("HCPCS"), [
        ("NDC complete", [a - b for a, b in zip(_col(ndc, "Drug lines"), bad, strict=True)], BLUE),
        ("NDC missing or invalid", bad, RED)], "drug lines")
    jw = t["jwjz"]
    out["jwjz"] = _stacked("jwjz", jw.column("HCPCS"), [
        ("JZ", _col(jw, "Lines with JZ"), BLUE), ("JW", _col(jw, "Lines with JW"), GREEN),
        ("Waste modifier missing", _col(jw, "Waste modifier missing"), RED)], "Medicare drug lines")
    mods = t["modifiers"]
    out["modifiers"] = _barh("modifiers", mods.column("Modifier"), [
        ("Active lines with it", _col(mods, "Active lines with it"), BLUE),
        ("Alerts about it", _col(mods, "Alerts about it"), RED)], "lines / alerts")
    fm = t["frequency_mue"]
    out["frequency_mue"] = _barh("freqmue", [f"{r[0]} {r[1]} ({r[2]})" for r in fm.rows],
                                 [("Alerts", _col(fm, "Alerts"), ORANGE)], "alerts")
    for key, salt in (("duplicates", "dup"), ("documentation", "doc"), ("em99211", "em99211")):
        rows = [r for r in t[key].rows if r[0] != "all"]
        out[key] = _barh(salt, [r[0] for r in rows], [
            ("Open", [r[2] for r in rows], ORANGE), ("Resolved", [r[3] for r in rows], GREEN)],
            "alerts")
    res = t["resolution"]
    if fig.has_times and any(x is not None for x in res.column("Median")):
        out["resolution"] = _barh("ttr", res.column("Work queue"), [
            ("Median", _col(res, "Median"), BLUE), ("90th percentile", _col(res, "90th percentile"),
                                                     ORANGE)], "hours to resolution")
    else:
        out["resolution"] = _no_data(
            "ttr", "No resolution times: a replay's outputs carry no clock"
            if not fig.has_times else "No alert resolved in this period")
    ag = t["aging"]
    bucket_cols = [c for c, _ in ag.columns[1:-2]]
    palette = [BLUE, GREEN, "#d69e2e", ORANGE, RED]
    out["aging"] = _stacked("aging", ag.column("Work queue"),
                            [(c, _col(ag, c), palette[i]) for i, c in enumerate(bucket_cols)],
                            "open alerts")
    out["weekly"] = weekly_chart(t["weekly"])
    for key, label in (("top_npis", "Rendering NPI"), ("top_drugs", "HCPCS")):
        out[key] = _barh(key, t[key].column(label), [("At risk now", _col(t[key], "At risk now"),
                                                      ORANGE)], "dollars at risk", money=True)
    return out


def weekly_chart(t: Table) -> str:
    if not t.rows:
        return _no_data("weekly", "nothing in these periods")
    weeks = t.column("Week of")
    fig, ax = plt.subplots(figsize=(WIDTH, 2.2))
    ax.bar(range(len(weeks)), _col(t, "New alerts"), color=ORANGE, label="New alerts")
    ax.set_ylabel("new alerts")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xticks(range(len(weeks)), weeks, rotation=45, ha="right")
    ax2 = ax.twinx()
    ax2.plot(range(len(weeks)), _col(t, "At risk now"), color=BLUE, marker="o",
             label="At risk now ($)")
    ax2.set_ylabel("dollars at risk now")
    ax2.spines["top"].set_visible(False)
    ax2.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("${x:,.0f}"))
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], frameon=False, loc="upper left")
    return _svg(fig, "weekly")
