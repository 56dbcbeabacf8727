"""Rule directories built by `chargecap rules import` from the real CMS files of
../shared/cms (never copied into the repository), for the engine tests of the rules that
use CMS data. NCCI PTP and MUE files are not available: `with_ptp_examples` writes a
small file in the published PTP layout whose EVERY VALUE IS AN EXAMPLE, not a CMS edit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stream_app.cms import import_files

CMS = Path(__file__).resolve().parents[2].parent / "shared" / "cms"
Q2025 = CMS / "2025-q1"
Q2026 = CMS / "2026-q1"
PFS2025 = CMS / "pfs-2025"

_IMPORTED: dict[str, Path] = {}


def imported_rules_dir() -> Path:
    """January 2025 and January 2026 ASP files, Addendum B, PFS 2025 RVUs and GPCIs,
    imported once per test process into a temporary directory."""
    if "dir" not in _IMPORTED:
        assert CMS.is_dir(), f"{CMS} missing: shared/ must sit beside the clone"
        into = Path(tempfile.mkdtemp(prefix="chargecap-cms-"))
        import_files([Q2025, Q2026, PFS2025], into)
        _IMPORTED["dir"] = into
    return _IMPORTED["dir"]


PTP_HEADER = "\t".join([
    "Column 1", "Column 2", "*=in existence prior to 1996", "Effective Date",
    "Deletion Date *=no data", "Modifier 0=not allowed 1=allowed 9=not applicable",
    "PTP Edit Rationale"])


def with_ptp_examples(into: Path, edits: list[tuple], effective: str = "20250101") -> Path:
    """A copy of the imported directory plus NCCI PTP edits imported from a
    tab-separated file in CMS's practitioner PTP layout. `edits`: (column 1, column 2,
    modifier indicator[, effective date YYYYMMDD]) — EXAMPLE pairs, not CMS edits."""
    shutil.copytree(imported_rules_dir(), into, dirs_exist_ok=True)
    lines = ["CPT codes and descriptions only are copyright American Medical Association.",
             "", PTP_HEADER]
    for c1, c2, ind, *start in edits:
        lines.append("\t".join([c1, c2, "", start[0] if start else effective, "*", str(ind),
                                "EXAMPLE edit, not CMS data"]))
    source = into.parent / f"{into.name}-ptp-example.txt"
    source.write_text("\r\n".join(lines) + "\r\n", encoding="cp1252")
    import_files([source], into)
    return into
