"""Importing the service classes that ``module:Class`` targets name."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from wiremesh.errors import ConfigError
from wiremesh.service import Service

__all__ = ["load_service_class"]


def load_service_class(target: str, python_path: Iterable[Path] = ()) -> type[Service]:
    """The :class:`Service` subclass ``target`` names; a clear :class:`ConfigError` when the
    module does not import, the class is missing, or it is not a service."""
    for folder in python_path:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"bad target {target!r}: expected 'module.path:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for target {target!r}: {exc}") from None
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name!r} for target {target!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"module {module_name!r} has no {class_name!r} (target {target!r})")
    if not (isinstance(cls, type) and issubclass(cls, Service)):
        raise ConfigError(f"target {target!r} is not a wiremesh.Service subclass")
    return cls
