"""Choosing between an implementation's fast form and its default by an environment
variable (``WIREMESH_LOOP``, ``WIREMESH_HTTP_PARSER``): values in, a name or an error out.
"""

from __future__ import annotations

from wiremesh.errors import ConfigError

__all__ = ["fast_or_default"]


def fast_or_default(
    variable: str, value: str | None, *, default: str, fast: str, installed: bool
) -> str:
    """``fast`` or ``default``, as ``variable`` holding ``value`` asks: ``auto`` (also when
    unset or empty) takes ``fast`` when it is ``installed``. A value not known, or ``fast``
    asked for and not installed, is a :class:`~wiremesh.errors.ConfigError`."""
    wanted = (value or "").strip().lower() or "auto"
    known = ("auto", default, fast)
    if wanted not in known:
        raise ConfigError(f"{variable}={wanted!r}: expected one of {', '.join(known)}")
    if wanted == fast and not installed:
        raise ConfigError(
            f"{variable}={fast} but {fast} is not installed: pip install 'wiremesh[speed]'"
        )
    return fast if installed and wanted != default else default
