"""The ``wiremesh`` command.

Exit codes: 0 success; 1 the call or the mesh failed (the error type and message are
printed); 2 bad usage or bad input (a payload that is not JSON, a broken config file);
3 the mesh's registry is unreachable (``nodes``, ``top``, ``call``: nothing was listed or
called).

The commands that talk to a running mesh take ``--mesh``: a folder where ``wiremesh run``
runs, a registry's ``host:port``, or a Redis registry's URL (``redis://host:6379/0#shop``);
without it, the environment variable ``WIREMESH_MESH``, else this folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import pydantic_core
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import wiremesh
from wiremesh.client import MESH_VARIABLE
from wiremesh.errors import ConfigError, Unavailable, WiremeshError
from wiremesh.runtime import loop as event_loop
from wiremesh.transport import grpc_core

if TYPE_CHECKING:
    from wiremesh.client import MeshClient
    from wiremesh.runtime.config import MeshConfig
    from wiremesh.transport.tls import TlsFiles

app = typer.Typer(
    name="wiremesh",
    help=(
        "Run and talk to a wiremesh: services as processes, talking over gRPC.\n\n"
        "Start the mesh of ./wiremesh.toml with 'wiremesh run', then talk to it\n"
        "from another terminal in the same folder.\n\n"
        "Examples:\n\n"
        "  wiremesh run                  # the mesh of ./wiremesh.toml\n\n"
        "  wiremesh nodes                # which nodes run, and where\n\n"
        "  wiremesh nodes --mesh redis://10.0.0.5:6379/0#shop   # a mesh on many hosts\n\n"
        '  wiremesh call flows.run \'{"flow": "welcome", "input": {"name": "Ada"}}\'\n\n'
        "  wiremesh dlq list             # messages whose handlers gave up\n\n"
        "  wiremesh certs init           # development certificates for TLS\n\n"
        "  wiremesh token --sub ada      # a development token for the browser gateway\n\n"
        "Every command has its own --help, with examples."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
certs_app = typer.Typer(help="Development certificates for mutual TLS.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")
dlq_app = typer.Typer(
    help=(
        "Dead letters: durable messages that did not decode or validate, or whose handler "
        "failed every attempt.\n\n"
        "The broker is --broker (or $WIREMESH_BROKER) when given; else the one of the mesh "
        "running in the --mesh folder (default: this folder), or the amqp url of its "
        "wiremesh.toml. A mesh named by its registry (host:port, redis://...) does not say "
        "where its broker is: give --broker, or run the command in the folder of the mesh's "
        "wiremesh.toml.\n\n"
        "Examples:\n\n"
        "  wiremesh dlq list\n\n"
        "  wiremesh dlq list --mesh redis://10.0.0.5:6379/0#shop --broker amqp://app:pw@10.0.0.6/\n\n"
        "  wiremesh dlq show 3f2a9c...\n\n"
        "  wiremesh dlq replay 3f2a9c... 77b0e1...\n\n"
        "  wiremesh dlq purge --all"
    ),
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

T = TypeVar("T")

err = Console(stderr=True)
out = Console()

EXIT_FAILED = 1
EXIT_USAGE = 2
#: the mesh's registry did not answer: nothing was listed or called
EXIT_UNREACHABLE = 3

#: the environment variable naming the broker of ``wiremesh dlq``
BROKER_VARIABLE = "WIREMESH_BROKER"

_MeshOption = Annotated[
    str | None,
    typer.Option(
        "--mesh",
        envvar=MESH_VARIABLE,
        metavar="FOLDER|HOST:PORT|URL",
        show_default=False,
        help="The mesh: a folder where 'wiremesh run' runs, its registry's host:port, or a "
        "Redis registry's URL, redis://host:6379/0#name (rediss:// with TLS; #name picks "
        "the mesh when the database holds several). Default: this folder.",
    ),
]


def _version(value: bool) -> None:
    if value:
        print(f"wiremesh {wiremesh.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """wiremesh command line."""


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _describe(exc: WiremeshError) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------- the mesh


class _Unreachable(Exception):
    """The mesh's registry did not answer."""


def _is_registry(where: str) -> bool:
    """Whether ``--mesh`` names a registry (``host:port`` or a Redis URL), not a folder."""
    from wiremesh.core.names import is_redis_url

    host, sep, port = where.rpartition(":")
    return is_redis_url(where) or bool(sep and host and port.isdigit())


def _folder_tls(folder: Path) -> TlsFiles | None:
    """The mesh's client certificates as ``folder`` has them: those of the mesh running
    there (its ``mesh.json``), else those its ``wiremesh.toml`` names when ``[tls]`` is on.
    A mesh named by its registry is reached with them (a ``rediss://`` URL's own
    ``ssl_*`` parameters win over them for Redis)."""
    from wiremesh.runtime.config import load_config
    from wiremesh.runtime.meshfile import MeshFile
    from wiremesh.transport.tls import TlsFiles

    try:
        found = MeshFile.find(folder).client_tls()
    except Unavailable:
        found = None
    if found is not None:
        return found
    path = folder / "wiremesh.toml"
    if not path.is_file():
        return None
    config = load_config(path)
    if not config.tls.enabled:
        return None
    ca, cert, key = config.tls_paths()
    client_cert, client_key = ca.parent / "client.pem", ca.parent / "client-key.pem"
    if client_cert.is_file() and client_key.is_file():
        return TlsFiles(ca, client_cert, client_key)
    return TlsFiles(ca, cert, key)


