"""One live process per run: an exclusive claim per configuration, a heartbeat, and liveness;
and the file lock that claims, a new store's schema and a sweep's parent run are taken with."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger("hw3")


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds, as MLflow stamps things."""
    return int(time.time() * 1000)


def process_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name ([] where /proc cannot tell)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), '' where /proc cannot tell."""
    fields = process_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, started: str) -> bool:
    """Whether process `pid` of this host runs and is the one that started at `started`.

    A zombie (killed, not yet reaped) is dead; so is a new process that reuses the pid.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    fields = process_stat(pid)
    if fields[:1] == ["Z"]:
        return False
    return not started or not fields or fields[19] == started


def lock(file: IO[str], *, wait: bool = True) -> bool:
    """Take an exclusive lock on the open `file`, held until it is closed (the kernel drops it
    when its process dies, even by `kill -9`); False if another holds it and not `wait`."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if need be) for the block; wait for it."""
    with open(path, "a") as file:
        lock(file)
        yield


def holder_tags() -> dict[str, str]:
    """Who this process is, as a run records it: host, pid and the pid's start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "pid_start": process_start(pid)}


def live_holder(tags: Mapping[str, str], status: str, *, stale_after_s: float) -> str | None:
    """Who is training a run, described in words, if that process lives; None if no one does.

    A RUNNING run of this host lives while its process does. One of another host lives while
    its heartbeat is younger than `stale_after_s` (that host's processes cannot be asked).
    """
    if status != "RUNNING" or "pid" not in tags:
        return None
    who = f"pid {tags['pid']} on {tags.get('host', '?')}"
    if tags.get("host") == socket.gethostname():
        return who if process_alive(int(tags["pid"]), tags.get("pid_start", "")) else None
    age_s = (now_ms() - int(tags.get("heartbeat", 0))) / 1000
    return f"{who} (heartbeat {age_s:.0f} s ago)" if age_s < stale_after_s else None


class Claim:
    """This process's exclusive right to train one configuration: a lock on a shared file.

    The lock lives in the checkpoint folder, which every process that may resume the run must
    reach anyway. The kernel drops it when its holder dies, even by `kill -9`.
    """

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    @classmethod
    def take(cls, path: Path) -> Claim | str:
        """The claim on `path`, or who holds it (as written by its holder) if someone does."""
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+")  # noqa: SIM115 (held open as long as the claim)
        if not lock(file, wait=False):
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            return holder
        tags = holder_tags()
        file.truncate(0)
        file.write(f"pid {tags['pid']} on {tags['host']}\n")
        file.flush()
        return cls(file)

    def release(self) -> None:
        """Give the claim up (closing the file drops the lock)."""
        self._file.close()


class Heartbeat:
    """Calls `beat` every `interval_s` seconds from a daemon thread until stopped.

    A failing beat (a tracking server restarting) is retried at the next interval: a missed
    heartbeat must never fail the training it reports on.
    """

    def __init__(self, beat: Callable[[], None], interval_s: float) -> None:
        self._beat, self._interval_s = beat, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hw3-heartbeat", daemon=True)

    def start(self) -> None:
        """Start beating (the caller has just marked the run alive itself)."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._beat()
            except Exception as err:  # the store's own errors vary by backend
                log.warning("heartbeat not recorded (%s); retrying in %g s", err, self._interval_s)

    def stop(self) -> None:
        """Stop beating and wait for a beat in flight to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
