"""Normalisation of raw record values (contract.md §2, billing-rules.md §6, §8).

Pure functions; each returns None for a value it cannot normalise, never raises.
"""

from __future__ import annotations

from datetime import date, datetime

# Canonical routes.
IM = "IM"
SC = "SC"
IV_PUSH = "IV_PUSH"
IV_INFUSION = "IV_INFUSION"
IV = "IV"
INTRA_ARTERIAL = "INTRA_ARTERIAL"
INTRADERMAL = "INTRADERMAL"
INTRA_ARTICULAR = "INTRA_ARTICULAR"
ORAL = "ORAL"
OTHER = "OTHER"
ROUTES = (IM, SC, IV_PUSH, IV_INFUSION, IV, INTRA_ARTERIAL, INTRADERMAL, INTRA_ARTICULAR, ORAL,
          OTHER)


def normalize_route(raw: str | None) -> str | None:
    """Canonical route for a raw route string (case-insensitive, synonyms), else None."""
    raise NotImplementedError


def resolve_iv(route: str, occurred_at: datetime, ended_at: datetime | None) -> str | None:
    """IV and IV_INFUSION by duration: <= 15 min is IV_PUSH, longer is IV_INFUSION.

    Returns None when the route needs a duration (IV, IV_INFUSION) and ended_at is missing.
    Other routes are returned unchanged.
    """
    raise NotImplementedError


def ndc_to_11(raw: str | None) -> str | None:
    """NDC in 4-4-2 / 5-3-2 / 5-4-1 (hyphenated) or 11 digits (hyphens optional) -> 11 digits."""
    raise NotImplementedError


def npi_valid(npi: str | None) -> bool:
    """10 digits, Luhn check digit over the prefix 80840 + first 9 digits."""
    raise NotImplementedError


def icd10cm_shaped(code: str | None) -> bool:
    """A letter, a digit, a letter or digit, then optionally a dot and 1-4 letters/digits."""
    raise NotImplementedError


def service_date(occurred_at: datetime, tz: str) -> date:
    """Calendar date of occurred_at in the IANA zone tz (DST-correct)."""
    raise NotImplementedError