async def _connect(where: str | None, timeout: float = 5.0) -> MeshClient:
    """A started client of the mesh ``where`` names (``--mesh``; None: this folder).

    :class:`Unavailable` when no mesh runs in the folder named, or a Redis database holds
    no mesh; :class:`_Unreachable` when the mesh's registry does not answer."""
    from wiremesh.client import connect
    from wiremesh.core.names import is_redis_url, redact_url, split_mesh
    from wiremesh.runtime.meshfile import MeshFile

    # the command itself says when the registry is away, in one line
    logging.getLogger("wiremesh.registry").setLevel(logging.CRITICAL)
    text = where or "."
    tls = None
    if _is_registry(text):
        tls = _folder_tls(Path.cwd())
        address = text
        if is_redis_url(text):
            url, name = split_mesh(text)
            address = redact_url(url)
            if name is None:
                from wiremesh.registry.redis import find_mesh

                try:
                    name = await find_mesh(url, tls=tls, timeout=timeout)
                except Unavailable as exc:
                    if exc.message.startswith("no mesh has registered"):
                        raise  # Redis answered: it holds no mesh
                    raise _Unreachable(exc.message) from None
                text = f"{url}#{name}"
    else:
        address = redact_url(MeshFile.find(Path(text)).registry)  # no mesh runs there: 1
    try:
        return await connect(text, timeout=timeout, tls=tls)
    except Unavailable:
        raise _Unreachable(
            f"the registry at {address} is unreachable: no answer within {timeout:g}s"
        ) from None


def _run_on_mesh(go: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(go())`` with the mesh commands' errors turned into exit codes."""
    try:
        return asyncio.run(go())
    except _Unreachable as exc:
        raise _fail(str(exc), EXIT_UNREACHABLE) from None
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None


# --------------------------------------------------------------------------------- run


@app.command()
def run(
    target: Annotated[
        str | None,
        typer.Argument(
            help="A wiremesh.toml file (default: ./wiremesh.toml), or 'module:Service' "
            "to run one service with default settings.",
            show_default=False,
        ),
    ] = None,
    replicas: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SERVICE=N",
            help="Nodes of a service on this host, over the file's (repeatable: "
            "--replicas orders=3 --replicas billing=2); a bare N with a module:Service "
            "target.",
            show_default=False,
        ),
    ] = None,
    services: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help="The services this host runs, comma-separated (default: those of its "
            "host table, else every service).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Run what the table \\[hosts.NAME] names (default: the table named like "
            "this machine's hostname, if there is one).",
            show_default=False,
        ),
    ] = None,
    gateway: Annotated[
        bool | None,
        typer.Option(
            "--gateway/--no-gateway",
            help="Run the browser gateway on this host, or not (default: the host "
            "table's gateway, else \\[gateway] enabled).",
            show_default=False,
        ),
    ] = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="Print plain lines even on a terminal.")
    ] = False,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Development: when a service's source changes, replace its nodes one at "
            "a time, with no call lost. Needs watchfiles: pip install 'wiremesh[reload]'. "
            "Not with a Redis registry.",
        ),
    ] = False,
) -> None:
    """Start the mesh, or this host's part of it: every node as its own process.

    With the embedded registry (the default) this is the whole mesh on one
    machine: the registry, the broker and every service's nodes. With
    \\[registry] backend = "redis", run it on each host with the same
    wiremesh.toml: each starts the nodes named for its host, and they join
    one mesh through Redis.

    Restarts nodes that die. Ctrl-C (or SIGTERM) drains the nodes it runs:
    in-flight calls finish within mesh.drain_grace seconds, then every node
    stops and the command exits 0; the other hosts' nodes go on. A second
    Ctrl-C stops everything at once.

    With --reload it watches the .py files under mesh.python_path (default:
    the mesh folder). 0.3 s after a burst of saves, each service whose code
    imports a changed file (any file no service imports: every service) gets
    new nodes one at a time: a new node starts, and once it serves, an old one
    drains as at Ctrl-C. A file that does not compile, or a new node that
    fails to start, reloads nothing: the old nodes go on serving, and the next
    save tries again.

    Examples:

      wiremesh run                        # ./wiremesh.toml

      wiremesh run --reload               # new nodes when the code changes

      wiremesh run examples/ipaas/wiremesh.toml

      wiremesh run myapp.pricing:Pricing --replicas 3

    A mesh on three hosts, with this in the wiremesh.toml each host has:

      \\[mesh]
      name = "shop"
      host = "0.0.0.0"
      \\[registry]
      backend = "redis"
      url = "redis://:password@redis.internal:6379/0"
      \\[broker]
      url = "amqp://shop:password@rabbit.internal:5672/shop"
      # \\[services.catalog], \\[services.orders], \\[services.billing] as usual,
      # each with a PostgreSQL store = "postgresql+asyncpg://…"
      \\[hosts.edge-1]
      services = ["catalog"]
      gateway = true
      \\[hosts.app-1]
      services = ["orders", "billing"]
      replicas = { orders = 3 }
      \\[hosts.app-2]
      services = ["orders"]

      edge-1$ wiremesh run                # the table named like the hostname

      app-1$  wiremesh run --host app-1

      app-2$  wiremesh run --services orders --replicas orders=4 --no-gateway
    """
    import socket

    from wiremesh.gateway.http_protocol import parser_name as http_parser_name
    from wiremesh.runtime.config import config_for_target, load_config
    from wiremesh.runtime.placement import parse_replicas, parse_services, place
    from wiremesh.runtime.supervisor import Supervisor
    from wiremesh.runtime.targets import load_service_class

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.ERROR)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # --reload says it itself
    counts = list(replicas or [])
    try:
        if target is not None and ":" in target and not Path(target).exists():
            cwd = Path.cwd()
            cls = load_service_class(target, [cwd])
            bare = [int(c) for c in counts if c.isdigit() and int(c) >= 1]
            counts = [c for c in counts if not (c.isdigit() and int(c) >= 1)]
            nodes = bare[-1] if bare else 1
            config = config_for_target(target, root=cwd, replicas=nodes, name=cls.name)
        else:
            path = Path(target or "wiremesh.toml")
            if target is None and not path.exists():
                raise _fail(
                    "no wiremesh.toml in this folder: pass a configuration file or a "
                    "'module:Service' target (see 'wiremesh run --help')",
                    EXIT_USAGE,
                )
            config = load_config(path)
        placement = place(
            config,
            hostname=socket.gethostname(),
            host=host,
            services=parse_services(services) if services is not None else None,
            replicas=parse_replicas(counts),
            gateway=gateway,
        )
        supervisor = Supervisor(config, placement=placement, reload=reload)
        supervisor.check()
        # WIREMESH_LOOP and WIREMESH_HTTP_PARSER, checked before anything starts
        event_loop.loop_name()
        http_parser_name()
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    code = event_loop.run(_supervise(supervisor, live=sys.stdout.isatty() and not plain))
    raise typer.Exit(code)


