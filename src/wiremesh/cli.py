"""The ``wiremesh`` command.

Exit codes: 0 success; 1 the call or the mesh failed (the error type and message are
printed); 2 bad usage or bad input (a payload that is not JSON, a broken config file).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import wiremesh
from wiremesh.errors import ConfigError, WiremeshError

app = typer.Typer(
    name="wiremesh",
    help=(
        "Run and talk to a wiremesh: services as processes, talking over gRPC.\n\n"
        "Start the mesh of ./wiremesh.toml with 'wiremesh run', then talk to it\n"
        "from another terminal in the same folder.\n\n"
        "Examples:\n\n"
        "  wiremesh run                  # the mesh of ./wiremesh.toml\n\n"
        "  wiremesh nodes                # which nodes run, and where\n\n"
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
        "The broker is the one of the mesh running in --mesh (default: this folder), or the "
        "amqp url of its wiremesh.toml.\n\n"
        "Examples:\n\n"
        "  wiremesh dlq list\n\n"
        "  wiremesh dlq show 3f2a9c...\n\n"
        "  wiremesh dlq replay 3f2a9c... 77b0e1...\n\n"
        "  wiremesh dlq purge --all"
    ),
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

err = Console(stderr=True)
out = Console()

EXIT_FAILED = 1
EXIT_USAGE = 2


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
        int, typer.Option(min=1, help="Nodes to start, with a module:Service target.")
    ] = 1,
    plain: Annotated[
        bool, typer.Option("--plain", help="Print plain lines even on a terminal.")
    ] = False,
) -> None:
    """Start the mesh: the registry and every service's nodes, as separate processes.

    Restarts nodes that die. Ctrl-C (or SIGTERM) drains the mesh: in-flight
    calls finish within mesh.drain_grace seconds, then every node stops and
    the command exits 0. A second Ctrl-C stops everything at once.

    Examples:

      wiremesh run                        # ./wiremesh.toml

      wiremesh run examples/ipaas/wiremesh.toml

      wiremesh run myapp.pricing:Pricing --replicas 3
    """
    from wiremesh.runtime.config import config_for_target, load_config
    from wiremesh.runtime.supervisor import Supervisor
    from wiremesh.runtime.targets import load_service_class

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.ERROR)
    try:
        if target is not None and ":" in target and not Path(target).exists():
            cwd = Path.cwd()
            cls = load_service_class(target, [cwd])
            config = config_for_target(target, root=cwd, replicas=replicas, name=cls.name)
        else:
            path = Path(target or "wiremesh.toml")
            if target is None and not path.exists():
                raise _fail(
                    "no wiremesh.toml in this folder: pass a configuration file or a "
                    "'module:Service' target (see 'wiremesh run --help')",
                    EXIT_USAGE,
                )
            config = load_config(path)
        supervisor = Supervisor(config)
        supervisor.check()
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    code = asyncio.run(_supervise(supervisor, live=sys.stdout.isatty() and not plain))
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
        raise _fail(f"the payload is not valid JSON: {exc}", EXIT_USAGE) from None


def _to_json(value: Any) -> str:
    try:
        return pydantic_core.to_json(value, indent=2).decode()
    except pydantic_core.PydanticSerializationError:
        return pydantic_core.to_json(value, indent=2, bytes_mode="base64").decode()


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
    mesh: Annotated[
        Path, typer.Option(help="Folder of the running mesh, or a registry host:port.")
    ] = Path("."),
) -> None:
    """Call a method and print its result as JSON.

    On error, prints the error type and message and exits 1.

    With --all (or --group NAME) the call is a multicast: it goes to every
    serving node of the service (or those in the group) under one deadline,
    and prints one JSON object, node id -> its result, or
    {"error": {"type": ..., "status": ..., "message": ...}} for a node that
    failed or did not answer in time. It exits 0 when --mode was met, else 1.

    Examples:

      wiremesh call connectors.list

      wiremesh call flows.run '{"flow": "welcome", "input": {"name": "Ada"}}'

      wiremesh call inventory@inventory-3f9a.stock '"A-1"' --timeout 2

      wiremesh call cache.invalidate '"A-1"' --all --timeout 1

      wiremesh call warehouse.load --group eu --mode 'quorum(2)'
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
    value = _read_payload(payload)

    async def go() -> Any:
        from wiremesh.client import connect

        client = await connect(str(mesh), timeout=5.0)
        try:
            if multicast:
                return await client.multicast(
                    target, value, mode=mode, timeout=timeout, group=group
                )
            return await client.call(target, value, node=node, timeout=timeout)
        finally:
            await client.close()

    try:
        result = asyncio.run(go())
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None
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
    mesh: Annotated[
        Path, typer.Option(help="Folder of the running mesh, or a registry host:port.")
    ] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List the live nodes: service, node id, address, pid, state, uptime, and the
    published messages each dropped.

    "dropped" counts publishes lost at that node since it started: "out" were not sent
    because the link to a subscriber was full (the subscriber or the network is slow),
    "in" arrived but were dropped because the node's own handlers could not keep up. The
    counts come with the nodes' heartbeats; --json prints every counter under "stats".

    Examples:

      wiremesh nodes

      wiremesh nodes --json

      wiremesh nodes --mesh 127.0.0.1:7400
    """

    async def go() -> list[Any]:
        from wiremesh.client import connect

        client = await connect(str(mesh), timeout=5.0)
        try:
            return list(client.nodes())
        finally:
            await client.close()

    try:
        found = asyncio.run(go())
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None
    found.sort(key=lambda n: (n.service, n.node_id))
    if as_json:
        for n in found:
            row = {
                "service": n.service,
                "node": n.node_id,
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
    for column in ("service", "node", "address", "pid", "state", "uptime", "groups", "dropped"):
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


# --------------------------------------------------------------------------------- dlq

_MeshOption = Annotated[
    Path, typer.Option(help="Folder of the mesh (its wiremesh.toml and running mesh).")
]
_IdsArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Message ids (as 'wiremesh dlq list' shows them).", show_default=False),
]
_AllOption = Annotated[bool, typer.Option("--all", help="Every dead letter.")]


def _dead_letters(folder: Path, work: Any) -> Any:
    """Run ``work(broker)`` against the broker of the mesh in ``folder``."""

    async def go() -> Any:
        from wiremesh.messaging.base import open_broker

        url, data_dir, name, tls, quorum = _broker_of(folder)
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


def _broker_of(folder: Path) -> tuple[str, Path, str, Any, bool]:
    from wiremesh.errors import Unavailable
    from wiremesh.runtime.config import default_config, load_config
    from wiremesh.runtime.meshfile import MeshFile

    path = folder / "wiremesh.toml"
    config = load_config(path) if path.is_file() else default_config(folder.resolve())
    try:
        running = MeshFile.find(folder)
    except Unavailable as exc:
        if config.broker.embedded:
            raise Unavailable(
                f"{exc.message} (the embedded broker runs inside 'wiremesh run')"
            ) from None
        broker = config.broker
        return broker.url, config.data_path, config.mesh.name, None, broker.quorum_queues
    url = running.broker or config.broker.url
    return url, config.data_path, running.name, running.client_tls(), running.quorum_queues


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
    mesh: _MeshOption = Path("."),
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List dead letters, oldest first: id, queue (service/handler), topic, attempts,
    when it died and why.

    Examples:

      wiremesh dlq list

      wiremesh dlq list --json --limit 1000
    """
    found = _dead_letters(mesh, lambda broker: broker.dead_letters(limit=limit))
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
    mesh: _MeshOption = Path("."),
) -> None:
    """Print one dead letter as JSON: its envelope, headers, full reason and payload
    (decoded for msgpack and json, base64 otherwise). Exits 1 when there is none.

    Example:

      wiremesh dlq show 3f2a9c0d8e1b4a5f9c7d6e5f4a3b2c1d
    """
    found = _dead_letters(mesh, lambda broker: broker.dead_letter(message_id))
    if found is None:
        raise _fail(f"no dead letter {message_id!r}")
    print(_to_json(_dead_as_json(found)))


