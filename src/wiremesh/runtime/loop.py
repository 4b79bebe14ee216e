"""The event loop wiremesh's processes run on: uvloop when it is installed.

uvloop (``pip install 'wiremesh[speed]'``) is an event loop on libuv, a drop-in for
asyncio's own. Measured on this repository's benchmarks (``benchmarks/README.md``), it
makes the gateway's sockets and HTTP door and grpc.aio's completion callbacks cheaper per
message; nothing in wiremesh depends on which loop runs.

The choice, by the environment variable ``WIREMESH_LOOP`` (inherited, like every
variable, by the nodes that ``wiremesh run`` starts):

- ``auto`` (the default, also when unset or empty): uvloop when it can be imported,
  else asyncio's own loop;
- ``uvloop``: uvloop, and an error at start when it is not installed;
- ``asyncio``: asyncio's own loop.

:func:`run` is what wiremesh's process entry points call instead of ``asyncio.run``.

**The gateway stays on asyncio's loop** (:func:`run_gateway`), whatever the variable says:
its guard against running out of file descriptors (``wiremesh.gateway.listener``: keep
some for its own connections to the nodes, refuse the rest at once, log it) lives in the
``accept()`` of its listening socket, which asyncio's loop calls and uvloop does not
(libuv accepts in C). Its HTTP parser is chosen apart (``WIREMESH_HTTP_PARSER``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from wiremesh.core.choices import fast_or_default
from wiremesh.errors import ConfigError

__all__ = ["ENV", "loop_factory", "loop_name", "run", "run_gateway", "running"]

T = TypeVar("T")

ENV = "WIREMESH_LOOP"


def loop_name(environ: dict[str, str] | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop :func:`run` runs on, by ``WIREMESH_LOOP``
    and what is installed; :class:`~wiremesh.errors.ConfigError` for a value it does not
    know, or ``uvloop`` asked for and not installed."""
    env = os.environ if environ is None else environ
    installed = importlib.util.find_spec("uvloop") is not None
    return fast_or_default(ENV, env.get(ENV), default="asyncio", fast="uvloop", installed=installed)


def running() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop the calling code runs on."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``asyncio.Runner(loop_factory=...)`` takes for the chosen loop (None: asyncio's
    own)."""
    if loop_name() == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``WIREMESH_LOOP`` chooses."""
    try:
        factory = loop_factory()
    except ConfigError:
        main.close()  # never awaited: no warning about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def run_gateway(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` for a gateway's process: on asyncio's own loop (see the
    module's docstring)."""
    return asyncio.run(main)