async def _supervise(supervisor: Any, *, live: bool) -> int:
    from wiremesh.runtime.display import live_table

    supervisor.install_signal_handlers()
    try:
        if live:
            async with live_table(supervisor, out):
                return int(await supervisor.run())
        return int(await supervisor.run())
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except WiremeshError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_FAILED


# --------------------------------------------------------------------------------- call


def _read_payload(text: str | None) -> Any:
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            message = f"cannot read the payload file {text[1:]}: {exc.strerror}"
            raise _fail(message, EXIT_USAGE) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        message = (
            f"the payload is not valid JSON: {exc}. Quote it for the shell in single "
            """quotes, as JSON inside them: a string is '"A-1"', an object '{"sku": "A-1"}', """
            "a number 3"
        )
        raise _fail(message, EXIT_USAGE) from None


def _to_json(value: Any, indent: int | None = 2) -> str:
    try:
        return pydantic_core.to_json(value, indent=indent).decode()
    except pydantic_core.PydanticSerializationError:
        return pydantic_core.to_json(value, indent=indent, bytes_mode="base64").decode()


@app.command()
def call(
    target: Annotated[
        str,
        typer.Argument(
            help="service.method, or service@node-id.method (only service.method with "
            "--all or --group)",
            show_default=False,
        ),
    ],
    payload: Annotated[
        str | None,
        typer.Argument(
            help="The payload as JSON; '-' reads stdin, '@file.json' reads a file. "
            "Omit it for a method that takes nothing.",
            show_default=False,
        ),
    ] = None,
    node: Annotated[
        str | None, typer.Option(help="Call this node id rather than any node.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Deadline in seconds (default: the mesh's).")
    ] = None,
    all_nodes: Annotated[
        bool,
        typer.Option(
            "--all", help="Multicast: call every serving node of the service, not just one."
        ),
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            help="Multicast to the nodes of the service in this named group.",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="With --all or --group: wait for 'all' replies, the 'first' value, or "
            "'quorum(n)' values."
        ),
    ] = "all",
    mesh: _MeshOption = None,
) -> None:
    """Call a method and print its result as JSON.

    A method of one parameter takes its value itself ('"A-1"' for
    stock(sku: str)); a method of several takes an object of them by name.

    On error, prints the error type and message and exits 1 (2 for a bad
    target or payload, 3 when the mesh's registry is unreachable: nothing was
    called in either case).

    A streaming method prints each item it streams back as a JSON line, as
    it comes (a client-streaming or bidirectional one takes a JSON array of
    items as its payload); an error after some items exits 1 after them.

    With --all (or --group NAME) the call is a multicast: it goes to every
    serving node of the service (or those in the group) under one deadline,
    and prints one JSON object, node id -> its result, or
    {"error": {"type": ..., "status": ..., "message": ...}} for a node that
    failed or did not answer in time. It exits 0 when --mode was met, else 1.

    Examples:

      wiremesh call connectors.list

      wiremesh call flows.run '{"flow": "welcome", "input": {"name": "Ada"}}'

      wiremesh call inventory@inventory-3f9a.stock '"A-1"' --timeout 2

      wiremesh call prices.watch '"A-1"' --timeout 60

      wiremesh call cache.invalidate '"A-1"' --all --timeout 1

      wiremesh call warehouse.load --group eu --mode 'quorum(2)'

      wiremesh call inventory.stock '"A-1"' --mesh redis://10.0.0.5:6379/0#shop

      WIREMESH_MESH=redis://10.0.0.5:6379/0#shop wiremesh call inventory.stock '"A-1"'
    """
    multicast = all_nodes or group is not None
    if not multicast and mode != "all":
        raise _fail("--mode applies to a multicast: add --all or --group", EXIT_USAGE)
    if multicast and node is not None:
        raise _fail(
            "--node calls one node; --all and --group call many: use one or the other",
            EXIT_USAGE,
        )
    if multicast:
        from wiremesh.core.gather import parse_mode

        try:
            parse_mode(mode)
        except WiremeshError as exc:
            raise _fail(f"--mode: {exc}", EXIT_USAGE) from None
    from wiremesh.core.names import parse_target

    try:
        parse_target(target, node=node)
    except WiremeshError as exc:
        raise _fail(exc.message, EXIT_USAGE) from None
    value = _read_payload(payload)

    streamed = False

    async def go() -> Any:
        nonlocal streamed
        client = await _connect(mesh)
        try:
            if multicast:
                return await client.multicast(
                    target, value, mode=mode, timeout=timeout, group=group
                )
            if _stream_kind(client.snapshot, target, node):
                streamed = True  # each item printed as it comes, one JSON line each
                async for item in client.stream(target, value, node=node, timeout=timeout):
                    print(_to_json(item, indent=None), flush=True)
                return None
            return await client.call(target, value, node=node, timeout=timeout)
        finally:
            await client.close()

    result = _run_on_mesh(go)
    if streamed:
        return
    if not multicast:
        print(_to_json(result))
        return
    print(_to_json({node_id: _slot(result[node_id]) for node_id in sorted(result)}))
    if not result:
        where = f"in group {group!r}" if group is not None else "serving"
        raise _fail(f"no node of the service is {where}: nobody was called")
    if not result.satisfied:
        got = len(result.values)
        raise _fail(f"mode {result.mode} not met: {got} of {len(result)} node(s) answered a value")


