"""What a gateway counts: WebSocket sessions, messages, bytes and close codes, refused
upgrades, HTTP answers and their latency; served as Prometheus text at ``/metrics``.

The hot paths add to plain integers (a message in, a message out); the counts become
metrics only when Prometheus scrapes, on the event loop that owns them. Names (all
``wiremesh_``; ``docs/observability.md`` lists them):

- ``ws_sessions{service}`` (gauge): open sessions held by this gateway
- ``ws_messages_total{direction}``, ``ws_bytes_total{direction}``: ``in`` from browsers,
  ``out`` to them
- ``ws_closes_total{code}``: sessions ended, by WebSocket close code
- ``ws_refused_total{status}``: upgrades refused before the WebSocket opened
- ``http_responses_total{status}``, ``http_request_seconds`` (histogram)
- ``channels`` (gauge): channels this gateway receives (one of its sessions subscribes);
  ``channel_subscriptions`` (gauge): its sessions' subscriptions
- ``channel_publications_total``: publications the channel engine handed this gateway;
  ``channel_refused_total{code}``: channel requests refused, by reply code
- ``registry_reachable``: 1 when the registry answered the last time it was asked, 0 while
  it does not (the gateway keeps routing on its last view meanwhile)
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wiremesh.observability.metrics import LATENCY_BUCKETS, RegistryReachable

__all__ = ["GatewayMeter"]


class GatewayMeter(Collector):
    """One gateway's counts, and the registry that exports them."""

    def __init__(
        self,
        sessions: Callable[[], Iterable[str]],
        *,
        reachable: Callable[[], bool] | None = None,
        channels: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        #: the channels received and the subscriptions held (read at scrape time)
        self._channels = channels
        self.publications = 0
        self.channel_refused: Tally[int] = Tally()
        #: yields the service of every open session (read at scrape time)
        self._sessions = sessions
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.closes: Tally[int] = Tally()
        self.refused: Tally[int] = Tally()
        self.http: Tally[int] = Tally()
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_seconds = Histogram(
            "wiremesh_http_request_seconds",
            "Time from an HTTP request's arrival to its answer's head, at the gateway",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)
        if reachable is not None:
            self.registry.register(RegistryReachable(reachable))

    def text(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "wiremesh_ws_sessions", "Open WebSocket sessions held here", labels=["service"]
        )
        for service, count in sorted(Tally(self._sessions()).items()):
            sessions.add_metric([service], count)
        yield sessions
        messages = CounterMetricFamily(
            "wiremesh_ws_messages",
            "WebSocket messages, from (in) and to (out) browsers",
            labels=["direction"],
        )
        messages.add_metric(["in"], self.messages_in)
        messages.add_metric(["out"], self.messages_out)
        yield messages
        size = CounterMetricFamily(
            "wiremesh_ws_bytes", "WebSocket payload bytes, in and out", labels=["direction"]
        )
        size.add_metric(["in"], self.bytes_in)
        size.add_metric(["out"], self.bytes_out)
        yield size
        yield _by("wiremesh_ws_closes", "Sessions ended, by close code", "code", self.closes)
        yield _by("wiremesh_ws_refused", "Upgrades refused, by HTTP status", "status", self.refused)
        yield _by("wiremesh_http_responses", "HTTP answers, by status", "status", self.http)
        if self._channels is not None:
            watched, subscriptions = self._channels()
            yield GaugeMetricFamily(
                "wiremesh_channels", "Channels this gateway receives", value=watched
            )
            yield GaugeMetricFamily(
                "wiremesh_channel_subscriptions",
                "Channel subscriptions of this gateway's sessions",
                value=subscriptions,
            )
        yield CounterMetricFamily(
            "wiremesh_channel_publications",
            "Publications the channel engine handed this gateway",
            value=self.publications,
        )
        yield _by(
            "wiremesh_channel_refused",
            "Channel requests refused, by reply code",
            "code",
            self.channel_refused,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration


def _by(name: str, documentation: str, label: str, counts: Tally[int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([str(key)], count)
    return family
