"""The Linux side of the test networks: ``ip`` and ``nft`` commands, and housekeeping.

Everything a network makes is named ``wm-<run>`` (its bridge) or ``wm-<run>-<suffix>``
(its veths and namespaces), ``<run>`` being six random hex digits. The bridge's alias names
the pid of the test process that owns the run, which is how :func:`remove_dead_runs` tells
the leftovers of a killed run from a run that is going on.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps the namespaces it names
COMMAND_TIMEOUT = 10.0  # seconds for one ip/nft command
LOCK = Path(tempfile.gettempdir()) / "wiremesh-netns.lock"
LOCK_TIMEOUT = 10.0
PREFIX = "wm-"
RUN_NAME = re.compile(r"wm-([0-9a-f]{6})(?:-.*)?")
OWNER = re.compile(r"wiremesh-tests pid=(\d+)")


def _find_tool(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


IP = _find_tool("ip") or "ip"
NFT = _find_tool("nft") or "nft"


class NetworkError(RuntimeError):
    """An ``ip`` or ``nft`` command failed, or the test network cannot be built here."""


def missing_requirements() -> list[str]:
    """What this machine lacks to build test networks, in words; empty when nothing."""
    if sys.platform != "linux":
        return [f"Linux network namespaces (this is {sys.platform})"]
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the tests create network namespaces)")
    if _find_tool("ip") is None:
        missing.append("`ip` (apt-get install iproute2)")
    if _find_tool("nft") is None:
        missing.append("`nft` (make netns, or apt-get install nftables)")
    return missing


def new_run() -> str:
    """The name prefix of a new network: ``wm-<run>``."""
    return f"{PREFIX}{secrets.token_hex(3)}"


def owner_alias() -> str:
    """The alias that marks a bridge as this process's."""
    return f"wiremesh-tests pid={os.getpid()}"


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Held while a network chooses its subnet and makes its bridge, so that test runs
    starting together never take the same subnet."""
    with LOCK.open("a") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NetworkError(f"{LOCK} stays locked by another test run") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def routes() -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations of every route of the root namespace, in every table."""
    listed = json.loads(command([IP, "-j", "-4", "route", "show", "table", "all"]))
    return [
        ipaddress.IPv4Network(route["dst"], strict=False)
        for route in listed
        if route["dst"][0].isdigit()  # not "default"
    ]


def command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run an ``ip``/``nft`` command; return its output or raise :class:`NetworkError`."""
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{shlex.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        detail = done.stderr.strip() or f"exit status {done.returncode}"
        raise NetworkError(f"{shlex.join(argv)}: {detail}")
    return done.stdout


def ip_batch(commands: Sequence[str], *, netns: str | None = None) -> None:
    """Run ``ip`` commands in one process (in ``netns``), stopping at the first failure."""
    argv = [IP, *(["-n", netns] if netns else []), "-batch", "-"]
    command(argv, stdin="".join(f"{line}\n" for line in commands))


def remove(links: Sequence[str], namespaces: Sequence[str]) -> None:
    """Delete links, then namespaces, going on past those already gone."""
    commands = [f"link del {name}" for name in links] + [f"netns del {ns}" for ns in namespaces]
    if commands:
        subprocess.run(
            [IP, "-force", "-batch", "-"],
            input="".join(f"{line}\n" for line in commands),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )


def names(prefix: str) -> tuple[list[str], list[str]]:
    """The links and the namespaces whose names start with ``prefix``."""
    links = json.loads(command([IP, "-j", "link", "show"]))
    return (
        [link["ifname"] for link in links if link["ifname"].startswith(prefix)],
        sorted(path.name for path in NETNS_DIR.glob(f"{prefix}*")),
    )


def kill(pids: Iterable[int]) -> None:
    """SIGKILL each process, those that ended meanwhile aside."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_dead_runs() -> None:
    """Remove what killed test runs left behind: processes, namespaces, veths and bridges.

    A run is alive while its bridge's alias names a live pid. Namespaces are listed before
    the bridges, so that a run starting meanwhile is never taken for a dead one.
    """
    namespaces = sorted(path.name for path in NETNS_DIR.glob(f"{PREFIX}*"))
    links = json.loads(command([IP, "-j", "link", "show"]))
    alive = set()
    for link in links:
        run = RUN_NAME.fullmatch(link["ifname"])
        owner = OWNER.fullmatch(link.get("ifalias", ""))
        if run and owner and _pid_alive(int(owner.group(1))):
            alive.add(run.group(1))

    def dead(name: str) -> bool:
        run = RUN_NAME.fullmatch(name)
        return run is not None and run.group(1) not in alive

    dead_namespaces = [netns for netns in namespaces if dead(netns)]
    for netns in dead_namespaces:
        kill(int(pid) for pid in command([IP, "netns", "pids", netns]).split())
    remove([link["ifname"] for link in links if dead(link["ifname"])], dead_namespaces)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        return True
    return True