def _stream_kind(snapshot: Any, target: str, node: str | None) -> str:
    """The stream kind of ``target``'s method as the mesh lists it; empty when unary or
    unknown (the call then says what is wrong)."""
    from wiremesh.core.names import parse_target

    where = parse_target(target, node=node)
    for info in snapshot.by_service.get(where.service, ()):
        method = info.methods.get(where.method)
        if method is not None:
            return str(method.streaming)
    return ""


def _slot(outcome: Any) -> Any:
    """One node's entry in a multicast's JSON: its value, or its error as an object."""
    if isinstance(outcome, WiremeshError):
        return {
            "error": {
                "type": type(outcome).__name__,
                "status": outcome.status.value,
                "message": outcome.message,
                **({"remote_type": outcome.remote_type} if outcome.remote_type else {}),
            }
        }
    return outcome


# --------------------------------------------------------------------------------- nodes


_PIPE_WIDTH = 1000


def _uptime(started_at: float) -> str:
    from wiremesh.runtime.display import format_uptime

    return format_uptime(time.time() - started_at) if started_at else "-"


@app.command()
def nodes(
    mesh: _MeshOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0.1,
            help="Seconds to wait for the registry's answer before saying it is unreachable.",
        ),
    ] = 5.0,
) -> None:
    """List the live nodes: service, node id, host, address, pid, state, uptime, and the
    published messages each dropped.

    The host is the one the node advertises (where it runs, as other hosts reach it).

    When the mesh's registry does not answer within --timeout seconds, says so in one line
    and exits 3.

    "dropped" counts publishes lost at that node since it started: "out" were not sent
    because the link to a subscriber was full (the subscriber or the network is slow),
    "in" arrived but were dropped because the node's own handlers could not keep up. The
    counts come with the nodes' heartbeats; --json prints every counter under "stats".

    Examples:

      wiremesh nodes

      wiremesh nodes --json

      wiremesh nodes --mesh 127.0.0.1:7400

      wiremesh nodes --mesh redis://10.0.0.5:6379/0#shop --timeout 2

      WIREMESH_MESH=rediss://redis.internal:6380/0#shop wiremesh nodes
    """

    async def go() -> list[Any]:
        client = await _connect(mesh, timeout=wait)
        try:
            return list(client.nodes())
        finally:
            await client.close()

    found: list[Any] = _run_on_mesh(go)
    found.sort(key=lambda n: (n.service, n.node_id))
    if as_json:
        for n in found:
            row = {
                "service": n.service,
                "node": n.node_id,
                "host": _host_of(n),
                "address": n.address,
                "pid": n.pid,
                "state": n.state.value,
                "started_at": n.started_at,
                "methods": sorted(n.methods),
                "groups": list(n.groups),
                "subscriptions": list(n.subscriptions),
                "stats": dict(n.stats),
                "metrics": n.metadata.get("wm-metrics", ""),
            }
            print(json.dumps(row))
        return
    table = Table()
    columns = ("service", "node", "host", "address", "pid", "state", "uptime", "groups", "dropped")
    for column in columns:
        # a narrow terminal folds a cell onto more lines, never cuts a node id or address
        table.add_column(column, overflow="fold")

    def dropped(stats: Any) -> str:
        if "publish_dropped" not in stats and "publish_delivery_dropped" not in stats:
            return "-"  # no heartbeat with counters yet
        sent, arrived = stats.get("publish_dropped", 0), stats.get("publish_delivery_dropped", 0)
        return f"out {sent} / in {arrived}" if sent or arrived else "0"

    for n in found:
        table.add_row(
            n.service,
            n.node_id,
            _host_of(n),
            n.address,
            str(n.pid),
            n.state.value,
            _uptime(n.started_at),
            ",".join(n.groups) or "-",
            dropped(n.stats),
        )
    # a pipe has no width: print each row whole, for grep and friends
    (out if out.is_terminal else Console(width=_PIPE_WIDTH)).print(table)
    if not found:
        err.print("no live nodes")


def _host_of(node: Any) -> str:
    """The host a node advertises (from its address when its record has none)."""
    return str(node.host) or str(node.address).rpartition(":")[0].strip("[]") or "-"


