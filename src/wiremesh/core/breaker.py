"""Circuit breaking: a caller stops sending to a node whose calls keep failing, for a while.

A caller keeps one circuit per node it calls (per caller and target node: a node that
fails for one caller may serve another well). Everything that decides lives here;
:mod:`wiremesh.transport.client` asks before it picks a node and reports each outcome.
Nothing here reads a clock: times are passed in.

Theory of operation:

1. **Closed** (the normal state): calls go through. Each outcome that says the node is in
   trouble counts as a failure: ``unavailable`` (not a bulkhead's refusal, which says only
   that it is busy), ``deadline_exceeded`` and ``internal``. A handler's domain error, a bad
   payload, a refusal of access or a cancelled call says nothing about the node's health and
   counts as a success. The circuit opens after ``failures`` failures in a row, or when at
   least ``failure_rate`` of the last ``window`` calls failed (once it has seen ``window``).
2. **Open**: the caller's balancer leaves the node out for ``open_for`` seconds; calls go
   to the service's other nodes. When every node of the service is open, a call fails at
   once with ``Unavailable`` (it does not wait for a node known to be failing); a call
   named for an open node fails at once too.
3. **Half-open**: when ``open_for`` has passed, one call (the probe) goes to the node;
   the others still go elsewhere. Its success closes the circuit and forgets the past;
   its failure opens it again for twice as long as the last time, ``max_open_for`` at
   most.

With the defaults (5 in a row, or half of the last 20; 5 s open, at most 60 s), a node
that fails every call is left out after its fifth failed call, probed 5 s later, then
10, 20, 40 and 60 s later while it stays down, and used again as soon as a probe
succeeds.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from wiremesh.errors import Status

__all__ = [
    "BREAKER_FAILURES",
    "BREAKER_FAILURE_RATE",
    "BREAKER_MAX_OPEN_FOR",
    "BREAKER_OPEN_FOR",
    "BREAKER_WINDOW",
    "BreakerSettings",
    "Breakers",
    "Circuit",
    "State",
    "counts_as_failure",
]

#: failures in a row that open a circuit
BREAKER_FAILURES = 5
#: the share of failures over the last ``window`` calls that opens a circuit
BREAKER_FAILURE_RATE = 0.5
#: the calls the failure rate is measured over
BREAKER_WINDOW = 20
#: seconds a circuit first stays open before a probe
BREAKER_OPEN_FOR = 5.0
#: seconds a circuit stays open at most (the time doubles with each failed probe)
BREAKER_MAX_OPEN_FOR = 60.0

_FAILURES = frozenset({Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.INTERNAL})


def counts_as_failure(status: Status, *, refused: bool = False) -> bool:
    """Whether a call that ended with ``status`` says its node is in trouble (a
    bulkhead's refusal, ``refused``, does not)."""
    return status in _FAILURES and not refused


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a caller's circuit to a node opens, and for how long (``enabled=False``: never)."""

    enabled: bool = True
    failures: int = BREAKER_FAILURES
    failure_rate: float = BREAKER_FAILURE_RATE
    window: int = BREAKER_WINDOW
    open_for: float = BREAKER_OPEN_FOR
    max_open_for: float = BREAKER_MAX_OPEN_FOR

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError(f"breaker failures must be at least 1, not {self.failures}")
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"breaker failure_rate is in (0, 1], not {self.failure_rate}")
        if self.window < 1:
            raise ValueError(f"breaker window must be at least 1, not {self.window}")
        if not 0 < self.open_for <= self.max_open_for or math.isinf(self.max_open_for):
            raise ValueError(
                "breaker open_for must be more than 0 and at most max_open_for (finite), "
                f"not {self.open_for} and {self.max_open_for}"
            )


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Circuit:
    """One caller's circuit to one node."""

    settings: BreakerSettings
    state: State = State.CLOSED
    #: failures in a row
    in_a_row: int = 0
    #: the last ``window`` outcomes, True for a failure
    recent: deque[bool] = field(default_factory=deque)
    failed_in_window: int = 0
    #: while open: when the probe may go
    until: float = 0.0
    #: how long it stays open the next time it opens from half-open
    open_for: float = 0.0
    #: whether the half-open probe is out
    probing: bool = False

    def allows(self, now: float) -> bool:
        """Whether a call may go to the node now (and, half-open, takes the probe's turn:
        report its outcome)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if now < self.until:
                return False
            self.state = State.HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def is_open(self, now: float) -> bool:
        """Whether the balancer leaves the node out now (open, or half-open with its probe
        out); an open circuit whose time is up is not: its next call is the probe."""
        if self.state is State.OPEN:
            return now < self.until
        return self.state is State.HALF_OPEN and self.probing

    def record(self, failed: bool, now: float) -> bool:
        """A call to the node ended; True when this opened the circuit."""
        settings = self.settings
        if self.state is State.HALF_OPEN:
            if failed:
                self.open_for = min(self.open_for * 2, settings.max_open_for)
                return self._open(now)
            self._close()
            return False
        if self.state is State.OPEN:
            return False  # a call sent before it opened: it is open already
        recent = self.recent
        recent.append(failed)
        self.failed_in_window += failed
        if len(recent) > settings.window:
            self.failed_in_window -= recent.popleft()
        self.in_a_row = self.in_a_row + 1 if failed else 0
        tripped = self.in_a_row >= settings.failures or (
            len(recent) >= settings.window
            and self.failed_in_window >= settings.failure_rate * settings.window
        )
        if tripped:
            self.open_for = settings.open_for
            return self._open(now)
        return False

    def _open(self, now: float) -> bool:
        self.state = State.OPEN
        self.until = now + self.open_for
        self.probing = False
        return True

    def _close(self) -> None:
        self.state = State.CLOSED
        self.in_a_row = 0
        self.recent.clear()
        self.failed_in_window = 0
        self.probing = False


class Breakers:
    """A caller's circuits, by node id, with the settings of each target service."""

    __slots__ = ("circuits", "default", "opened", "per_service")

    def __init__(
        self,
        default: BreakerSettings | None = None,
        per_service: dict[str, BreakerSettings] | None = None,
    ) -> None:
        self.default = default or BreakerSettings()
        self.per_service = dict(per_service or {})
        #: (service, node id) -> its circuit, made at the first failure
        self.circuits: dict[tuple[str, str], Circuit] = {}
        #: service -> how many times a circuit to one of its nodes opened
        self.opened: dict[str, int] = {}

    def settings(self, service: str) -> BreakerSettings:
        return self.per_service.get(service, self.default)

    def left_out(self, service: str, now: float) -> set[str]:
        """The nodes of ``service`` the balancer leaves out now."""
        if not self.circuits:
            return set()
        return {
            node
            for (name, node), circuit in self.circuits.items()
            if name == service and circuit.is_open(now)
        }

    def allows(self, service: str, node: str, now: float) -> bool:
        circuit = self.circuits.get((service, node))
        return circuit is None or circuit.allows(now)

    def record(self, service: str, node: str, failed: bool, now: float) -> bool:
        """A call to ``node`` of ``service`` ended; True when this opened its circuit."""
        circuit = self.circuits.get((service, node))
        if circuit is None:
            if not failed:
                return False  # a healthy node needs no circuit
            settings = self.settings(service)
            if not settings.enabled:
                return False
            circuit = self.circuits[(service, node)] = Circuit(settings)
        opened = circuit.record(failed, now)
        if opened:
            self.opened[service] = self.opened.get(service, 0) + 1
        if circuit.state is State.CLOSED and not circuit.in_a_row and not circuit.failed_in_window:
            del self.circuits[(service, node)]  # healthy again: nothing to remember
        return opened

    def not_closed(self) -> list[tuple[str, str, State]]:
        """(service, node id, state) of every circuit that is not closed."""
        return [
            (service, node, circuit.state)
            for (service, node), circuit in list(self.circuits.items())
            if circuit.state is not State.CLOSED
        ]

    def reopens_in(self, service: str, now: float, node: str | None = None) -> float:
        """Seconds until the first open circuit to a node of ``service`` (to ``node``,
        when given) lets a probe through (0: none is open)."""
        waits = [
            circuit.until - now
            for (name, node_id), circuit in self.circuits.items()
            if name == service and circuit.state is State.OPEN and node in (None, node_id)
        ]
        return max(0.0, min(waits)) if waits else 0.0

    def release(self, service: str, node: str) -> None:
        """A call to ``node`` ended without an outcome (cancelled): a half-open probe it
        was lets the next call probe."""
        circuit = self.circuits.get((service, node))
        if circuit is not None and circuit.state is State.HALF_OPEN:
            circuit.probing = False

    def forget(self, live: set[str]) -> None:
        """Drop the circuits of nodes that left the mesh (``live``: the node ids now)."""
        for key in [key for key in self.circuits if key[1] not in live]:
            del self.circuits[key]
