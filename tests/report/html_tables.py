"""Reads the report's HTML tables back as numbers (stdlib parser, nothing from the report)."""

from __future__ import annotations

import re
from html.parser import HTMLParser


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._kind = ""
        self._empty = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id", "").startswith("table-"):
            self._table = a["id"][len("table-"):]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._kind = a.get("class", "")
            if "colspan" in a:  # the "none in this period" row of an empty table
                self._empty = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            # text columns (labels such as modifier 25 or an NPI) stay strings
            self._row.append(text if "text" in self._kind.split() else value(text))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if not self._empty:
                self.tables[self._table].append(self._row)
            self._row = None
            self._empty = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def value(cell: str):
    """'$1,234.56' -> 1234.56, '83.5 %' -> 0.835, '12.5 h' -> 12.5, '1,234' -> 1234,
    '—' -> None, else the text."""
    if cell == "—":
        return None
    if re.fullmatch(r"\$-?[\d,]+\.\d\d", cell):
        return float(cell[1:].replace(",", ""))
    if re.fullmatch(r"-?[\d.]+ %", cell):
        return float(cell[:-2]) / 100
    if re.fullmatch(r"-?[\d,]+\.\d h", cell):
        return float(cell[:-2].replace(",", ""))
    if re.fullmatch(r"-?[\d,]+", cell):
        return int(cell.replace(",", ""))
    return cell


def tables(html: str) -> dict[str, list[list]]:
    """Table id (without 'table-') -> body rows of parsed values (the header row dropped)."""
    p = _Tables()
    p.feed(html)
    return {k: rows[1:] for k, rows in p.tables.items()}