# --------------------------------------------------------------------------------- dlq

_BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        envvar=BROKER_VARIABLE,
        show_default=False,
        help="The mesh's broker: amqp://user:password@host:5672/vhost (or the "
        "embedded://host:port of a 'wiremesh run'). Default: the broker of the mesh running "
        "in the --mesh folder, else the \\[broker] url of ./wiremesh.toml.",
    ),
]
_IdsArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Message ids (as 'wiremesh dlq list' shows them).", show_default=False),
]
_AllOption = Annotated[bool, typer.Option("--all", help="Every dead letter.")]


def _dead_letters(mesh: str | None, broker_url: str | None, work: Any) -> Any:
    """Run ``work(broker)`` against the broker of the mesh ``mesh`` names (``--mesh``),
    or the one ``broker_url`` names (``--broker``)."""

    async def go() -> Any:
        from wiremesh.messaging.backends import open_broker

        where = mesh or "."
        if _is_registry(where):
            url, data_dir, name, tls, quorum = await _broker_of_registry(where, broker_url)
        else:
            url, data_dir, name, tls, quorum = _broker_of(Path(where), broker_url)
        broker = open_broker(url, data_dir=data_dir, mesh=name, tls=tls, quorum_queues=quorum)
        try:
            await broker.start()
            return await work(broker)
        finally:
            await broker.close()

    try:
        return asyncio.run(go())
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None


def _broker_of(folder: Path, given: str | None) -> tuple[str, Path, str, Any, bool]:
    """The broker of the mesh in ``folder``: ``given``, else the running mesh's, else the
    amqp url of its ``wiremesh.toml``."""
    from wiremesh.runtime.config import default_config, load_config
    from wiremesh.runtime.meshfile import MeshFile

    path = folder / "wiremesh.toml"
    config = load_config(path) if path.is_file() else default_config(folder.resolve())
    try:
        running = MeshFile.find(folder)
    except Unavailable as exc:
        if given is None and config.broker.embedded:
            raise Unavailable(
                f"{exc.message} (the embedded broker runs inside 'wiremesh run'; give "
                "--broker for another one)"
            ) from None
        url = given or config.broker.url
        tls = _folder_tls(folder) if url.startswith("embedded") else None
        return url, config.data_path, config.mesh.name, tls, config.broker.quorum_queues
    url = given or running.broker or config.broker.url
    return url, config.data_path, running.name, running.client_tls(), running.quorum_queues


async def _broker_of_registry(where: str, given: str | None) -> tuple[str, Path, str, Any, bool]:
    """The broker of a mesh named by its registry: ``given``, else the amqp url of this
    folder's ``wiremesh.toml`` (a registry does not say where the broker is). The mesh's
    name is the URL's ``#name``, else the configuration's, else the one mesh of the
    Redis database."""
    from wiremesh.core.names import is_redis_url, redact_url, split_mesh
    from wiremesh.runtime.config import load_config

    here = Path.cwd()
    path = here / "wiremesh.toml"
    config = load_config(path) if path.is_file() else None
    url = given
    if url is None and config is not None and not config.broker.embedded:
        url = config.broker.url
    registry, name = split_mesh(where) if is_redis_url(where) else (where, None)
    if url is None:
        raise ConfigError(
            f"wiremesh dlq needs the mesh's broker, and the registry at "
            f"{redact_url(registry)} does not say where it is: give --broker "
            f"amqp://user:password@host:5672/vhost (or set {BROKER_VARIABLE}), or run the "
            "command in the folder of the mesh's wiremesh.toml"
        )
    tls = _folder_tls(here)
    if name is None and config is not None:
        name = config.mesh.name
    if name is None and is_redis_url(where):
        from wiremesh.registry.redis import find_mesh

        name = await find_mesh(registry, tls=tls)
    data_dir = config.data_path if config is not None else here / ".wiremesh"
    quorum = config.broker.quorum_queues if config is not None else False
    return url, data_dir, name or "wiremesh", tls, quorum


def _ids_or_all(ids: list[str] | None, every: bool) -> list[str] | None:
    if every and ids:
        raise _fail("give message ids or --all, not both", EXIT_USAGE)
    if not every and not ids:
        raise _fail("give the message ids, or --all", EXIT_USAGE)
    return None if every else list(dict.fromkeys(ids or []))


def _dead_as_json(dead: Any) -> dict[str, Any]:
    from wiremesh.core.codec import decode

    envelope = dead.envelope
    row: dict[str, Any] = {
        "id": envelope.id,
        "kind": envelope.kind,
        "topic": envelope.topic,
        "queue": dead.queue,
        "attempt": envelope.attempt,
        "reason": dead.reason,
        "died_at": dead.died_at,
        "codec": envelope.codec,
        "headers": dict(envelope.headers),
        "size": len(envelope.body),
    }
    try:
        if envelope.codec in ("msgpack", "json"):
            row["payload"] = decode(envelope.body, envelope.codec)
        else:
            raise WiremeshError("opaque")
    except WiremeshError:
        import base64

        row["payload_base64"] = base64.b64encode(envelope.body).decode()
    return row


