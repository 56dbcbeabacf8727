"""The packaged rule data (CSV tables, derivation.json) and its loader, `load_rules`."""

from stream_app.rules.loader import DERIVATION_FILE, RULE_FILES, TABLES, load_rules

__all__ = ["DERIVATION_FILE", "RULE_FILES", "TABLES", "load_rules"]
