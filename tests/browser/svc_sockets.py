"""The service the browser tests talk to: echoes frames, answers requests, pushes.

Ordinary frames come back as they came. Requests (the JS client's ``request()``) carry a
JSON command:

- ``{"op": "whoami"}``: replies ``{"node", "principal", "session"}``;
- ``{"op": "push", "count": n}``: replies ``{"pushed": n}``, then pushes ``n`` frames
  ``{"push": i}`` to the session through ``self.sessions`` (the way any handler of any node
  reaches a session);
- ``{"op": "hang"}``: never answers;
- ``{"op": "close", "code": c}``: replies, then ends the session with ``c``.
"""

from __future__ import annotations

import json

from wiremesh import Service, Session, on_socket
from wiremesh.core import envelope


class Sockets(Service):
    name = "sockets"

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        request = envelope.parse_request(frame)
        if request is None:
            await session.send(frame)
            return
        command = json.loads(request.payload)
        op = command.get("op")
        if op == "whoami":
            me = {"node": self.node_id, "principal": session.principal, "session": session.id}
            await session.reply(request.id, json.dumps(me).encode())
        elif op == "push":
            count = int(command["count"])
            await session.reply(request.id, json.dumps({"pushed": count}).encode())
            for i in range(count):
                await self.sessions.send(session.id, json.dumps({"push": i}).encode())
        elif op == "hang":
            return
        elif op == "close":
            await session.reply(request.id, b"{}")
            await session.close(int(command["code"]), "asked to")
        else:
            await session.reply_error(request.id, f"no such op: {op!r}")
