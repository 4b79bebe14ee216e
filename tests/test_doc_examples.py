"""Every example of ``docs/`` that talks to a running mesh runs, and does what its page says.

A block is found by the marker on the line before it, ``<!-- example: NAME -->``; the
guide's blocks by the heading they follow (its markers are for quoted files, see
``tests/examples/test_readme.py``). Service code is served as written; clients and
commands run as written but for what the page leaves to the reader: the gateway's port
(8080 on the pages), a token, a node id, where the mesh is. A fragment written inside a
handler (``ctx.call(...)``) runs inside one, with its ``ctx``; a fragment of a client
program runs with ``mesh`` from ``wiremesh.connect()``.

Two kinds of mesh: ``wiremesh run`` in one folder that holds the pages' services
(:func:`docs_mesh`), for what needs real processes (the CLI, ``mesh.json``, the URL the
gateway prints, a foreign gRPC client), and :class:`~wiremesh.testing.TestMesh` in the
test's event loop for the rest. README.md, the aio-pika program of protocol.md §16 and the
protocol's tables have tests of their own.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

import wiremesh
from tests.fixtures.meshes import (
    FIXTURES,
    REPO,
    RunningMesh,
    eventually,
    eventually_async,
    mesh_client,
)
from wiremesh import Context, Invocation, Service, WiremeshError, rpc
from wiremesh.messaging.base import Received
from wiremesh.testing import TestMesh

DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
#: where the pages put the gateway
PAGE_GATEWAY = "127.0.0.1:8080"
#: a node id in what a page shows: its service, then four hex digits that differ on every run
NODE_ID = re.compile(r"\b([a-z][a-z0-9_-]*?)-[0-9a-f]{4}\b")


# ------------------------------------------------------------------------- reading the pages


def example(page: str, name: str) -> str:
    """The block after ``<!-- example: NAME -->`` in ``docs/PAGE``."""
    text = (DOCS / page).read_text()
    marker = f"<!-- example: {name} -->\n"
    assert text.count(marker) == 1, f"docs/{page}: {marker.strip()} is not there once"
    found = re.match(r"```\w*\n(.*?)^```$", text[text.index(marker) + len(marker) :], re.S | re.M)
    assert found, f"docs/{page}: no block after {marker.strip()}"
    return found.group(1)


def block_after(page: str, heading: str, lang: str = "python") -> str:
    """The first ``lang`` block of the section ``heading`` of ``docs/PAGE``."""
    text = (DOCS / page).read_text()
    section = text[text.index(f"\n{heading}\n") :]
    found = re.search(rf"^```{lang}\n(.*?)^```$", section, re.S | re.M)
    assert found and "\n## " not in section[1 : found.start()], f"docs/{page}: {heading}"
    return found.group(1)


#: the modules :func:`load` made for the test that runs
LOADED: list[str] = []


@pytest.fixture(autouse=True)
def _forget_loaded_modules() -> Iterator[None]:
    # `inventory`, `chat`, ...: names that other tests (the shop's) import as their own
    yield
    while LOADED:
        sys.modules.pop(LOADED.pop(), None)


def load(name: str, *sources: tuple[str, str]) -> types.ModuleType:
    """A module ``name`` made of the pages' blocks ``(where, source)``, run in turn."""
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses and pydantic look their module up
    LOADED.append(name)
    for where, source in sources:
        exec(compile(source, where, "exec"), module.__dict__)
    return module


