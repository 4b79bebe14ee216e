"""Observability: metrics (Prometheus), tracing (OpenTelemetry) and structured logs.

The mechanism is built once here; every transport uses it the same way (see
``docs/observability.md``).
"""

from __future__ import annotations

from wiremesh.observability.endpoint import MetricsEndpoint
from wiremesh.observability.logs import configure_logging
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.observability.tracing import configure as configure_tracing

__all__ = ["MeshMetrics", "MetricsEndpoint", "configure_logging", "configure_tracing"]