@dlq_app.command("replay")
def dlq_replay(
    ids: _IdsArgument = None,
    every: _AllOption = False,
    mesh: _MeshOption = Path("."),
) -> None:
    """Put dead letters back on the queue they died on, with their attempts reset; their
    handler gets them again. Exits 1 when an id was not found.

    Examples:

      wiremesh dlq replay 3f2a9c0d8e1b4a5f9c7d6e5f4a3b2c1d

      wiremesh dlq replay --all
    """
    wanted = _ids_or_all(ids, every)
    count = _dead_letters(mesh, lambda broker: broker.replay(wanted))
    print(f"replayed {count} message(s)")
    if wanted is not None and count < len(wanted):
        raise _fail(f"{len(wanted) - count} of the {len(wanted)} id(s) are not dead letters")


@dlq_app.command("purge")
def dlq_purge(
    ids: _IdsArgument = None,
    every: _AllOption = False,
    mesh: _MeshOption = Path("."),
) -> None:
    """Delete dead letters for good. Exits 1 when an id was not found.

    Examples:

      wiremesh dlq purge 3f2a9c0d8e1b4a5f9c7d6e5f4a3b2c1d

      wiremesh dlq purge --all
    """
    wanted = _ids_or_all(ids, every)
    count = _dead_letters(mesh, lambda broker: broker.purge(wanted))
    print(f"purged {count} message(s)")
    if wanted is not None and count < len(wanted):
        raise _fail(f"{len(wanted) - count} of the {len(wanted)} id(s) are not dead letters")


