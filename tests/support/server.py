"""A real `mlflow server` on loopback, stopped and restarted as a crash would, and free ports."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import urllib.request
from contextlib import suppress
from pathlib import Path

from support.processes import stop, wait_for


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, below the kernel's ephemeral range
    (32768 and up on Linux, 49152 and up elsewhere): while a test keeps it free, no outgoing
    connection can be handed it as its own port."""
    for port in random.sample(range(10_000, 32_768), 100):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port in 10000-32767")


class Server:
    """A real `mlflow server` on 127.0.0.1 over a SQLite store in `tmp`, stopped and restarted."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until GET /health answers."""
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.tmp / 'server.db'}",
            "--artifacts-destination",
            str(self.tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # Its job-execution feature would start seven more processes on a 2-core machine.
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.tmp / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=log, env=env, start_new_session=True
            )
        try:
            wait_for("the tracking server to answer /health", self._healthy, self.proc)
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"http://{self.address}/health", timeout=2):
            return True

    def stop(self) -> None:
        """Kill it, as a crash would."""
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def _take_port(self) -> socket.socket:
        """A socket listening on the server's port; raises while something still holds it."""
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen()
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.5)
        return listener

    def hang_up_on_a_caller(self, sweep: subprocess.Popen) -> None:
        """While it is down, take its port until a job calls, and hang up on that request."""
        # Once seen on a loaded machine: the port still held just after the server was gone.
        with wait_for("the stopped server's port to be free", self._take_port, sweep) as listener:

            def accept() -> socket.socket | None:
                with suppress(TimeoutError):
                    return listener.accept()[0]
                return None

            wait_for("a job to call the stopped server", accept, sweep).close()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
