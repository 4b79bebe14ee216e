"""Rates and percentiles from two readings of a node's Prometheus counters (no I/O).

``wiremesh top`` reads each node's ``/metrics`` every interval; :func:`reading` keeps
what it needs of one scrape's samples (parsed by :mod:`wiremesh.observability.scrape`:
the core imports no Prometheus code), and :func:`figures` turns two readings into what the view
shows: calls per second, errors per second, latency percentiles over the interval (from
the histogram's bucket counts, interpolated inside a bucket as Prometheus'
``histogram_quantile`` does), and the node's publish drops and link queues.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Figures", "Reading", "Sample", "figures", "quantile", "reading"]

_HANDLED = "wiremesh_calls_handled"
_SECONDS = "wiremesh_call_handle_seconds"
#: publishes a node lost, sending (link full) and receiving (handlers behind)
_DROPS = ("wiremesh_node_publish_dropped", "wiremesh_node_publish_delivery_dropped")


@dataclass
class Reading:
    """What one scrape of a node says, summed over its methods."""

    at: float
    calls: float = 0.0
    errors: float = 0.0
    #: cumulative histogram: upper bound -> calls that took at most that long
    buckets: dict[float, float] = field(default_factory=dict)
    publish_dropped: float = 0.0
    link_queued: float = 0.0
    #: the node's mesh links: peer node id -> frames waiting on that link
    peers: dict[str, float] = field(default_factory=dict)
    #: the node's circuits to the nodes it calls that are not closed: node id -> state
    circuits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Figures:
    calls_per_s: float
    errors_per_s: float
    #: seconds; None when no call ended in the interval
    p50: float | None
    p99: float | None
    publish_dropped: float
    link_queued: float
    #: the node's circuits that are not closed (node id -> ``open`` or ``half_open``)
    circuits: dict[str, str] = field(default_factory=dict)


class Sample(Protocol):
    """One sample of a scrape, as the Prometheus text parser gives it."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def value(self) -> float: ...


def reading(samples: Iterable[Sample], at: float) -> Reading:
    """What one scrape's ``samples``, taken at ``at`` (seconds on any steady clock), say."""
    found = Reading(at=at)
    for sample in samples:
        name, labels, value = sample.name, sample.labels, sample.value
        if name == f"{_HANDLED}_total":
            found.calls += value
            if labels.get("status") != "ok":
                found.errors += value
        elif name == f"{_SECONDS}_bucket":
            bound = float(labels["le"])
            found.buckets[bound] = found.buckets.get(bound, 0.0) + value
        elif name.removesuffix("_total") in _DROPS:
            found.publish_dropped += value
        elif name == "wiremesh_circuit_state" and value:
            found.circuits[labels.get("node", "")] = labels.get("state", "")
        elif name == "wiremesh_link_queued_frames":
            found.link_queued += value
            found.peers[labels.get("peer", "")] = value
    return found


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile (0..1) of a cumulative histogram, or None when it is empty."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bucket: its bound is all we know
            inside = count - below
            if inside <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / inside
        lower, below = bound, count
    return lower


def figures(before: Reading, after: Reading) -> Figures:
    """What happened between two readings of the same node."""
    seconds = max(after.at - before.at, 1e-9)
    # counters restart from zero when a node restarts under the same id: no negative rates
    calls = max(after.calls - before.calls, 0.0)
    errors = max(after.errors - before.errors, 0.0)
    delta = {
        bound: max(count - before.buckets.get(bound, 0.0), 0.0)
        for bound, count in after.buckets.items()
    }
    return Figures(
        calls_per_s=calls / seconds,
        errors_per_s=errors / seconds,
        p50=quantile(0.5, delta),
        p99=quantile(0.99, delta),
        publish_dropped=after.publish_dropped,
        link_queued=after.link_queued,
        circuits=dict(after.circuits),
    )
