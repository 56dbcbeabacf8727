"""The charge-capture audit report (`chargecap report`): sources → SQL figures → charts → HTML/PDF.

Modules: `sources` (replay directory or work-queue PostgreSQL into one DuckDB shape),
`figures` (every figure as SQL), `charts` (matplotlib SVG), `render` (the HTML page),
`pdf` (Chromium's print), `command` (flags and `run`).
"""
