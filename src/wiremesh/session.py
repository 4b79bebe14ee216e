"""Browser sessions as a node sees them: :class:`Session` and :class:`Sessions`.

A gateway pins each browser WebSocket to one node of the service named in its URL. That
node's ``@on_socket`` method receives the session's messages with its :class:`Session`,
which answers (:meth:`Session.send`) and ends it (:meth:`Session.close`). Any handler of
any node can also push to a session it does not hold, by id, or to every session of a
principal, through ``self.sessions`` (:class:`Sessions`)::

    @rpc
    async def notify(self, ctx: Context, user: str, text: str) -> int:
        return await self.sessions.send_to_principal(user, text.encode())

The node's side of the gateway streams (``gateway/socket_hub.py``) holds the sessions; this
module knows it only through two interfaces: :class:`SessionHolder`, what one session
needs (send, wait for room, close), and :class:`SessionHub`, what :class:`Sessions` needs
(the sessions pinned here, a push through the gateways).
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Iterator, Mapping
from typing import Any, Protocol

from wiremesh.core import envelope

__all__ = ["Session", "SessionHolder", "SessionHub", "Sessions"]


class SessionHolder(Protocol):
    """What a :class:`Session` needs of the node side that holds it: the way back to its
    browser (``gateway/socket_hub.py`` gives each session one)."""

    @property
    def closed(self) -> bool:
        """The session ended (either side closed it, or its gateway went away)."""
        ...

    @property
    def full(self) -> bool:
        """The stream to the session's gateway takes no more until :meth:`wait_for_room`."""
        ...

    def wait_for_room(self) -> Awaitable[None]:
        """Wait until the stream to the gateway has room again."""
        ...

    def send(self, data: bytes | str) -> None:
        """Queue one message for the browser (binary for ``bytes``, text for ``str``), or
        drop it when the session has ended; raises
        :class:`~wiremesh.errors.PayloadTooLarge` when it could not travel."""
        ...

    def close(self, code: int, reason: str) -> None:
        """End the session: its gateway closes the browser's WebSocket with ``code`` and
        ``reason``, then the close hook runs after the session's last message."""
        ...


class SessionHub(Protocol):
    """What :class:`Sessions` needs of the node's side of the gateway streams
    (``gateway/socket_hub.py:SocketHub``): the sessions pinned to this node, and a push
    through the gateways connected to it."""

    @property
    def by_id(self) -> Mapping[str, Session]:
        """The sessions pinned to this node, by id."""
        ...

    @property
    def by_principal(self) -> Mapping[str, Collection[Session]]:
        """The sessions pinned to this node, by principal."""
        ...

    async def push_to_session(self, session_id: str, data: bytes | str) -> bool:
        """Send one message to a session another node holds, through the gateway that
        holds it; False when no gateway connected to this node holds it."""
        ...

    async def push_to_principal(self, principal: str, data: bytes | str) -> int:
        """Send one message to every gateway connected to this node, for the sessions of
        ``principal`` it holds; the number of gateways reached."""
        ...


class Session:
    """One browser session pinned to this node.

    ``id`` is unique in the mesh (``"<gateway id>.<number>"``); ``principal`` is the
    token's subject and ``claims`` all of the token's claims, as the gateway verified them
    when the session opened; ``service``, ``path``, ``origin`` and ``remote`` (the browser's
    address) describe the connection; ``node_id`` is this node. The node side makes it
    with its ``holder`` (:class:`SessionHolder`), through which it sends and closes.
    """

    __slots__ = (
        "_holder",
        "claims",
        "id",
        "node_id",
        "origin",
        "path",
        "principal",
        "remote",
        "service",
    )

    def __init__(
        self,
        holder: SessionHolder,
        *,
        session_id: str,
        principal: str,
        claims: Mapping[str, Any],
        service: str,
        node_id: str,
        path: str = "",
        origin: str = "",
        remote: str = "",
    ) -> None:
        self._holder = holder
        self.id = session_id
        self.principal = principal
        self.claims = claims
        self.service = service
        self.node_id = node_id
        self.path = path
        self.origin = origin
        self.remote = remote

    @property
    def closed(self) -> bool:
        """The session ended (either side closed it, or its gateway went away)."""
        return self._holder.closed

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Session {self.id} {self.principal!r}{state}>"

    async def send(self, data: bytes | str) -> None:
        """Send one message to the browser: binary for ``bytes``, text for ``str``.

        Waits only when the stream to the gateway is full. A session that has ended takes
        nothing (the message is dropped): sessions end at any time.
        """
        holder = self._holder
        if holder.full:
            await holder.wait_for_room()
        holder.send(data)

    async def reply(self, correlation: int, payload: bytes) -> None:
        """Answer the browser's ``request()`` number ``correlation`` (see
        :func:`wiremesh.core.envelope.parse_request`)."""
        await self.send(envelope.reply(correlation, payload))

    async def reply_error(self, correlation: int, message: str) -> None:
        """Fail the browser's ``request()`` number ``correlation`` with ``message``."""
        await self.send(envelope.error(correlation, message))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """End the session: the gateway closes the browser's WebSocket with ``code``
        (1000, or 4000-4999 for the application's own reasons) and ``reason``."""
        if self.closed:
            return
        if not (code == 1000 or 3000 <= code <= 4999):
            raise ValueError(f"a session closes with 1000 or a code in 3000-4999, not {code}")
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        self._holder.close(code, reason)


class Sessions:
    """The browser sessions of the mesh, as one node reaches them (``self.sessions``)."""

    def __init__(self, hub: SessionHub) -> None:
        self._hub = hub

    def get(self, session_id: str) -> Session | None:
        """The session ``session_id`` if it is pinned to this node."""
        return self._hub.by_id.get(session_id)

    def of_principal(self, principal: str) -> list[Session]:
        """The sessions of ``principal`` pinned to this node."""
        return list(self._hub.by_principal.get(principal, ()))

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._hub.by_id.values()))

    def __len__(self) -> int:
        return len(self._hub.by_id)

    async def send(self, session_id: str, data: bytes | str) -> bool:
        """Send one message to session ``session_id``, wherever it is held: pinned to this
        node, or to another node through the gateway that holds it. False when no gateway
        connected to this node holds it (the session may have ended)."""
        local = self._hub.by_id.get(session_id)
        if local is not None:
            await local.send(data)
            return True
        return await self._hub.push_to_session(session_id, data)

    async def send_to_principal(self, principal: str, data: bytes | str) -> int:
        """Send one message to every session of ``principal`` in the mesh (every gateway
        delivers it to the sessions it holds). Returns the number of gateways reached."""
        return await self._hub.push_to_principal(principal, data)
