"""A private ``redis-server`` that one test may kill, freeze and restart.

Tests that take Redis away use this one, never the shared Redis on 127.0.0.1:6379. It runs
in the root namespace on a port of its own, bound to the bridge address (for the hosts) and
to 127.0.0.1 (for the test itself), and keeps nothing on disk: a restart comes back empty.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

START_TIMEOUT = 5.0  # seconds for redis-server to answer PING after it starts
STOP_TIMEOUT = 5.0


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


class RedisInstance:
    """One ``redis-server`` process, started at construction and answering PING."""

    def __init__(self, bind_address: str, workdir: Path) -> None:
        self.bind_address = bind_address
        self.workdir = workdir
        self.log = workdir / "redis-server.log"
        self.port = _free_port()
        self._popen: subprocess.Popen[bytes] | None = None
        self._resume: threading.Timer | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self._start()

    @property
    def address(self) -> str:
        """``host:port`` as the hosts reach it."""
        return f"{self.bind_address}:{self.port}"

    @property
    def url(self) -> str:
        """``redis://`` URL as the hosts reach it."""
        return f"redis://{self.address}/0"

    @property
    def local_url(self) -> str:
        """``redis://`` URL as the test's own process reaches it (loopback)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def ping(self, timeout: float = 0.5) -> bool:
        """Whether Redis answers PING on loopback within ``timeout`` seconds."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: every client loses its connection at once, and every key is gone."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, the way an operator stops Redis; waits until it has exited."""
        self._end(signal.SIGTERM)

    def restart(self) -> None:
        """Kill Redis if it runs, start it again empty on the same port, wait for PING."""
        self.kill()
        self._start()

    def pause(self, seconds: float) -> None:
        """Freeze Redis (SIGSTOP) for ``seconds``, then let it go on; returns at once.

        Connections stay open and the kernel still accepts new ones, but nothing answers,
        as when Redis hangs. :meth:`resume` ends the pause early.
        """
        self._signal(signal.SIGSTOP)
        self._resume = threading.Timer(seconds, self._signal, args=(signal.SIGCONT,))
        self._resume.daemon = True
        self._resume.start()

    def resume(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()

    def _start(self) -> None:
        server = redis_server_path()
        if server is None:
            raise RuntimeError("redis-server is not installed")
        argv = [server, "--port", str(self.port), "--bind", self.bind_address, "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        argv += ["--dir", str(self.workdir), "--daemonize", "no"]
        with self.log.open("ab") as log:
            self._popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self._popen.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log_text = self.log.read_text(errors="replace")
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log_text}")
            time.sleep(0.01)

    def _end(self, signum: signal.Signals) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal(signum)
            self._signal(signal.SIGCONT)  # a paused Redis must run to see a SIGTERM
            try:
                self._popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._popen.wait(STOP_TIMEOUT)
        self._popen = None

    def _signal(self, signum: signal.Signals) -> None:
        if self._popen is not None and self._popen.poll() is None:
            os.kill(self._popen.pid, signum)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
