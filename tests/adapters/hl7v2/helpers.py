"""Paths and site tables shared by the HL7 v2 adapter tests (data read from ../shared/)."""

from __future__ import annotations

import csv
from pathlib import Path

from stream_app.adapters.hl7v2 import adapt
from stream_app.adapters.site import SiteConfig

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "hl7v2" / "samples"
EXAMPLES = SHARED / "spec" / "examples"


def site(**rows) -> SiteConfig:
    """The packaged rows merged with the given site rows (dicts with the CSV headers' keys)."""
    return SiteConfig.packaged().merged(SiteConfig.from_rows(**rows))


def example_site() -> SiteConfig:
    """The four site rows of examples/site/ (ehr-mapping §7)."""
    rows = {}
    for path in (EXAMPLES / "site").glob("*.csv"):
        with path.open(newline="") as fh:
            rows[path.stem] = list(csv.DictReader(fh))
    return site(**rows)


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.hl7").read_bytes()


def one_record(raw: bytes, config: SiteConfig | None = None, **kw) -> dict:
    out = adapt(raw, config or SiteConfig.packaged(), **kw)
    assert out.dead_letters == [], [(d.error_code, d.error, d.field) for d in out.dead_letters]
    assert len(out.records) == 1, out.records
    return out.records[0]


def one_dead_letter(raw: bytes, config: SiteConfig | None = None, **kw):
    out = adapt(raw, config or SiteConfig.packaged(), **kw)
    assert out.records == []
    assert len(out.dead_letters) == 1, out.dead_letters
    return out.dead_letters[0]


def row(**cells) -> dict:
    """A site CSV row; effective dates open unless given."""
    return {"effective_from": "", "effective_to": "", **cells}
