"""FHIR R4 input adapter (ehr-mapping.md §3): `adapt` for one resource or Bundle,
`adapt_bulk` / `index_bulk` for Bulk Data NDJSON exports. The rules are in `mapping.py`."""

from stream_app.adapters.fhir.adapter import adapt
from stream_app.adapters.fhir.bulk import BulkIndex, adapt_bulk, index_bulk

__all__ = ["BulkIndex", "adapt", "adapt_bulk", "index_bulk"]
