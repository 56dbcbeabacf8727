"""Shared by the CMS import tests: where the real files are, and look-ups on the written
tables done with the csv module only (independent of the importer's code)."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

CMS = Path(__file__).resolve().parents[2].parent / "shared" / "cms"
Q2025 = CMS / "2025-q1"
Q2026 = CMS / "2026-q1"
PFS2025 = CMS / "pfs-2025"


def require_shared() -> None:
    assert CMS.is_dir(), f"{CMS} missing: shared/ must sit beside the clone"


def table_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def in_force(rows: list[dict[str, str]], on: date, **match: str) -> list[dict[str, str]]:
    """Rows matching every column=value whose effective_from..effective_to holds `on`."""
    found = []
    for row in rows:
        if any(row[k] != v for k, v in match.items()):
            continue
        start = date.fromisoformat(row["effective_from"]) if row["effective_from"] else date.min
        end = date.fromisoformat(row["effective_to"]) if row["effective_to"] else date.max
        if start <= on <= end:
            found.append(row)
    return found


def physical_line(path: Path, needle: str) -> int:
    """1-based line of the first line containing needle (the CMS files are cp1252)."""
    with path.open(encoding="cp1252", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if needle in line:
                return number
    raise AssertionError(f"{needle!r} not in {path}")
