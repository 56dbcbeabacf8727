"""Import of CMS's published reference files into effective-dated rule tables.

`import_files()` recognises each file by its content (ASP crosswalk and payment limits,
PFS relative values and GPCIs, OPPS Addendum B, MUE, NCCI PTP, add-on codes), reads it as
CMS publishes it, sets aside unusable rows with file, line, column and reason, and
merges the rows into the tables of a rules directory (`tables.TABLES`). The command is
`chargecap rules import` (`stream_app.cms.command`); docs/rule-data.md has the
operator's routine.
"""

from stream_app.cms.importer import FileResult, ImportReport, SetAsideRow, import_files
from stream_app.cms.reading import CmsFileError
from stream_app.cms.tables import IMPORTED_TABLES, REPORT_FILE, TABLES

__all__ = [
    "IMPORTED_TABLES", "REPORT_FILE", "TABLES", "CmsFileError", "FileResult", "ImportReport",
    "SetAsideRow", "import_files",
]