async def run_fragment(
    source: str,
    names: dict[str, Any],
    *,
    where: str,
    each: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run a fragment with ``await`` at its top level, statement by statement, in
    ``names`` (``each`` sees them after every statement); returns ``names``."""
    for statement in ast.parse(source).body:
        module = ast.Module(body=[statement], type_ignores=[])
        code = compile(module, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        outcome = eval(code, names)
        if inspect.iscoroutine(outcome):
            await outcome
        if each is not None:
            each(names)
    return names


class Snippets(Service):
    """Runs a page's fragment that is written inside a handler, with the handler's ``ctx``."""

    name = "snippets"

    def __init__(self) -> None:
        self.fragment: tuple[str, str, dict[str, Any]] = ("", "", {})
        #: the fragment's names after each of its statements
        self.steps: list[dict[str, Any]] = []

    @rpc
    async def run(self, ctx: Context) -> None:
        where, source, names = self.fragment
        await run_fragment(
            source, {**names, "ctx": ctx}, where=where, each=lambda ns: self.steps.append(dict(ns))
        )


async def in_a_handler(
    mesh: TestMesh, where: str, source: str, **names: Any
) -> list[dict[str, Any]]:
    snippets = mesh.instance("snippets")
    snippets.fragment, snippets.steps = (where, source, names), []
    await mesh.call("snippets.run")
    return list(snippets.steps)


@contextlib.contextmanager
def printed() -> Iterator[io.StringIO]:
    """What the block prints, in the ``StringIO`` it gives."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


def shown(line: str) -> re.Pattern[str]:
    """What a line a page shows matches: itself, with any node of the same service for a
    node id, any number for a pid and any text for ``...``."""
    pattern, at = "", 0
    for found in re.finditer(rf'{NODE_ID.pattern}|(?<="pid": )\d+|\.\.\.', line):
        pattern += re.escape(line[at : found.start()])
        if found.group(1):
            pattern += re.escape(found.group(1)) + "-[0-9a-f]{4}"
        else:
            pattern += r"\d+" if found.group().isdigit() else ".*"
        at = found.end()
    return re.compile(pattern + re.escape(line[at:]))


def same_nodes(value: Any) -> Any:
    """``value`` with every node id made alike (``shop-????``)."""
    if isinstance(value, dict):
        return {key: same_nodes(item) for key, item in value.items()}
    if isinstance(value, list):
        return [same_nodes(item) for item in value]
    return NODE_ID.sub(r"\1-????", value) if isinstance(value, str) else value


def commands(script: str) -> list[tuple[str, list[str]]]:
    """The commands of a shell block, each with the ``# output`` lines under it."""
    found: list[tuple[str, list[str]]] = []
    for line in script.splitlines():
        if line.startswith("#") and found:
            found[-1][1].append(line[1:].strip())
        elif found and found[-1][0].endswith("\\"):
            found[-1] = (found[-1][0] + "\n" + line, found[-1][1])
        elif line.strip():
            found.append((line, []))
    return found


def shell(script: str, cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``script`` in bash (``-e``, ``pipefail`` when ``check``), with ``.venv/bin`` first
    on the PATH as ``source .venv/bin/activate`` puts it; stderr in stdout."""
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("WIREMESH_MESH", None)
    # as on a terminal: what a command prints comes in the order it printed it
    environment.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "160"})
    options = ["-e", "-o", "pipefail"] if check else []
    done = subprocess.run(
        ["bash", *options, "-c", script],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, f"{script}\n{done.stdout}"
    return done


# ------------------------------------------------------------------------- the pages' mesh

#: the pages' services, each in the file its page (or its target) names
SERVICE_FILES = {
    "chat.py": ("gateway.md", "chat-service"),
    "shop.py": ("http.md", "shop-service"),
    "greeter.py": ("index.md", "greeter-service"),
    "billing.py": ("messaging.md", "billing-handlers"),
}
#: multicast.md's `cache.invalidate` (its page gives the configuration, not the code)
CACHE = """\
from wiremesh import Context, Service, rpc


class Cache(Service):
    name = "cache"

    @rpc(idempotent=True)
    async def invalidate(self, ctx: Context, sku: str) -> bool:
        return True
"""
SERVICES = {"chat": 1, "shop": 1, "greeter": 1, "inventory": 1, "billing": 1, "echo": 2, "cache": 3}


@dataclass
class DocsMesh:
    folder: Path
    run: RunningMesh
    port: int
    #: the development token the gateway's URL carries
    token: str

    def at_gateway(self, text: str) -> str:
        return text.replace(PAGE_GATEWAY, f"127.0.0.1:{self.port}")

    @property
    def registry(self) -> str:
        return str(json.loads((self.folder / ".wiremesh" / "mesh.json").read_text())["registry"])


async def _serving(folder: Path) -> None:
    client = await mesh_client(folder)
    try:
        await eventually(
            lambda: all(
                len([n for n in client.nodes(s) if n.serving]) == count
                for s, count in SERVICES.items()
            ),
            30,
            "every service of the pages to serve",
        )
    finally:
        await client.close()


@pytest.fixture(scope="module")
def docs_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsMesh]:
    """``wiremesh run`` with gateway.md's configuration and the services of the pages."""
    folder = tmp_path_factory.mktemp("docs-mesh")
    for file, (page, name) in SERVICE_FILES.items():
        (folder / file).write_text(example(page, name))
    (folder / "inventory.py").write_text(block_after("guide.md", "## Services"))
    (folder / "app").mkdir()
    (folder / "app" / "cache.py").write_text(CACHE)
    (folder / "web").mkdir()
    (folder / "web" / "index.html").write_text("<h1>chat</h1>\n")
    config = example("gateway.md", "chat-config")
    # the gateway on any free port: 8080 may be taken on this machine
    config = config.replace("[gateway]\n", "[gateway]\nport = 0\n", 1)
    config += "\n" + example("multicast.md", "cache-groups")
    for service in ("shop", "greeter", "inventory", "billing"):
        config += f'\n[services.{service}]\ntarget = "{service}:{service.title()}"\n'
    config += '\n[services.echo]\ntarget = "svc_echo:Echo"\nreplicas = 2\n'
    config += f'\n[mesh]\nname = "docs"\ndrain_grace = 1\npython_path = [".", "{FIXTURES}"]\n'
    (folder / "wiremesh.toml").write_text(config)
    with RunningMesh(folder) as running:
        url = running.wait_for_line(r"^gateway: http://127\.0\.0\.1:(\d+)/#token=(\S+)$", 60)
        asyncio.run(_serving(folder))
        yield DocsMesh(folder, running, int(url.group(1)), url.group(2))


# ------------------------------------------------------------------------- gateway.md


def test_the_gateway_prints_its_url_with_a_token_and_serves_the_static_folder(
    docs_mesh: DocsMesh,
) -> None:
    console = example("gateway.md", "chat-run").splitlines()
    assert console[0] == "$ wiremesh run"
    assert docs_mesh.run.matches(shown(docs_mesh.at_gateway(console[-1])).pattern)
    page = httpx.get(f"http://127.0.0.1:{docs_mesh.port}/")  # static = "web"
    assert page.status_code == 200 and page.text == "<h1>chat</h1>\n"


def test_the_python_websocket_client_gets_its_echo(docs_mesh: DocsMesh, tmp_path: Path) -> None:
    client = tmp_path / "client.py"
    client.write_text(docs_mesh.at_gateway(example("gateway.md", "chat-client")))
    done = shell(f"python {client}", cwd=docs_mesh.folder)  # `wiremesh token` of this mesh
    assert done.stdout == "b'hello'\n"


async def test_the_test_on_the_gateway_page_passes() -> None:
    load("chat", ("docs/gateway.md", example("gateway.md", "chat-service")))
    tests = load("test_chat", ("docs/gateway.md", example("gateway.md", "chat-test")))
    await tests.test_echo()


# ------------------------------------------------------------------------- http.md


def test_curl_at_the_http_door_prints_the_result_and_the_problem(docs_mesh: DocsMesh) -> None:
    steps = commands(docs_mesh.at_gateway(example("http.md", "shop-curl")))
    separator = "--- next command ---"
    script = "".join(f"{command}\necho\necho '{separator}'\n" for command, _ in steps)
    outputs = shell(script, cwd=docs_mesh.folder).stdout.split(f"{separator}\n")[:-1]
    assert len(outputs) == len(steps)
    for output, (command, lines) in zip(outputs, steps, strict=True):
        if not lines:  # TOKEN=$(wiremesh token)
            assert output.strip() == "", command
            continue
        wanted = json.loads("".join(lines))
        assert same_nodes(json.loads(output)) == same_nodes(wanted), command


def test_httpx_at_the_http_door_prints_the_result(docs_mesh: DocsMesh) -> None:
    source = docs_mesh.at_gateway(example("http.md", "shop-httpx"))
    with printed() as out:
        exec(compile(source, "docs/http.md", "exec"), {"token": docs_mesh.token})
    assert out.getvalue() == "None\n"  # the page's stock() is `...`: its result is None


# ------------------------------------------------------------------------- protocol.md


def test_the_plain_grpcio_client_finds_the_greeter_and_calls_it(
    docs_mesh: DocsMesh, tmp_path: Path
) -> None:
    text = (DOCS / "protocol.md").read_text()
    section = text[text.index("## 10. Worked example") :]
    compile_proto = re.search(r"`(python -m grpc_tools\.protoc [^`]+)`", section)
    assert compile_proto, "protocol.md §10 no longer says how to compile registry.proto"
    shell(compile_proto.group(1).replace(" proto/", f" {REPO}/proto/"), cwd=tmp_path)
    (tmp_path / "client.py").write_text(example("protocol.md", "grpcio-client"))
    done = shell(f"python {tmp_path / 'client.py'}", cwd=docs_mesh.folder)  # its mesh.json
    assert done.stdout == "hello, abc\nhello, abc\n"


async def test_the_health_checks_of_the_page_find_the_nodes_serving(docs_mesh: DocsMesh) -> None:
    client = await mesh_client(docs_mesh.folder)
    try:
        for name, service in (("health-check", "inventory"), ("grpcio-health", "greeter")):
            (node,) = client.nodes(service)
            async with grpc.aio.insecure_channel(node.address) as channel:
                where = "docs/protocol.md"
                names = await run_fragment(
                    example("protocol.md", name), {"channel": channel}, where=where
                )
                assert names["reply"].status == names["health_pb2"].HealthCheckResponse.SERVING
    finally:
        await client.close()


# ------------------------------------------------------------------------- guide.md


def test_the_commands_reach_the_mesh_that_wiremesh_mesh_names(
    docs_mesh: DocsMesh, tmp_path: Path
) -> None:
    script = block_after("guide.md", "## Running", "sh")
    # the mesh's address, in place of the page's Redis registry; run elsewhere than its folder
    script = re.sub(r"redis://\S+", docs_mesh.registry, script)
    lines = shell(script, cwd=tmp_path).stdout.splitlines()
    assert lines[-1] == "null"  # the guide's stock() is `...`
    listed = {line.split("│")[1].strip() for line in lines if line.startswith("│")}
    assert listed == {*SERVICES, "wm-gateway"}


async def test_a_remote_error_is_caught_as_the_class_the_caller_imports(
    docs_mesh: DocsMesh,
) -> None:
    inventory = load("inventory", ("docs/guide.md", block_after("guide.md", "## Services")))
    source = block_after("guide.md", "## Errors")
    async with await wiremesh.connect(docs_mesh.folder) as mesh:
        names = {"mesh": mesh, "OutOfStock": inventory.OutOfStock}
        with printed() as out:
            await run_fragment(source, names, where="docs/guide.md")
    assert re.fullmatch(r"only 2 of A-1 left inventory-[0-9a-f]{4}\n", out.getvalue())


@dataclass
class Quote:
    sku: str
    qty: int
    total: float
    node: str


class Pricing(Service):
    """The ``pricing.quote`` the guide's calls reach (``Quote`` is the reader's own type)."""

    name = "pricing"

    @rpc(idempotent=True)
    async def quote(self, ctx: Context, sku: str, qty: int) -> Quote:
        return Quote(sku, qty, qty * 2.5, ctx.node_id)


async def test_calls_from_a_handler_reach_any_node_a_named_node_and_come_back_typed() -> None:
    async with TestMesh(Pricing, Snippets, replicas={"pricing": 2}) as mesh:
        named = mesh.nodes_of("pricing")[1].node_id
        source = block_after("guide.md", "## Calls").replace("pricing-3f9a", named)
        q = {"sku": "A-1", "qty": 2}
        steps = await in_a_handler(mesh, "docs/guide.md", source, q=q, Quote=Quote)
    first, second, third = steps
    assert first["price"]["total"] == 5.0
    assert second["price"] == {"sku": "A-1", "qty": 2, "total": 5.0, "node": named}
    assert isinstance(third["quote"], Quote) and third["quote"].total == 5.0


# ------------------------------------------------------------------------- multicast.md


class Warehouse(Service):
    name = "warehouse"

    @rpc(idempotent=True)
    async def load(self, ctx: Context) -> float:
        return 0.25


class Ledger(Service):
    name = "ledger"

    @rpc
    async def vote(self, ctx: Context, proposal: str) -> bool:
        return True


def prompted(console: str) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of a console block, each with the lines it shows."""
    found: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        else:
            found[-1][1].append(line)
    return found


def test_the_multicast_commands_print_what_the_page_shows(docs_mesh: DocsMesh) -> None:
    for command, lines in prompted(example("multicast.md", "multicast-cli")):
        done = shell(command, cwd=docs_mesh.folder, check=False)
        got = done.stdout.rstrip("\n").splitlines()
        if not lines:  # the page shows no output: it must succeed
            assert done.returncode == 0, f"{command}\n{done.stdout}"
            continue
        assert len(got) == len(lines), f"{command}\n{done.stdout}"
        for line, want in zip(got, lines, strict=True):
            assert shown(want).fullmatch(line), f"{command}: {line!r} is not {want!r}"


async def test_multicasts_from_a_handler_and_a_client_gather_every_node_asked() -> None:
    cache = load("docs_cache", ("app/cache.py", CACHE)).Cache
    mesh = TestMesh(
        Warehouse,
        cache,
        Ledger,
        Snippets,
        replicas={"warehouse": 2, "cache": 2, "ledger": 2},
        groups={"cache": ["eu"]},
    )
    async with mesh:
        warehouses = sorted(node.node_id for node in mesh.nodes_of("warehouse"))
        caches = [node.node_id for node in mesh.nodes_of("cache")]
        source = example("multicast.md", "multicast-calls")
        for on_the_page, node_id in zip(
            ("warehouse-3f9a", "warehouse-77c1"), warehouses, strict=True
        ):
            source = source.replace(on_the_page, node_id)
        steps = await in_a_handler(mesh, "docs/multicast.md", source, proposal="p-1")
        every, eu, listed, quorum = (step["result"] for step in steps)
        assert every.satisfied and every.values == dict.fromkeys(warehouses, 0.25)
        assert eu.satisfied and eu.values == dict.fromkeys(caches, True)
        assert listed.values == dict.fromkeys(warehouses, 0.25)
        assert quorum.satisfied and len(quorum.values) >= 2

        names: dict[str, Any] = {"mesh": mesh.client, "WiremeshError": WiremeshError}
        with printed() as out:
            source = example("multicast.md", "multicast-result")
            await run_fragment(source, names, where="docs/multicast.md")
    assert sorted(out.getvalue().splitlines()) == [f"{node} load 0.25" for node in warehouses]
    assert names["result"].satisfied


def test_the_working_multicast_example_runs_and_its_assertions_hold() -> None:
    # a program: asyncio.run(main()) at its end
    load("docs_multicast", ("docs/multicast.md", example("multicast.md", "multicast-working")))


# ------------------------------------------------------------------------- publish.md


def inline_example(page: str, name: str) -> str:
    """The code of the paragraph after ``<!-- example: NAME -->``: its one code span."""
    text = (DOCS / page).read_text()
    marker = f"<!-- example: {name} -->\n"
    paragraph = text[text.index(marker) + len(marker) :].split("\n\n", 1)[0]
    (code,) = re.findall(r"`([^`]+)`", paragraph)
    return str(code).replace("\n", " ")


def publish_services() -> types.ModuleType:
    return load("docs_publish", ("docs/publish.md", example("publish.md", "publish-services")))


async def test_a_publish_from_a_handler_reaches_the_storefront() -> None:
    publish = publish_services()
    async with TestMesh(publish.Pricing, publish.Storefront) as mesh:
        storefront = mesh.instance("storefront")
        assert await mesh.call("pricing.set_price", {"sku": "A-1", "amount": 12.0}) == 1
        await eventually(lambda: storefront.cache == {"A-1": 12.0}, 5, "the price")


async def test_a_publish_from_a_client_that_then_closes_reaches_the_storefront(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish = publish_services()
    async with TestMesh(publish.Pricing, publish.Storefront) as mesh:
        storefront = mesh.instance("storefront")
        monkeypatch.setenv("WIREMESH_MESH", mesh.registry.address)  # what connect() finds
        source = inline_example("publish.md", "publish-from-a-client")
        await run_fragment(source, {"wiremesh": wiremesh}, where="docs/publish.md")
        await eventually(lambda: storefront.cache == {"A-1": 9.5}, 2, "the client's price")


# ------------------------------------------------------------------------- messaging.md


async def billing_stats(folder: Path) -> Mapping[str, int]:
    """The counters billing's node of the pages' mesh sent with its last heartbeat."""
    client = await mesh_client(folder)  # a new client: counters change quietly
    try:
        (node,) = client.nodes("billing")
        return node.stats
    finally:
        await client.close()


async def billing_counted(folder: Path, **counts: int) -> None:
    async def counted() -> bool:
        stats = await billing_stats(folder)
        return all(stats.get(key, 0) == count for key, count in counts.items())

    await eventually_async(counted, 15, f"billing to count {counts}")


async def test_a_client_of_the_running_mesh_emits_to_billing(
    docs_mesh: DocsMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await billing_stats(docs_mesh.folder)
    monkeypatch.chdir(docs_mesh.folder)  # connect() finds the mesh running here
    source = example("messaging.md", "emit-from-a-client")
    await run_fragment(source, {"wiremesh": wiremesh}, where="docs/messaging.md")
    # the event, then the command its handler sends
    handled = before.get("messages_handled", 0) + 2
    await billing_counted(
        docs_mesh.folder, messages_handled=handled, messages_dead=before.get("messages_dead", 0)
    )


async def test_the_dlq_commands_list_show_replay_and_purge_dead_letters(
    docs_mesh: DocsMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (await billing_stats(docs_mesh.folder)).get("messages_dead", 0)
    monkeypatch.chdir(docs_mesh.folder)
    async with await wiremesh.connect() as mesh:  # two commands that never validate
        letters = [await mesh.send("billing.refund", {"order": "seven"}) for _ in range(2)]
    await billing_counted(docs_mesh.folder, messages_dead=before + 2)
    script = example("messaging.md", "dlq").replace("3f2a9c0d…", letters[0])
    outputs = [
        shell(command.replace("77b0…", letters[1]), cwd=docs_mesh.folder).stdout
        for command, _ in commands(script)
    ]
    listed, as_json, shown_letter = outputs[:3]
    assert all(letter in listed for letter in letters) and "billing/refund" in listed
    assert {json.loads(line)["id"] for line in as_json.splitlines()} == set(letters)
    assert json.loads(shown_letter)["payload"] == {"order": "seven"}


async def test_emit_and_send_from_a_handler_reach_billings_handlers() -> None:
    billing = load(
        "docs_billing", ("docs/messaging.md", example("messaging.md", "billing-handlers"))
    )
    async with TestMesh(billing.Billing, Snippets) as mesh:
        source = example("messaging.md", "emit-in-a-handler")
        steps = await in_a_handler(
            mesh, "docs/messaging.md", source, OrderCreated=billing.OrderCreated
        )
        assert re.fullmatch(r"[0-9a-f]{32}", steps[0]["message_id"])
        (node,) = mesh.nodes_of("billing")
        # the event, the command its handler sends, and the command sent here
        await eventually(lambda: node.stats()["messages_handled"] == 3, 15, "three messages")
        assert node.stats()["messages_dead"] == 0


async def test_delayed_messages_from_a_handler_reach_billing_when_due() -> None:
    billing = load(
        "docs_billing", ("docs/messaging.md", example("messaging.md", "billing-handlers"))
    )
    source = (
        example("messaging.md", "delayed")
        .replace("delay=3600", "delay=1.0")
        .replace("timedelta(days=1)", "timedelta(seconds=1.5)")
    )
    assert source != example("messaging.md", "delayed")
    async with TestMesh(billing.Billing, Snippets) as mesh:
        (node,) = mesh.nodes_of("billing")
        sent = time.monotonic()
        await in_a_handler(mesh, "docs/messaging.md", source)
        assert node.stats()["messages_handled"] == 0  # not before they are due
        await eventually(lambda: node.stats()["messages_handled"] == 2, 10, "both messages")
        assert time.monotonic() - sent >= 1.5
        assert node.stats()["messages_dead"] == 0


# ------------------------------------------------------------------------- streams.md


async def test_the_streams_pages_calls_print_what_the_page_says() -> None:
    page = "docs/streams.md"
    pricing = load("docs_pricing", (page, example("streams.md", "streams-service")))
    source = example("streams.md", "streams-calls")
    body = textwrap.indent(source, "    ")
    namespace: dict[str, Any] = {"Price": pricing.Price, "AsyncIterator": AsyncIterator}
    exec(compile(f"async def run(mesh):\n{body}", page, "exec"), namespace)
    expected = source.strip().splitlines()[-1].split("# ")[-1]
    async with TestMesh(pricing.Pricing) as mesh:
        with printed() as out:
            await namespace["run"](mesh.client)
    assert out.getvalue().strip() == expected


# ------------------------------------------------------------------------- timers.md


async def test_the_timers_pages_poller_ticks_once_per_mesh_and_its_tests_pass() -> None:
    page = "docs/timers.md"
    source = example("timers.md", "poller")
    poller = load(
        "docs_poller",
        (page, source.replace("every=30", "every=1")),
        (page, example("timers.md", "poller-test")),
    )
    assert source.count("every=30") == 1
    await poller.test_a_poll_emits_the_ticks_time()
    await poller.test_the_poller_ticks_in_a_mesh()
    async with TestMesh(poller.Poller, replicas={"poller": 2}) as mesh:
        await eventually(
            lambda: sum(n.stats()["ticks_run"] for n in mesh.nodes) >= 2, 10, "two ticks"
        )
        stats = [n.stats() for n in mesh.nodes]
    assert sum(s["ticks_failed"] for s in stats) == 0
    assert sum(s["ticks_skipped"] for s in stats) >= 1  # the second node's copy of a tick


class Orders(Service):
    """The ``Orders`` of messaging.md's tests, which the page leaves to the reader."""

    name = "orders"

    @rpc
    async def count(self, ctx: Context) -> int:
        return 0


async def test_the_store_example_and_the_pages_tests_of_it_pass() -> None:
    page = "docs/messaging.md"
    module = load(
        "docs_billing_store",
        (page, example("messaging.md", "billing-handlers")),  # the page's imports
        (page, example("messaging.md", "billing-store")),
        (page, example("messaging.md", "billing-tests")),
    )
    module.__dict__["Orders"] = Orders
    await module.test_charge_without_a_broker()
    await module.test_order_flow()


async def test_the_broker_alone_hands_the_published_message_to_the_handler(
    tmp_path: Path,
) -> None:
    got: list[Received] = []

    async def handler(received: Received) -> None:
        got.append(received)
        await received.ack()

    names: dict[str, Any] = {"path": tmp_path, "handler": handler, "body": b"\x01"}
    try:
        source = example("messaging.md", "broker-alone")
        await run_fragment(source, names, where="docs/messaging.md")
        await eventually(lambda: got, 10, "the message to reach the handler")
        assert (got[0].envelope.topic, got[0].envelope.body) == ("bench.x", b"\x01")
    finally:
        if "broker" in names:
            await names["broker"].close()
        if "server" in names:
            await names["server"].stop()


# ------------------------------------------------------------------------- observability.md


def test_the_metrics_of_a_node_are_found_with_jq_and_read_with_curl(docs_mesh: DocsMesh) -> None:
    (find, _), (read, _) = commands(example("observability.md", "metrics-of-a-node"))
    addresses = shell(find, cwd=docs_mesh.folder).stdout.split()
    assert addresses and all(re.fullmatch(r"127\.0\.0\.1:\d+", a) for a in addresses), addresses
    lines = shell(read.replace("127.0.0.1:40213", addresses[0]), cwd=docs_mesh.folder).stdout
    assert lines and all("wiremesh_calls_handled" in line for line in lines.splitlines())


class Stock(Service):
    name = "stock"

    @rpc
    async def reserve(self, ctx: Context, sku: str) -> int:
        return 3


class Front(Service):
    """The ``Front`` and ``Stock`` the page's tracing test leaves to the reader."""

    name = "front"

    @rpc
    async def order(self, ctx: Context, sku: str) -> int:
        return int(await ctx.call("stock.reserve", sku))


async def test_the_tracing_test_of_the_page_records_both_services_spans() -> None:
    source = example("observability.md", "traces-in-tests")
    names: dict[str, Any] = {"Front": Front, "Stock": Stock}
    await run_fragment(source, names, where="docs/observability.md")
    assert {"front.order", "stock.reserve"} <= set(names["names"]), names["names"]


def test_top_once_prints_the_table_the_page_shows(docs_mesh: DocsMesh) -> None:
    (once,) = [c for c, _ in commands(example("observability.md", "top")) if "--once" in c]
    lines = shell(once, cwd=docs_mesh.folder).stdout.splitlines()
    title, header = example("observability.md", "top-output").splitlines()[:2]
    # the page draws the table without its borders, for 2 nodes
    assert re.fullmatch(re.escape(title.strip()).replace("2", r"\d+", 1), lines[0].strip())
    (columns,) = [cells(line, "┃") for line in lines if line.startswith("┃")]
    assert columns == re.split(r"\s{2,}", header.strip())
    services = {cells(line, "│")[0] for line in lines if line.startswith("│")}
    assert services == set(SERVICES) | {"wm-gateway"}


def cells(line: str, border: str) -> list[str]:
    return [cell.strip() for cell in line.strip(border).split(border)]


# ------------------------------------------------------------------------- asyncapi.md


def test_the_asyncapi_document_is_fetched_and_the_parser_finds_no_fault(
    docs_mesh: DocsMesh,
) -> None:
    fetch = docs_mesh.at_gateway(example("asyncapi.md", "asyncapi-document"))
    document = json.loads(shell(fetch, cwd=docs_mesh.folder).stdout)
    assert document["asyncapi"] == "3.0.0"
    assert any("billing" in operation for operation in document["operations"])
    validate = docs_mesh.at_gateway(example("asyncapi.md", "asyncapi-validate"))
    verdict = json.loads(shell(validate, cwd=REPO).stdout)
    faults = [d for d in verdict["diagnostics"] if d["severity"] in ("error", "warning")]
    assert verdict["valid"] and not faults, faults


async def test_the_guide_s_middleware_logs_every_call_and_limits_each_principal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notes = load("notes", ("docs/guide.md", block_after("guide.md", "## Middleware")))
    async with TestMesh(notes.Notes, gateway=True) as mesh:
        headers = {"Authorization": f"Bearer {mesh.token('ada')}"}
        async with httpx.AsyncClient(base_url=mesh.gateway.url) as http:
            with caplog.at_level("INFO", logger="audit"):
                statuses = [
                    (await http.post("/rpc/notes/add", json="hello", headers=headers)).status_code
                    for _ in range(7)
                ]
    # five a second: a burst gets five through, then refusals (a slow machine may have
    # earned one more token meanwhile)
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:], statuses
    lines = [r.getMessage() for r in caplog.records if r.name == "audit"]
    assert sum("call notes.add by ada: ok in" in line for line in lines) == statuses.count(200)
    assert sum(line.endswith("by ada: RateLimited") for line in lines) == statuses.count(429)
    # it keeps the principals it was told to, forgetting the least recently seen
    small = notes.PerPrincipalRate(per_second=5, max_principals=2)
    for who in ("a", "b", "a", "c"):
        session = types.SimpleNamespace(principal=who)
        await small.before(Invocation("socket", "notes", "socket", None, session=session))
    assert list(small.allowance) == ["a", "c"]
