"""The ``[observability]`` table of ``wiremesh.toml`` (``docs/observability.md``): apart
from the rest of the configuration (:mod:`wiremesh.runtime.settings`), so that a node
process reads it without loading every other table's model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["ObservabilitySettings"]


class ObservabilitySettings(BaseModel):
    """The ``[observability]`` table: metrics, tracing and logs (``docs/observability.md``)."""

    model_config = ConfigDict(extra="forbid")

    #: Each node serves Prometheus text at ``/metrics`` (on a free port, advertised in the
    #: registry; ``wiremesh top`` and ``wiremesh nodes --json`` show it).
    metrics: bool = True
    #: The host the ``/metrics`` endpoints listen on (``mesh.host`` when empty).
    metrics_host: str = ""
    #: ``none``, ``console`` (spans printed) or ``otlp`` (needs ``wiremesh[otel]``).
    tracing: Literal["none", "console", "otlp"] = "none"
    #: Where the OTLP exporter sends spans (gRPC); the exporter's default when empty.
    otlp_endpoint: str = ""
    #: ``plain`` lines or ``json`` (one object per line, with trace ids).
    log_format: Literal["plain", "json"] = "plain"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
