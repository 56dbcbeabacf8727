"""Checked access to library internals: the versions the seam was written against, and
replacements that fail loudly when their target is gone.

Assigning to a private attribute that an upstream release renamed does not fail: it
creates a new attribute nobody reads, and the behaviour it was meant to change quietly
reverts to the library's. Every replacement in the seam therefore goes through
`replace()` (an instance or class attribute) or `overrides()` (a subclass method), which
raise `SeamError` when the name does not exist, and the worker refuses to start on
library versions other than the ones in `CHECKED_VERSIONS` (`check_versions()`).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, TypeVar

# The distributions whose internals the seam touches, and the exact versions it was
# checked against (pyproject.toml pins the same).
CHECKED_VERSIONS: Mapping[str, str] = {
    "faust-streaming": "0.15.3",
    "aiokafka": "0.14.0",
    "rocksdict": "0.3.29",
}

T = TypeVar("T")


class SeamError(RuntimeError):
    """A library internal the worker relies on is missing or of an unchecked version."""


def installed_versions(names=None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names or CHECKED_VERSIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_versions(installed: Mapping[str, str | None] | None = None) -> None:
    """Raise SeamError naming installed and supported versions unless every library is at
    the version the seam was checked against."""
    installed = installed_versions() if installed is None else installed
    wrong = {n: installed.get(n) for n, v in CHECKED_VERSIONS.items() if installed.get(n) != v}
    if wrong:
        found = ", ".join(f"{n} {v or 'not installed'}" for n, v in wrong.items())
        supported = ", ".join(f"{n}=={v}" for n, v in CHECKED_VERSIONS.items())
        raise SeamError(
            f"library versions not checked against the worker's seam "
            f"(stream_app/streaming/seam): installed {found}; supported {supported}")


def require(target: Any, *names: str) -> None:
    """Raise SeamError unless `target` (an object or class) has every attribute."""
    missing = [n for n in names if not hasattr(target, n)]
    if missing:
        raise SeamError(f"{_name(target)} has no {', '.join(missing)}: the library changed; "
                        f"the seam must be checked against it again")


def replace(target: Any, name: str, value: Any) -> Any:
    """Set an attribute that must already exist; return its previous value."""
    require(target, name)
    old = getattr(target, name)
    setattr(target, name, value)
    return old


def overrides(base: type, *names: str) -> Callable[[T], T]:
    """Class decorator: the subclass's `names` must override attributes `base` has (a
    renamed upstream method would otherwise leave the override uncalled)."""
    def check(cls: T) -> T:
        require(base, *names)
        undefined = [n for n in names if n not in vars(cls)]
        if undefined:
            raise SeamError(f"{cls.__qualname__} does not define {', '.join(undefined)}")
        return cls
    return check


def fingerprint(fn: Callable) -> str:
    """sha256 of a function's source: the surface test compares it with the one the seam
    was checked against, for every upstream function the seam copies or replaces."""
    return hashlib.sha256(inspect.getsource(fn).encode("utf-8")).hexdigest()


def _name(target: Any) -> str:
    cls = target if isinstance(target, type) else type(target)
    return f"{cls.__module__}.{cls.__qualname__}"
