"""Reading CMS files as CMS publishes them.

CMS CSVs come with title and note lines above the header, quoted header cells with line
breaks, hundreds of trailing empty columns, cp1252 bytes (non-breaking spaces, (R), TM),
and note lines after the data. This module turns bytes into rows with their physical
line numbers and normalises header and cell text; recognising *which* file it is and
validating the rows is `kinds.py`'s job.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

_MONTHS = {m: i for i, m in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"), start=1)}
_LONG_DATE = r"([A-Za-z]+)\.?\s+(\d{1,2}),?\s+(\d{4})"
_EFFECTIVE_RE = re.compile(
    rf"effective\s+(?:from\s+)?{_LONG_DATE}\s+(?:through|thru|to|until|-|–)\s+{_LONG_DATE}",
    re.IGNORECASE)


class CmsFileError(ValueError):
    """A file that cannot be imported as a whole (unreadable, unrecognised, no period)."""

    def __init__(self, path: str | Path, message: str):
        self.path, self.message = str(path), message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class RawRow:
    line: int  # physical 1-based line where the row starts
    cells: tuple[str, ...]  # stripped cell text, trailing empty cells dropped


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding). UTF-8 first (with or without BOM); CMS's Windows exports are
    cp1252; latin-1 only for bytes cp1252 leaves undefined (it never fails)."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding), encoding.removesuffix("-sig")
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"


def clean(cell: str) -> str:
    """Cell text with surrounding whitespace (non-breaking spaces included) removed and
    inner runs of whitespace, line breaks and non-breaking spaces collapsed to one space."""
    return " ".join(cell.split())


def header_name(cell: str) -> str:
    """Header cell as matched against a layout: whitespace collapsed, casefolded."""
    return clean(cell).casefold()


def read_rows(path: Path) -> tuple[list[RawRow], str]:
    """Every non-blank row of the file with its physical line number, and the encoding.

    Tab-separated files (NCCI PTP text files) are told from CSV by the first lines.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CmsFileError(path, f"cannot read: {exc.strerror or exc}") from None
    text, encoding = decode(data)
    head = text[:20_000]
    delimiter = "\t" if head.count("\t") > head.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[RawRow] = []
    previous_end = 0
    try:
        for cells in reader:
            line = previous_end + 1
            previous_end = reader.line_num
            end = len(cells)
            while end and not cells[end - 1]:
                end -= 1  # CMS pads rows with up to 250 empty columns
            stripped = tuple(clean(c) if c else "" for c in cells[:end])
            if any(stripped):
                rows.append(RawRow(line, stripped))
    except csv.Error as exc:
        raise CmsFileError(path, f"line {previous_end + 1}: CSV syntax error: {exc}") from None
    return rows, encoding


def long_date(month: str, day: str, year: str) -> date | None:
    number = _MONTHS.get(month.casefold())
    if number is None:
        return None
    try:
        return date(int(year), number, int(day))
    except ValueError:
        return None


def stated_period(text: str) -> tuple[date, date] | None:
    """'Effective January 1, 2025 through March 31, 2025' anywhere in the text."""
    for m in _EFFECTIVE_RE.finditer(text):
        start, end = long_date(*m.group(1, 2, 3)), long_date(*m.group(4, 5, 6))
        if start and end and start <= end:
            return start, end
    return None


def decimal_text(raw: str, *, money: bool = False) -> str | None:
    """The number in raw as plain text ('$11,340.57' -> '11340.57' when money), or None
    when raw is not a finite, non-negative number."""
    text = raw
    if money:
        text = text.replace("$", "").replace(",", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0:
        return None
    return text


def compact_date(raw: str) -> date | None:
    """YYYYMMDD (NCCI), YYYYDDD (Julian, NCCI add-on file), ISO or MM/DD/YYYY; None when
    the text is none of these or not a calendar date."""
    try:
        if re.fullmatch(r"\d{8}", raw):
            return date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
        if re.fullmatch(r"\d{7}", raw):
            year, day = int(raw[:4]), int(raw[4:])
            if not 1 <= day <= (366 if date(year, 12, 31).timetuple().tm_yday == 366 else 365):
                return None
            return date.fromordinal(date(year, 1, 1).toordinal() + day - 1)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            return date.fromisoformat(raw)
        m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", raw)
        if m:
            return date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
    except ValueError:
        return None
    return None
