"""Browser sessions as a node sees them: :class:`Session` and :class:`Sessions`.

A gateway pins each browser WebSocket to one node of the service named in its URL. That
node's ``@on_socket`` method receives the session's messages with its :class:`Session`,
which answers (:meth:`Session.send`) and ends it (:meth:`Session.close`). Any handler of
any node can also push to a session it does not hold, by id, or to every session of a
principal, through ``self.sessions`` (:class:`Sessions`)::

    @rpc
    async def notify(self, ctx: Context, user: str, text: str) -> int:
        return await self.sessions.send_to_principal(user, text.encode())
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from wiremesh.core import envelope
from wiremesh.gateway.stream import Frame, FrameStream

if TYPE_CHECKING:
    from wiremesh.gateway.node_side import SocketHub

__all__ = ["Session", "Sessions"]


class Session:
    """One browser session pinned to this node.

    ``id`` is unique in the mesh (``"<gateway id>.<number>"``); ``principal`` is the
    token's subject and ``claims`` all of the token's claims, as the gateway verified them
    when the session opened; ``service``, ``path``, ``origin`` and ``remote`` (the browser's
    address) describe the connection; ``node_id`` is this node.
    """

    __slots__ = (
        "_busy",
        "_hub",
        "_inbox",
        "_number",
        "_stream",
        "claims",
        "closed",
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
        hub: SocketHub,
        stream: FrameStream,
        number: int,
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
        self._hub = hub
        self._stream = stream
        self._number = number
        self._busy = False
        self._inbox: deque[Frame] = deque()
        self.id = session_id
        self.principal = principal
        self.claims = claims
        self.service = service
        self.node_id = node_id
        self.path = path
        self.origin = origin
        self.remote = remote
        #: the session ended (either side closed it, or its gateway went away)
        self.closed = False

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Session {self.id} {self.principal!r}{state}>"

    async def send(self, data: bytes | str) -> None:
        """Send one message to the browser: binary for ``bytes``, text for ``str``.

        Waits only when the stream to the gateway is full. A session that has ended takes
        nothing (the message is dropped): sessions end at any time.
        """
        stream = self._stream
        if stream.full:
            await stream.wait_for_room()
        if self.closed:
            return
        frame = self._hub.data_frame(self._number, data)
        stream.send(frame, len(frame.payload))

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
        self._hub.close_session(self, code, reason)


class Sessions:
    """The browser sessions of the mesh, as one node reaches them (``self.sessions``)."""

    def __init__(self, hub: SocketHub) -> None:
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
        gateway = session_id.rpartition(".")[0]
        stream = self._hub.streams.get(gateway)
        if stream is None or stream.closed:
            return False
        await self._push(stream, self._hub.push_frame(data, session_id=session_id))
        return True

    async def send_to_principal(self, principal: str, data: bytes | str) -> int:
        """Send one message to every session of ``principal`` in the mesh (every gateway
        delivers it to the sessions it holds). Returns the number of gateways reached."""
        frame = self._hub.push_frame(data, principal=principal)
        reached = 0
        for stream in list(self._hub.streams.values()):
            if not stream.closed:
                await self._push(stream, frame)
                reached += 1
        return reached

    @staticmethod
    async def _push(stream: FrameStream, frame: Frame) -> None:
        if stream.full:
            await stream.wait_for_room()
        stream.send(frame, len(frame.payload))
