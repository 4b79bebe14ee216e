"""Prometheus metrics: what a node (or a gateway) counts, and the ``/metrics`` endpoint.

Every process part that serves or calls owns one :class:`MeshMetrics`, with a registry of
its own, so that several nodes in one process (tests, benchmarks) never mix their figures.
Hot paths touch only pre-bound children: a :class:`MethodMetrics` per method and side
(handled here, or called from here), fetched once and kept by whoever calls.

Counters a node already keeps as plain integers (publish, links, ...) are not counted
twice: :class:`StatsCollector` reads them when Prometheus scrapes.

:class:`~wiremesh.observability.endpoint.MetricsEndpoint` serves a node's ``/metrics``.

Names (all prefixed ``wiremesh_``; ``docs/observability.md`` lists them with their labels):

- ``calls_handled_total{service,method,status}``, ``call_handle_seconds{service,method}``
- ``calls_made_total{service,method,status}``, ``call_seconds{service,method}``
- ``multicasts_total{service,method,mode}``, ``multicast_replies_total{service,method,outcome}``
- ``node_<stat>`` for each of the node's counters (``node_publish_dropped_total``, ...)
- ``link_queued_frames{peer}``: frames waiting on each mesh link
- ``bulkhead_running{service,method}``, ``bulkhead_waiting{…}``, ``bulkhead_refused_total{…}``:
  the methods with a bulkhead (``@rpc(max_concurrency=…)``)
- ``circuit_state{service,node,state}``, ``circuits_opened_total{service}``: this caller's
  circuits that are not closed, and how often they opened (``core/breaker.py``)
- ``registry_reachable``: 1 when the registry answered the last time it was asked, 0 while
  it does not (the node keeps its last view of the mesh meanwhile)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "LATENCY_BUCKETS",
    "METRICS_KEY",
    "BreakerCollector",
    "BulkheadCollector",
    "MeshMetrics",
    "MethodMetrics",
    "RegistryReachable",
    "StatsCollector",
]

log = logging.getLogger("wiremesh.metrics")

#: NodeInfo metadata key: the node's ``/metrics`` address, ``host:port``
METRICS_KEY = "wm-metrics"

#: seconds; from well under a loopback round trip to past the default 10 s deadline
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class MethodMetrics:
    """The bound children for one method on one side: count by status, and latency."""

    __slots__ = ("_counter", "_counts", "_labels", "_seconds")

    def __init__(self, counter: Counter, seconds: Histogram, service: str, method: str) -> None:
        self._counter = counter
        self._labels = (service, method)
        self._counts: dict[str, Any] = {}
        self._seconds = seconds.labels(service, method)

    def observe(self, status: str, seconds: float) -> None:
        """One call ended with ``status`` (``ok`` or an error status) after ``seconds``."""
        child = self._counts.get(status)
        if child is None:
            child = self._counts[status] = self._counter.labels(*self._labels, status)
        child.inc()
        self._seconds.observe(seconds)


class MeshMetrics:
    """The metrics of one node, gateway or client, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_handled = Counter(
            "wiremesh_calls_handled",
            "Calls this node's handlers answered, by outcome",
            ["service", "method", "status"],
            registry=r,
        )
        self.handle_seconds = Histogram(
            "wiremesh_call_handle_seconds",
            "Time from a request's arrival to its answer, on the serving node",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.calls_made = Counter(
            "wiremesh_calls_made",
            "Calls made from here, by outcome (after retries)",
            ["service", "method", "status"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "wiremesh_call_seconds",
            "Time a call took, seen by the caller (retries included)",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.multicasts = Counter(
            "wiremesh_multicasts",
            "Multicasts made from here",
            ["service", "method", "mode"],
            registry=r,
        )
        self.multicast_replies = Counter(
            "wiremesh_multicast_replies",
            "Per-node outcomes of multicasts: ok, error, deadline or skipped",
            ["service", "method", "outcome"],
            registry=r,
        )
        self._handled: dict[tuple[str, str], MethodMetrics] = {}
        self._made: dict[tuple[str, str], MethodMetrics] = {}

    def handled(self, service: str, method: str) -> MethodMetrics:
        """The serving side's children for ``service.method`` (made once)."""
        found = self._handled.get((service, method))
        if found is None:
            found = MethodMetrics(self.calls_handled, self.handle_seconds, service, method)
            self._handled[(service, method)] = found
        return found

    def made(self, service: str, method: str) -> MethodMetrics:
        """The calling side's children for ``service.method`` (made once)."""
        found = self._made.get((service, method))
        if found is None:
            found = MethodMetrics(self.calls_made, self.call_seconds, service, method)
            self._made[(service, method)] = found
        return found

    def multicast(self, service: str, method: str, mode: str, outcomes: Mapping[str, int]) -> None:
        """One multicast ended; ``outcomes`` counts its nodes by outcome."""
        self.multicasts.labels(service, method, mode).inc()
        for outcome, count in outcomes.items():
            if count:
                self.multicast_replies.labels(service, method, outcome).inc(count)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class StatsCollector(Collector):
    """Counters a node keeps as plain integers, read when Prometheus scrapes.

    ``read()`` gives the node's counters (each becomes ``wiremesh_node_<name>``, a gauge
    when its name is in ``gauges``) and the frames waiting on each mesh link, by peer.
    With ``loop``, ``read`` runs on that event loop (the scrape comes from the endpoint's
    thread, and the node's structures belong to the loop).
    """

    def __init__(
        self,
        read: Callable[[], tuple[Mapping[str, int], Iterable[tuple[str, int]]]],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        gauges: Iterable[str] = (),
    ) -> None:
        self._read = read
        self._loop = loop
        self._gauges = frozenset(gauges)

    def _snapshot(self) -> tuple[Mapping[str, int], list[tuple[str, int]]]:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            stats, queues = self._read()
            return stats, list(queues)
        if loop.is_closed():
            return {}, []

        async def read() -> tuple[Mapping[str, int], list[tuple[str, int]]]:
            stats, queues = self._read()
            return dict(stats), list(queues)

        try:
            return asyncio.run_coroutine_threadsafe(read(), loop).result(timeout=2.0)
        except Exception:  # the loop is stopping or too busy: report what is sure
            return {}, []

    def collect(self) -> Iterator[Metric]:
        stats, queues = self._snapshot()
        for name, value in sorted(stats.items()):
            metric = f"wiremesh_node_{name}"
            if name in self._gauges:
                gauge = GaugeMetricFamily(metric, f"node counter {name} (now)")
                gauge.add_metric([], value)
                yield gauge
            else:
                counter = CounterMetricFamily(metric, f"node counter {name}")
                counter.add_metric([], value)
                yield counter
        queued = GaugeMetricFamily(
            "wiremesh_link_queued_frames",
            "Frames waiting to be written on a mesh link",
            labels=["peer"],
        )
        for peer, depth in queues:
            queued.add_metric([peer], depth)
        yield queued

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration


class BulkheadCollector(Collector):
    """The bulkheads of a node's methods (``@rpc(max_concurrency=…)``), read when
    Prometheus scrapes: ``wiremesh_bulkhead_running`` and ``wiremesh_bulkhead_waiting``
    (gauges) and ``wiremesh_bulkhead_refused_total``, by service and method.
    ``bulkheads`` gives each method's (service, method, running, waiting, refused): plain
    integers, safe to read from the endpoint's thread."""

    def __init__(self, bulkheads: Callable[[], Iterable[tuple[str, str, int, int, int]]]) -> None:
        self._bulkheads = bulkheads

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "method"]
        running = GaugeMetricFamily(
            "wiremesh_bulkhead_running", "Calls running under a method's bulkhead", labels=labels
        )
        waiting = GaugeMetricFamily(
            "wiremesh_bulkhead_waiting",
            "Calls waiting for a slot of a method's bulkhead",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "wiremesh_bulkhead_refused",
            "Calls a method's full bulkhead refused, unrun (Overloaded)",
            labels=labels,
        )
        for service, method, now_running, now_waiting, total_refused in self._bulkheads():
            running.add_metric([service, method], now_running)
            waiting.add_metric([service, method], now_waiting)
            refused.add_metric([service, method], total_refused)
        yield running
        yield waiting
        yield refused

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration


class BreakerCollector(Collector):
    """A caller's circuits (:mod:`wiremesh.core.breaker`), read when Prometheus scrapes:
    ``wiremesh_circuit_state{service,node,state}`` (1 for each circuit that is ``open`` or
    ``half_open``; a closed circuit is not listed) and
    ``wiremesh_circuits_opened_total{service}``. ``read`` gives both: the circuits that
    are not closed as (service, node, state), and the openings by service."""

    def __init__(
        self, read: Callable[[], tuple[Iterable[tuple[str, str, str]], Mapping[str, int]]]
    ) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        circuits, opened = self._read()
        state = GaugeMetricFamily(
            "wiremesh_circuit_state",
            "This caller's circuits to the nodes it calls that are not closed",
            labels=["service", "node", "state"],
        )
        for service, node, name in circuits:
            state.add_metric([service, node, name], 1)
        total = CounterMetricFamily(
            "wiremesh_circuits_opened",
            "Times a circuit of this caller to a node of the service opened",
            labels=["service"],
        )
        for service, count in sorted(opened.items()):
            total.add_metric([service], count)
        yield state
        yield total

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration


class RegistryReachable(Collector):
    """``wiremesh_registry_reachable``: whether the registry answered the last time it was
    asked, read when Prometheus scrapes (``reachable`` is
    :attr:`~wiremesh.registry.view.MeshView.reachable`, a plain attribute: safe to read
    from the endpoint's thread)."""

    NAME = "wiremesh_registry_reachable"

    def __init__(self, reachable: Callable[[], bool]) -> None:
        self._reachable = reachable

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            self.NAME,
            "1 when the registry answered the last time it was asked, 0 while it does not "
            "(the last view of the mesh is kept meanwhile)",
        )
        gauge.add_metric([], 1 if self._reachable() else 0)
        yield gauge

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