@dlq_app.command("list")
def dlq_list(
    mesh: _MeshOption = None,
    broker: _BrokerOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List dead letters, oldest first: id, queue (service/handler), topic, attempts,
    when it died and why.

    Examples:

      wiremesh dlq list

      wiremesh dlq list --json --limit 1000

      wiremesh dlq list --mesh redis://10.0.0.5:6379/0#shop --broker amqp://app:pw@10.0.0.6/
    """
    found = _dead_letters(mesh, broker, lambda found: found.dead_letters(limit=limit))
    if as_json:
        for dead in found:
            row = _dead_as_json(dead)
            row.pop("payload", None)
            row.pop("payload_base64", None)
            print(_to_json(row).replace("\n", "").replace("  ", " "))
        return
    table = Table()
    for column in ("id", "queue", "topic", "attempts", "died", "reason"):
        table.add_column(column, overflow="fold")
    for dead in found:
        table.add_row(
            dead.envelope.id,
            dead.queue,
            dead.envelope.topic,
            str(dead.envelope.attempt),
            _uptime(dead.died_at) + " ago",
            dead.reason if len(dead.reason) <= 120 else dead.reason[:119] + "…",
        )
    (out if out.is_terminal else Console(width=_PIPE_WIDTH)).print(table)
    if not found:
        err.print("no dead letters")


@dlq_app.command("show")
def dlq_show(
    message_id: Annotated[str, typer.Argument(help="The message id.", show_default=False)],
    mesh: _MeshOption = None,
    broker: _BrokerOption = None,
) -> None:
    """Print one dead letter as JSON: its envelope, headers, full reason and payload
    (decoded for msgpack and json, base64 otherwise). Exits 1 when there is none.

    Example:

      wiremesh dlq show 3f2a9c0d8e1b4a5f9c7d6e5f4a3b2c1d
    """
    found = _dead_letters(mesh, broker, lambda found: found.dead_letter(message_id))
    if found is None:
        raise _fail(f"no dead letter {message_id!r}")
    print(_to_json(_dead_as_json(found)))


@dlq_app.command("replay")
def dlq_replay(
    ids: _IdsArgument = None,
    every: _AllOption = False,
    mesh: _MeshOption = None,
    broker: _BrokerOption = None,
) -> None:
    """Put dead letters back on the queue they died on, with their attempts reset; their
    handler gets them again. Exits 1 when an id was not found.

    Examples:

      wiremesh dlq replay 3f2a9c0d8e1b4a5f9c7d6e5f4a3b2c1d

      wiremesh dlq replay --all
    """
    wanted = _ids_or_all(ids, every)
    count = _dead_letters(mesh, broker, lambda found: found.replay(wanted))
    print(f"replayed {count} message(s)")
    if wanted is not None and count < len(wanted):
        raise _fail(f"{len(wanted) - count} of the {len(wanted)} id(s) are not dead letters")


@dlq_app.command("purge")
def dlq_purge(
    ids: _IdsArgument = None,
    every: _AllOption = False,
    mesh: _MeshOption = None,
    broker: _BrokerOption = None,
) -> None:
    """Delete dead letters for good. Exits 1 when an id was not found.

    Examples:

      wiremesh dlq purge 3f2a9c0d8e1b4a5f9c7d6e5f4a3b2c1d

      wiremesh dlq purge --all
    """
    wanted = _ids_or_all(ids, every)
    count = _dead_letters(mesh, broker, lambda found: found.purge(wanted))
    print(f"purged {count} message(s)")
    if wanted is not None and count < len(wanted):
        raise _fail(f"{len(wanted) - count} of the {len(wanted)} id(s) are not dead letters")


# --------------------------------------------------------------------------------- certs


CERTS_DIR = Path(".wiremesh/certs")


@certs_app.command("init")
def certs_init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")] = CERTS_DIR,
    host: Annotated[
        list[str] | None,
        typer.Option(help="A host name or IP the node certificate is valid for (repeat)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing CA (every certificate it signed stops being trusted).",
        ),
    ] = False,
) -> None:
    """Create a development CA and certificates for mutual TLS.

    Writes ca.pem, node.pem and client.pem with their keys. Turn TLS on with

      \\[tls]
      enabled = true

    in wiremesh.toml (the default paths point at .wiremesh/certs/).

    An existing CA is kept: replacing it would invalidate every certificate it signed.
    Certificates for more hosts come from 'wiremesh certs issue --host NAME'.

    Examples:

      wiremesh certs init

      wiremesh certs init --host mesh.internal --host 10.0.0.5
    """
    from wiremesh.transport.certs import DEFAULT_HOSTS, CertPaths, create_dev_ca

    existing = CertPaths.in_directory(directory)
    if not force and (existing.ca.exists() or existing.ca_key.exists()):
        raise _fail(
            f"a development CA already exists in {directory}; replacing it would invalidate "
            "every certificate it signed. Issue more certificates with "
            "'wiremesh certs issue --host NAME', or pass --force to replace the CA.",
            EXIT_USAGE,
        )
    hosts = tuple(host) if host else DEFAULT_HOSTS
    try:
        paths = create_dev_ca(directory, hosts=hosts, overwrite=force)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    print(f"CA:     {paths.ca}")
    print(f"node:   {paths.node_cert} (key {paths.node_key})")
    print(f"client: {paths.client_cert} (key {paths.client_key})")


@certs_app.command("issue")
def certs_issue(
    host: Annotated[
        list[str],
        typer.Option(
            help="A host name or IP address the certificate is valid for (repeat).",
            metavar="NAME|IP",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            help="File stem: writes NAME.pem and NAME-key.pem. Default: node-<first host>.",
            show_default=False,
        ),
    ] = None,
    directory: Annotated[
        Path, typer.Option("--dir", help="The folder of the CA ('wiremesh certs init --dir').")
    ] = CERTS_DIR,
    ca: Annotated[
        Path | None,
        typer.Option(help="The CA certificate. Default: DIR/ca.pem.", show_default=False),
    ] = None,
    ca_key: Annotated[
        Path | None,
        typer.Option(help="The CA's key. Default: DIR/ca-key.pem.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the files. Default: the CA's folder.", show_default=False
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(
            help="Validity in days. Default: as for 'certs init' (825).", show_default=False
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing files of the same name.")
    ] = False,
) -> None:
    """Issue a certificate for one host, signed by the existing development CA.

    The certificate carries every --host as a subjectAltName (a DNS name, or an IP
    address) and serves for both server and client authentication: the host's nodes
    present it to the nodes of other hosts and accept them (mutual TLS). Give the names
    and addresses the other hosts reach this host by, that is, the address its nodes
    advertise. Copy NAME.pem, NAME-key.pem and ca.pem to that host and point \\[tls] ca,
    cert and key at them. The CA must exist already: run 'wiremesh certs init' once.

    Examples:

      wiremesh certs issue --host hostb.internal --host 10.0.0.7

      wiremesh certs issue --host 10.0.0.8 --name node-hostc --out ./for-hostc

      wiremesh certs issue --host db.internal --ca /secure/ca.pem --ca-key /secure/ca-key.pem
    """
    from wiremesh.transport.certs import DEFAULT_DAYS, issue_host_certificate

    ca_cert = ca if ca is not None else directory / "ca.pem"
    ca_private = ca_key if ca_key is not None else directory / "ca-key.pem"
    missing = [str(path) for path in (ca_cert, ca_private) if not path.is_file()]
    if missing:
        raise _fail(
            f"no development CA: {' and '.join(missing)} not found. Create one with "
            "'wiremesh certs init' first (or point --ca and --ca-key at an existing one).",
            EXIT_USAGE,
        )
    try:
        issued = issue_host_certificate(
            ca_cert,
            ca_private,
            host,
            out_dir=out,
            name=name,
            days=DEFAULT_DAYS if days is None else days,
            overwrite=force,
        )
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    until = issued.not_after.strftime("%Y-%m-%d")
    print(f"certificate: {issued.cert} ({', '.join(issued.names)}; valid until {until})")
    print(f"key:         {issued.key} (mode 0600)")
    print(f"signed by:   {ca_cert}")


# --------------------------------------------------------------------------------- gateway


def _config_at(config: Path | None) -> Any:
    from wiremesh.runtime.config import default_config, load_config

    if config is not None:
        return load_config(config)
    here = Path("wiremesh.toml")
    return load_config(here) if here.is_file() else default_config(Path.cwd())


def _gateway_registry(where: str | None, config: MeshConfig) -> tuple[str, str | None, str | None]:
    """The registry a gateway joins, the mesh's name (None: ask Redis) and its join
    secret (from its ``mesh.json``): ``--mesh`` when given, else the Redis registry of
    ``config``, else the mesh running in its folder."""
    from wiremesh.core.names import is_redis_url, split_mesh
    from wiremesh.runtime.meshfile import MeshFile, join_secret_of

    if where is not None and is_redis_url(where):
        url, name = split_mesh(where)
        if name is None and config.registry.redis and config.registry.url == url:
            name = config.mesh.name  # the configuration's own Redis: its mesh
        return url, name, None
    if where is not None and _is_registry(where):
        return where, config.mesh.name, join_secret_of(where, config.data_path)
    if where is not None:
        running = MeshFile.find(Path(where))
        return running.registry, running.name, running.join_secret
    if config.registry.redis:
        return config.registry.url, config.mesh.name, None
    running = MeshFile.find(config.root)
    return running.registry, running.name, running.join_secret


@app.command()
def gateway(
    mesh: _MeshOption = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="The mesh's wiremesh.toml (default: the --mesh folder's, else "
            "./wiremesh.toml if any).",
            show_default=False,
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(help="The registry's host:port (an older name of --mesh).", hidden=True),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Override gateway.host.", show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Override gateway.port.", show_default=False)
    ] = None,
) -> None:
    """Run a browser gateway alone, for a mesh that runs elsewhere.

    'wiremesh run' starts a gateway by itself; this command is for more gateways, or
    gateways on other machines. It reads the \\[gateway] settings of the configuration
    file and joins the mesh --mesh names: its Redis registry's URL, an embedded
    registry's host:port, or a folder where 'wiremesh run' runs. Without --mesh: the
    Redis registry of the configuration (\\[registry] backend = "redis"), else the mesh
    running in this folder.

    It registers the address other hosts reach it at (\\[mesh] advertise, or the one
    that reaches the registry) and the URL browsers reach it at (\\[gateway] public_url,
    else its own), which it prints. Ctrl-C closes its sessions with 1001 and stops it.

    Examples:

      wiremesh gateway --mesh redis://10.0.0.5:6379/0#shop --host 0.0.0.0 --port 8443

      wiremesh gateway --mesh 10.0.0.5:7400 --config deploy/wiremesh.toml

      WIREMESH_MESH=rediss://redis.internal:6380/0#shop wiremesh gateway --port 8081
    """
    import signal

    from wiremesh.runtime.gateway_process import gateway_of, mesh_tls, serve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.ERROR)
    where = registry or mesh
    try:
        if config is None and where is not None and not _is_registry(where):
            folder_config = Path(where) / "wiremesh.toml"
            config = folder_config if folder_config.is_file() else None
        mesh_config = _config_at(config)
        overrides: dict[str, Any] = {}
        if host is not None:
            overrides["host"] = host
        if port is not None:
            overrides["port"] = port
        if overrides:
            settings = mesh_config.gateway.model_dump() | overrides
            mesh_config = mesh_config.model_validate(
                mesh_config.model_dump() | {"gateway": settings}
            )
        address, name, join_secret = _gateway_registry(where, mesh_config)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None

    def announce(gw: Any) -> None:
        listening = "" if gw.url == gw.local_url else f" (listening at {gw.local_url}/)"
        print(f"gateway: {gw.url}/{listening}", flush=True)

    async def go() -> None:
        from wiremesh.registry.redis import find_mesh

        found = name or await find_mesh(address, tls=mesh_tls(mesh_config))
        # its gRPC channels: this loop's
        gw = gateway_of(mesh_config, address, mesh=found, join_secret=join_secret)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(gw, stop=stop, announce=announce)

    try:
        event_loop.run_gateway(go())
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None


@app.command()
def token(
    sub: Annotated[str, typer.Option("--sub", help="The principal (the token's subject).")] = "dev",
    scope: Annotated[
        list[str] | None, typer.Option(help="A scope to grant (repeat).", show_default=False)
    ] = None,
    role: Annotated[
        list[str] | None, typer.Option(help="A role to grant (repeat).", show_default=False)
    ] = None,
    ttl: Annotated[float, typer.Option(min=1, help="Seconds until it expires.")] = 3600.0,
    config: Annotated[
        Path | None,
        typer.Option(help="The mesh's wiremesh.toml (default: ./wiremesh.toml if any)."),
    ] = None,
) -> None:
    """Mint a development token (JWT, HS256) that the mesh's gateway accepts.

    It is signed with gateway.auth.secret (or secret_file) when the configuration
    sets one, else with the development secret 'wiremesh run' keeps under the data
    folder (made now if missing). gateway.auth.audience and issuer are put in.

    Examples:

      wiremesh token

      wiremesh token --sub ada --scope chat:write --ttl 600

      websocat -H "Sec-WebSocket-Protocol: wiremesh.v1, bearer.$(wiremesh token)" \\
          ws://127.0.0.1:8080/ws/chat
    """
    from wiremesh.gateway.auth import dev_secret, mint_token

    try:
        mesh_config = _config_at(config)
        auth = mesh_config.gateway.auth
        secret: str | None = auth.secret or None
        if auth.secret_file:
            path = mesh_config.root / auth.secret_file
            try:
                secret = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"gateway.auth.secret_file: cannot read {path}: {exc}") from None
        if secret is None:
            if auth.configured:
                raise ConfigError(
                    "the gateway checks tokens with public keys: mint them with the "
                    "matching private key (your identity provider), not here"
                )
            secret = dev_secret(mesh_config.data_path)
        assert secret is not None
        print(
            mint_token(
                secret,
                subject=sub,
                ttl=ttl,
                scopes=scope or (),
                roles=role or (),
                audience=auth.audience or None,
                issuer=auth.issuer or None,
            )
        )
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


@app.command()
def top(
    mesh: _MeshOption = None,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two readings of the nodes.")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one table (after two readings) and exit.")
    ] = False,
) -> None:
    """A live view of the mesh: per node, calls per second, errors per second, latency
    percentiles of the calls it served (p50, p99 over the last interval), publishes it
    dropped, frames waiting on its links, and its open circuits (the nodes its calls
    leave out because their calls kept failing; "node?" while a probe is out). Ctrl-C
    quits.

    Figures come from each node's /metrics endpoint ([observability] metrics, on by
    default); a node that does not answer shows "-". The title says whether the
    registry answers: while it does not, the nodes shown are its last view (nodes and
    gateways keep working on theirs; each exports wiremesh_registry_reachable).

    Examples:

      wiremesh top

      wiremesh top --interval 5

      wiremesh top --once --mesh 127.0.0.1:7400

      wiremesh top --mesh redis://10.0.0.5:6379/0#shop
    """
    from rich.live import Live

    from wiremesh.runtime.top import Sampler, top_table

    def title(client: MeshClient, rows: list[Any]) -> str:
        registry = (
            "registry reachable"
            if client.view.reachable
            else "[bold red]registry UNREACHABLE[/]: its last view"
        )
        return f"wiremesh top: {len(rows)} node(s), every {interval:g}s, {registry}"

    async def go() -> None:
        client = await _connect(mesh)
        sampler = Sampler()
        try:
            await sampler.sample(client.nodes())
            if once:
                await asyncio.sleep(interval)
                rows = await sampler.sample(client.nodes())
                table = top_table(rows, title=title(client, rows))
                (out if out.is_terminal else Console(width=_PIPE_WIDTH)).print(table)
                return
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(interval)
                    rows = await sampler.sample(client.nodes())
                    live.update(top_table(rows, title=title(client, rows)), refresh=True)
        finally:
            await client.close()

    try:
        _run_on_mesh(go)
    except KeyboardInterrupt:
        return


def main() -> None:
    # grpc read GRPC_EXPERIMENTS as this module imported it: the commands that serve gRPC
    # in this process (run's registry and broker, a lone gateway) start again with it
    # set; every command sets it for the processes it starts (see grpc_core)
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    grpc_core.prefer_loop_io(restart=command in ("run", "gateway"))
    app()


if __name__ == "__main__":
    main()
