"""The gateway's channels: its sessions' subscriptions, and the fan-out to them.

A browser subscribes over its session's control channel (``{"wm": "subscribe", ...}``,
``docs/protocol.md``, "Channels"). The gateway:

1. checks the name, the session's count of subscriptions and the channel's rules (those
   its owner declares, read from the registry: :class:`~wiremesh.core.channels.MeshRules`);
2. asks a node of the owner (a ``SUBSCRIBE`` frame on the gateway stream; its
   ``on_subscribe`` answers), unless the rules let ``anyone`` with the scopes in;
3. watches the channel in the engine (once per channel and gateway: one message per
   gateway per publication, fanned out here), *then* reads the channel's position and,
   when the browser asks for recovery, what it missed. Publications arriving meanwhile
   are held for that session, and only those after what the answer holds are delivered
   after it: nothing is lost between recovery and live, nothing comes twice;
4. answers ``subscribed``, and from then on writes every publication of the channel to
   the session (built once per publication, written to each subscriber). A session that
   does not read is closed with 4008 like any other (the connection's queue limits).

A node may also subscribe a session itself (a ``JOIN`` frame) or end a subscription
(``LEAVE``). Presence: each subscribed session of a channel that keeps it is a member
(refreshed every third of ``presence_ttl``; a dead gateway's members expire, and the
first gateway to sweep them tells the channel they left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from wiremesh.channels.base import ChannelEngine
from wiremesh.core.channels import (
    ChannelRules,
    Member,
    Position,
    Publication,
    Rulebook,
    check_channel,
)
from wiremesh.errors import InvalidPayload, Unauthenticated, Unavailable, WiremeshError
from wiremesh.gateway.auth import scopes_of
from wiremesh.gateway.connection import Connection
from wiremesh.gateway.frame_stream import SUBSCRIBE, Frame, FrameStream
from wiremesh.gateway.meter import GatewayMeter
from wiremesh.gateway.settings import ChannelLimits

__all__ = ["BAD_REQUEST", "ChannelHub", "ErrorCode"]

log = logging.getLogger("wiremesh.gateway")


class ErrorCode:
    """The ``code`` of an ``error`` answer to a channel request (the session stays)."""

    BAD_REQUEST = 4400
    FORBIDDEN = 4403
    NO_CHANNEL = 4404
    ALREADY = 4409
    TOO_BIG = 4413
    TOO_MANY = 4429
    UNAVAILABLE = 4503


BAD_REQUEST = ErrorCode.BAD_REQUEST


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Channel:
    """One channel as this gateway holds it."""

    __slots__ = ("filling", "floors", "live", "name", "pending", "rules", "top", "watched")

    def __init__(self, name: str, rules: ChannelRules) -> None:
        self.name = name
        self.rules = rules
        #: the last publication handed out here (or the position a first subscription
        #: began at): a publication past the next offset shows a gap
        self.top: Position | None = None
        #: while a gap is filled from history: the publications that arrived meanwhile
        self.filling: list[Publication] | None = None
        #: the sessions that get its publications as they come (insertion-ordered)
        self.live: dict[Connection, None] = {}
        #: sessions whose subscription is being decided: the publications held for each
        self.pending: dict[Connection, list[Publication]] = {}
        #: live sessions whose answer held publications past :attr:`top` (read from the
        #: history before their live message came here): the last one each got, so that
        #: it does not get them twice; dropped at the first publication past it
        self.floors: dict[Connection, Position] = {}
        #: done once the engine delivers the channel here
        self.watched: asyncio.Future[bool] | None = None

    @property
    def empty(self) -> bool:
        return not self.live and not self.pending


class ChannelHub:
    """Every subscription of this gateway's sessions.

    ``engine`` opens the channel engine on first use; ``rules`` gives the mesh's rulebook
    now; ``node_of`` a stream to a serving node of a service (None when there is none);
    ``connection_of`` the connection of a session id held here."""

    def __init__(
        self,
        *,
        gateway_id: str,
        engine: Callable[[], ChannelEngine],
        rules: Callable[[], Rulebook],
        node_of: Callable[[str], FrameStream | None],
        connection_of: Callable[[str], Connection | None],
        limits: ChannelLimits,
        spawn: Callable[[Any], None],
        meter: GatewayMeter | None = None,
    ) -> None:
        self.meter = meter or GatewayMeter(lambda: ())
        self.gateway_id = gateway_id
        self._open = engine
        self._engine: ChannelEngine | None = None
        self._rules = rules
        self._node_of = node_of
        self._connection_of = connection_of
        self.limits = limits
        self._spawn = spawn
        self.channels: dict[str, _Channel] = {}
        self._questions: dict[int, asyncio.Future[tuple[int, str]]] = {}
        self._asked = 0
        self._refreshed = 0.0
        #: connections with publications framed and not written yet, and whether their
        #: write is scheduled
        self._dirty: list[Connection] = []
        self._flushing = False

    @property
    def engine(self) -> ChannelEngine:
        if self._engine is None:
            self._engine = self._open()
            self._engine.on_publication(self._publication)
        return self._engine

    # ------------------------------------------------------------------ from browsers

    def command(self, connection: Connection, command: dict[str, Any]) -> None:
        """A channel's control message from ``connection``'s browser."""
        kind = command.get("wm")
        request = command.get("id")
        if not isinstance(request, int) or isinstance(request, bool) or request < 0:
            request = None
        channel = command.get("channel")
        try:
            name = check_channel(channel)
        except InvalidPayload as exc:
            self._error(connection, request, channel, BAD_REQUEST, exc.message)
            return
        if kind == "subscribe":
            self._subscribe_command(connection, name, command, request)
        elif kind == "unsubscribe":
            if self.unsubscribe(connection, name, request=request) is False:
                self._error(connection, request, name, ErrorCode.FORBIDDEN, "not subscribed")
        elif kind == "publish":
            self._spawn(self._publish(connection, name, command, request))
        else:
            self._spawn(self._presence(connection, name, request))

    def _subscribe_command(
        self, connection: Connection, name: str, command: dict[str, Any], request: int | None
    ) -> None:
        since: Position | None = None
        given = command.get("since")
        if given is not None:
            offset = given.get("offset") if isinstance(given, dict) else None
            epoch = given.get("epoch") if isinstance(given, dict) else None
            if (
                not isinstance(offset, int)
                or isinstance(offset, bool)
                or offset < 0
                or not isinstance(epoch, str)
                or len(epoch) > 64
            ):
                self._error(
                    connection,
                    request,
                    name,
                    BAD_REQUEST,
                    'since is {"offset": <integer, 0 or more>, "epoch": <text>}',
                )
                return
            since = Position(offset, epoch)
        self.subscribe(connection, name, request=request, since=since, ask=True)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(
        self,
        connection: Connection,
        name: str,
        *,
        request: int | None = None,
        since: Position | None = None,
        ask: bool = True,
    ) -> None:
        """Subscribe ``connection`` to channel ``name`` (``ask``: as its browser asked,
        so the owner decides; else as a node decided)."""
        rules = self._rules().rules_for(name)
        if rules is None:
            self._error(
                connection,
                request,
                name,
                ErrorCode.NO_CHANNEL,
                "no service of the mesh owns this channel",
            )
            return
        subscribed = connection.channels
        if subscribed is None:
            subscribed = connection.channels = set()
        if name in subscribed:
            self._error(connection, request, name, ErrorCode.ALREADY, "already subscribed")
            return
        if len(subscribed) >= self.limits.max_subscriptions:
            self._error(
                connection,
                request,
                name,
                ErrorCode.TOO_MANY,
                f"a session subscribes to at most {self.limits.max_subscriptions} channels",
            )
            return
        subscribed.add(name)
        self._spawn(self._subscribe(connection, name, rules, request, since, ask))

    async def _subscribe(
        self,
        connection: Connection,
        name: str,
        rules: ChannelRules,
        request: int | None,
        since: Position | None,
        ask: bool,
    ) -> None:
        channel: _Channel | None = None
        try:
            async with asyncio.timeout(self.limits.subscribe_timeout):
                if ask:
                    await self._authorize(connection, name, rules)
                if connection.closed or name not in (connection.channels or ()):
                    return  # gone, or unsubscribed, meanwhile
                channel = self.channels.get(name)
                if channel is None:
                    channel = self.channels[name] = _Channel(name, rules)
                channel.pending[connection] = []
                await self._watch(channel)
                found = await self.engine.history(name, since, rules)
        except _Refused as refused:
            self._abandon(connection, name, channel)
            self._error(connection, request, name, refused.code, refused.reason)
            return
        except TimeoutError:
            self._abandon(connection, name, channel)
            self._error(
                connection,
                request,
                name,
                ErrorCode.UNAVAILABLE,
                f"the subscription was not decided within {self.limits.subscribe_timeout:g} s",
            )
            return
        except (Unavailable, Unauthenticated) as exc:
            self._abandon(connection, name, channel)
            self._error(connection, request, name, ErrorCode.UNAVAILABLE, exc.message)
            return
        held = channel.pending.pop(connection, None)
        if held is None or connection.closed or name not in (connection.channels or ()):
            self._forget(channel)
            return
        top = found.position
        last = max([top.offset, *(p.offset for p in found.publications)])
        answer: dict[str, Any] = {
            "wm": "subscribed",
            "channel": name,
            "offset": top.offset,
            "epoch": top.epoch,
            "recovered": found.recovered if since is not None else False,
            "reason": found.reason if since is not None else "",
        }
        if request is not None:
            answer["id"] = request
        recovered = ",".join(
            f'{{"offset":{p.offset},"data":{p.data.decode(errors="replace")}}}'
            for p in found.publications
        )
        text = json.dumps(answer, separators=(",", ":"))[:-1] + f',"publications":[{recovered}]}}'
        connection.deliver(text)
        for publication in held:
            if publication.epoch != top.epoch or publication.offset > last:
                connection.deliver(_publication_text(publication))
                if publication.epoch == top.epoch:
                    last = max(last, publication.offset)
        channel.live[connection] = None
        here = channel.top
        if here is None or (here.epoch == top.epoch and last > here.offset):
            # the answer went past what came live here yet: those come again, not to it
            channel.floors[connection] = Position(last, top.epoch)
        if channel.top is None:
            channel.top = top
        if rules.presence:
            await self._join(connection, channel)

    async def _authorize(self, connection: Connection, name: str, rules: ChannelRules) -> None:
        """The owner's verdict (:class:`_Refused` when it says no)."""
        try:
            claims = json.loads(connection.claims) if connection.claims else {}
        except ValueError:
            claims = {}
        missing = set(rules.scopes) - scopes_of(claims if isinstance(claims, dict) else {})
        if missing:
            raise _Refused(
                ErrorCode.FORBIDDEN, f"the token lacks the scope(s) {', '.join(sorted(missing))}"
            )
        if rules.anyone:
            return
        stream = self._node_of(rules.service)
        if stream is None:
            raise _Refused(
                ErrorCode.UNAVAILABLE, f"no node of {rules.service!r} can decide now: try again"
            )
        self._asked = number = self._asked % (2**63) + 1
        answer: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._questions[number] = answer
        try:
            stream.send(
                Frame(
                    kind=SUBSCRIBE,
                    session=number,
                    session_id=connection.session_id,
                    principal=connection.principal,
                    claims=connection.claims,
                    channel=name,
                )
            )
            code, reason = await answer
        finally:
            self._questions.pop(number, None)
        if code != 0:
            raise _Refused(ErrorCode.FORBIDDEN, reason or "refused")

    def answered(self, frame: Any) -> None:
        """A node's answer to a ``SUBSCRIBE`` question."""
        answer = self._questions.get(frame.session)
        if answer is not None and not answer.done():
            answer.set_result((frame.code, frame.reason))

    async def _watch(self, channel: _Channel) -> None:
        """Have the engine deliver ``channel`` here (once; later subscribers wait for
        the first one's watch, and try themselves if it failed)."""
        while True:
            watched = channel.watched
            if watched is None:
                watched = channel.watched = asyncio.get_running_loop().create_future()
                try:
                    await self.engine.watch(channel.name)
                except BaseException:
                    channel.watched = None
                    watched.set_result(False)
                    raise
                watched.set_result(True)
                if self.channels.get(channel.name) is not channel:
                    # everyone left while it was being watched
                    self._spawn(self._unwatch(channel.name))
                return
            if await asyncio.shield(watched):
                return

    def unsubscribe(
        self,
        connection: Connection,
        name: str,
        *,
        request: int | None = None,
        reason: str = "",
    ) -> bool:
        """End ``connection``'s subscription to ``name``, and tell its browser; False
        when there was none."""
        subscribed = connection.channels
        if not subscribed or name not in subscribed:
            return False
        subscribed.discard(name)
        channel = self.channels.get(name)
        if channel is not None:
            was_live = channel.live.pop(connection, "gone") is None
            channel.floors.pop(connection, None)
            channel.pending.pop(connection, None)
            if was_live and channel.rules.presence:
                self._spawn(self._leave(connection, channel))
            self._forget(channel)
        answer: dict[str, Any] = {
            "wm": "unsubscribed",
            "channel": name,
            "code": 1000,
            "reason": reason,
        }
        _reply(connection, request, answer)
        return True

    def ended(self, connection: Connection) -> None:
        """``connection`` ended: its subscriptions end with it."""
        for name in list(connection.channels or ()):
            channel = self.channels.get(name)
            if channel is None:
                continue
            was_live = channel.live.pop(connection, "gone") is None
            channel.floors.pop(connection, None)
            channel.pending.pop(connection, None)
            if was_live and channel.rules.presence:
                self._spawn(self._leave(connection, channel))
            self._forget(channel)
        connection.channels = None

    def _abandon(self, connection: Connection, name: str, channel: _Channel | None) -> None:
        if connection.channels is not None:
            connection.channels.discard(name)
        if channel is not None:
            channel.pending.pop(connection, None)
            self._forget(channel)

    def _forget(self, channel: _Channel) -> None:
        """Stop watching a channel nobody here is subscribed to any more."""
        if not channel.empty or self.channels.get(channel.name) is not channel:
            return
        del self.channels[channel.name]
        if channel.watched is not None and channel.watched.done():
            self._spawn(self._unwatch(channel.name))

    async def _unwatch(self, name: str) -> None:
        if name in self.channels:
            return  # subscribed again meanwhile
        with contextlib.suppress(WiremeshError):
            await self.engine.unwatch(name)

    # ------------------------------------------------------------------ from nodes

    def joined(self, frame: Any) -> None:
        """A node subscribes a session of this gateway (``JOIN``)."""
        connection = self._connection_of(frame.session_id)
        if connection is None:
            return
        try:
            name = check_channel(frame.channel)
        except InvalidPayload:
            return
        self.subscribe(connection, name, ask=False)

    def left(self, frame: Any) -> None:
        """A node ends a session's subscription (``LEAVE``)."""
        connection = self._connection_of(frame.session_id)
        if connection is not None:
            self.unsubscribe(connection, frame.channel, reason="unsubscribed by the node")

    # ------------------------------------------------------------------ from the engine

    def _publication(self, publication: Publication) -> None:
        self.meter.publications += 1
        channel = self.channels.get(publication.channel)
        if channel is None:
            return
        if publication.kind == "pub":
            filling = channel.filling
            if filling is not None:
                filling.append(publication)
                if len(filling) > self.limits.max_pending:  # the fill takes too long
                    channel.filling = None
                    for waiting in filling:
                        self._fan_out(channel, waiting)
                return
            top = channel.top
            if (
                top is not None
                and channel.rules.history
                and publication.epoch == top.epoch
                and publication.offset > top.offset + 1
            ):
                # some never reached this gateway (its engine connection broke): the
                # channel's history has them, handed out before this one
                channel.filling = [publication]
                self._spawn(self._fill(channel, top))
                return
            self._fan_out(channel, publication)
        elif channel.rules.join_leave:
            member = publication.data.decode(errors="replace")
            text = (
                f'{{"wm":"{publication.kind}","channel":{json.dumps(channel.name)},'
                f'"member":{member}}}'
            )
            try:
                itself = json.loads(member).get("session")
            except (ValueError, AttributeError):
                itself = None
            for connection in channel.live:
                if connection.session_id != itself:  # a session is not told of itself
                    connection.deliver(text)

    def _fan_out(self, channel: _Channel, publication: Publication) -> None:
        """Hand ``publication`` to the channel's subscribers here, and hold it for those
        being decided."""
        top = channel.top
        if top is not None and publication.epoch == top.epoch and publication.offset <= top.offset:
            return  # handed out already (a gap's fill and the live stream overlap)
        channel.top = Position(publication.offset, publication.epoch)
        text = _publication_text(publication)
        dirty = self._dirty
        floors = channel.floors
        for connection in channel.live:
            if floors:
                floor = floors.get(connection)
                if floor is not None:
                    if publication.epoch == floor.epoch and publication.offset <= floor.offset:
                        continue  # its answer held it
                    del floors[connection]
            # framed now, written once per connection at the end of the loop turn:
            # what the engine hands over together leaves in one write per subscriber
            connection.deliver(text, now=False)
            if not connection.dirty:
                connection.dirty = True
                dirty.append(connection)
        if dirty and not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        if channel.pending:
            limit = self.limits.max_pending
            for connection, held in list(channel.pending.items()):
                held.append(publication)
                if len(held) > limit:
                    del channel.pending[connection]
                    self._abandon(connection, channel.name, channel)
                    self._error(
                        connection,
                        None,
                        channel.name,
                        ErrorCode.UNAVAILABLE,
                        "too many publications while the subscription was decided",
                    )

    def _flush(self) -> None:
        """Write what :meth:`_fan_out` framed this loop turn."""
        dirty, self._dirty = self._dirty, []
        self._flushing = False
        for connection in dirty:
            connection.flush()

    async def _fill(self, channel: _Channel, since: Position) -> None:
        """Hand out what the channel's history holds after ``since``, then what arrived
        meanwhile, in order."""
        missing: tuple[Publication, ...] = ()
        try:
            async with asyncio.timeout(self.limits.subscribe_timeout):
                found = await self.engine.history(channel.name, since, channel.rules)
            if found.recovered:
                missing = found.publications
            else:
                log.warning(
                    "channel %s: a gap after %d could not be filled", channel.name, since.offset
                )
        except (TimeoutError, WiremeshError) as exc:
            log.warning(
                "channel %s: a gap after %d could not be filled: %s",
                channel.name,
                since.offset,
                exc,
            )
        waiting, channel.filling = channel.filling or [], None
        for publication in (*missing, *waiting):
            self._fan_out(channel, publication)

    # ------------------------------------------------------------------ publish, presence

    def _subscribed(
        self, connection: Connection, name: str, request: int | None
    ) -> _Channel | None:
        """The channel ``connection`` is subscribed to (an error answer when it is not)."""
        channel = self.channels.get(name)
        if channel is None or connection not in channel.live:
            self._error(connection, request, name, ErrorCode.FORBIDDEN, "not subscribed")
            return None
        return channel

    async def _publish(
        self, connection: Connection, name: str, command: dict[str, Any], request: int | None
    ) -> None:
        channel = self._subscribed(connection, name, request)
        if channel is None:
            return
        if not channel.rules.client_publish:
            self._error(
                connection, request, name, ErrorCode.FORBIDDEN, "browsers may not publish here"
            )
            return
        if "data" not in command:
            self._error(connection, request, name, BAD_REQUEST, "a publish has data")
            return
        data = json.dumps(command["data"], separators=(",", ":")).encode()
        if len(data) > self.limits.max_publish_bytes:
            self._error(
                connection,
                request,
                name,
                ErrorCode.TOO_BIG,
                f"a publication is at most {self.limits.max_publish_bytes} bytes of JSON",
            )
            return
        try:
            position = await self.engine.publish(name, data, channel.rules)
        except WiremeshError as exc:
            self._error(connection, request, name, ErrorCode.UNAVAILABLE, exc.message)
            return
        answer: dict[str, Any] = {
            "wm": "published",
            "channel": name,
            "offset": position.offset,
            "epoch": position.epoch,
        }
        _reply(connection, request, answer)

    async def _presence(self, connection: Connection, name: str, request: int | None) -> None:
        channel = self._subscribed(connection, name, request)
        if channel is None:
            return
        if not channel.rules.presence:
            self._error(
                connection, request, name, ErrorCode.FORBIDDEN, "this channel keeps no presence"
            )
            return
        try:
            members = await self.engine.presence(name)
        except WiremeshError as exc:
            self._error(connection, request, name, ErrorCode.UNAVAILABLE, exc.message)
            return
        answer: dict[str, Any] = {
            "wm": "presence",
            "channel": name,
            "members": [m.as_json() for m in members],
        }
        _reply(connection, request, answer)

    def counts(self) -> tuple[int, int]:
        """The channels received here, and the subscriptions of this gateway's sessions."""
        return len(self.channels), sum(len(c.live) for c in self.channels.values())

    def _member(self, connection: Connection) -> Member:
        return Member(connection.session_id, connection.principal, self.gateway_id)

    async def _join(self, connection: Connection, channel: _Channel) -> None:
        member = self._member(connection)
        try:
            new = await self.engine.join(channel.name, member, self.limits.presence_ttl)
            if new and channel.rules.join_leave:
                await self.engine.announce(channel.name, "join", member)
        except WiremeshError as exc:
            log.warning("presence of %s: %s", channel.name, exc.message)

    async def _leave(self, connection: Connection, channel: _Channel) -> None:
        try:
            gone = await self.engine.leave(channel.name, connection.session_id)
            if gone is not None and channel.rules.join_leave:
                await self.engine.announce(channel.name, "leave", gone)
        except WiremeshError as exc:
            log.warning("presence of %s: %s", channel.name, exc.message)

    def tick(self, now: float) -> None:
        """The gateway's shared timer: refresh this gateway's presence members, and sweep
        the members whose gateway died, every third of ``presence_ttl``."""
        if now - self._refreshed < self.limits.presence_ttl / 3:
            return
        self._refreshed = now
        present = [c for c in self.channels.values() if c.rules.presence and c.live]
        if present:
            self._spawn(self._refresh(present))

    async def _refresh(self, channels: Iterable[_Channel]) -> None:
        engine = self.engine
        ttl = self.limits.presence_ttl
        try:
            members = [(c.name, self._member(s)) for c in channels for s in c.live]
            await engine.refresh(members, ttl)
            for channel in channels:
                for gone in await engine.sweep(channel.name):
                    if channel.rules.join_leave:
                        await engine.announce(channel.name, "leave", gone)
        except WiremeshError as exc:
            log.warning("presence refresh: %s", exc.message)

    async def close(self) -> None:
        for answer in self._questions.values():
            answer.cancel()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.close()

    # ------------------------------------------------------------------ answers

    def _error(
        self, connection: Connection, request: int | None, channel: object, code: int, reason: str
    ) -> None:
        self.meter.channel_refused[code] += 1
        answer: dict[str, Any] = {
            "wm": "error",
            "channel": channel if isinstance(channel, str) else "",
            "code": code,
            "reason": reason,
        }
        _reply(connection, request, answer)


def _reply(connection: Connection, request: int | None, answer: dict[str, Any]) -> None:
    """Send ``answer`` to the browser, with the ``id`` of the request it answers."""
    if request is not None:
        answer["id"] = request
    connection.deliver(json.dumps(answer, separators=(",", ":")))


def _publication_text(publication: Publication) -> str:
    """A publication as the browser gets it."""
    return (
        f'{{"wm":"pub","channel":{json.dumps(publication.channel)},'
        f'"offset":{publication.offset},"epoch":{json.dumps(publication.epoch)},'
        f'"data":{publication.data.decode(errors="replace")}}}'
    )