# --------------------------------------------------------------------------------- certs


@certs_app.command("init")
def certs_init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")] = Path(
        ".wiremesh/certs"
    ),
    host: Annotated[
        list[str] | None,
        typer.Option(help="A host name or IP the node certificate is valid for (repeat)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Create a development CA and certificates for mutual TLS.

    Writes ca.pem, node.pem and client.pem with their keys. Turn TLS on with

      [tls]
      enabled = true

    in wiremesh.toml (the default paths point at .wiremesh/certs/).
    """
    from wiremesh.transport.certs import create_dev_ca

    hosts = tuple(host) if host else ("localhost", "127.0.0.1", "::1")
    try:
        paths = create_dev_ca(directory, hosts=hosts, overwrite=force)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    print(f"CA:     {paths.ca}")
    print(f"node:   {paths.node_cert} (key {paths.node_key})")
    print(f"client: {paths.client_cert} (key {paths.client_key})")


# --------------------------------------------------------------------------------- gateway


def _config_at(config: Path | None) -> Any:
    from wiremesh.runtime.config import default_config, load_config

    if config is not None:
        return load_config(config)
    here = Path("wiremesh.toml")
    return load_config(here) if here.is_file() else default_config(Path.cwd())


@app.command()
def gateway(
    config: Annotated[
        Path | None,
        typer.Option(help="The mesh's wiremesh.toml (default: ./wiremesh.toml if any)."),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            help="The registry's host:port (default: the one of the mesh running here).",
            show_default=False,
        ),
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
    gateways on other machines. It reads the [gateway] settings of the configuration
    file and joins the mesh whose registry is given (or the one running in this
    folder). Ctrl-C closes its sessions with 1001 and stops it.

    Examples:

      wiremesh gateway --registry 10.0.0.5:7400 --host 0.0.0.0 --port 8443

      wiremesh gateway --config deploy/wiremesh.toml --port 8081
    """
    import signal

    from wiremesh.gateway.process import gateway_of, serve
    from wiremesh.runtime.meshfile import MeshFile

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("grpc").setLevel(logging.ERROR)
    try:
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
        if registry is None:
            registry = MeshFile.find(mesh_config.root).registry
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None

    async def go() -> None:
        assert registry is not None
        gw = gateway_of(mesh_config, registry)  # its gRPC channels belong to this loop
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(gw, stop=stop, announce=lambda g: print(f"gateway: {g.url}/", flush=True))

    try:
        asyncio.run(go())
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
    mesh: Annotated[
        Path, typer.Option(help="Folder of the running mesh, or a registry host:port.")
    ] = Path("."),
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two readings of the nodes.")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one table (after two readings) and exit.")
    ] = False,
) -> None:
    """A live view of the mesh: per node, calls per second, errors per second, latency
    percentiles of the calls it served (p50, p99 over the last interval), publishes it
    dropped and frames waiting on its links. Ctrl-C quits.

    Figures come from each node's /metrics endpoint ([observability] metrics, on by
    default); a node that does not answer shows "-".

    Examples:

      wiremesh top

      wiremesh top --interval 5

      wiremesh top --once --mesh 127.0.0.1:7400
    """
    from rich.live import Live

    from wiremesh.runtime.top import Sampler, top_table

    async def go() -> None:
        from wiremesh.client import connect

        client = await connect(str(mesh), timeout=5.0)
        sampler = Sampler()
        try:
            await sampler.sample(client.nodes())
            if once:
                await asyncio.sleep(interval)
                table = top_table(await sampler.sample(client.nodes()))
                (out if out.is_terminal else Console(width=_PIPE_WIDTH)).print(table)
                return
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(interval)
                    rows = await sampler.sample(client.nodes())
                    title = f"wiremesh top: {len(rows)} node(s), every {interval:g}s"
                    live.update(top_table(rows, title=title), refresh=True)
        finally:
            await client.close()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        return
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except WiremeshError as exc:
        raise _fail(_describe(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
