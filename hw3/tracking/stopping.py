"""Stopping cleanly on a signal: SIGTERM (kill, scancel, a shutdown) and SIGINT (Ctrl-C).

Where a job trains, the signal raises `Stopped` at once, so that the runner ends its run KILLED
and gives up its claim within seconds. A launching process that waits for jobs in its child
processes (joblib's workers) passes the signal on to those that train one and waits for them
to stop; one with no child process stops at once. A process stops once: later signals are
ignored meanwhile.

Under Slurm, submitit warns of a time limit or a preemption with SIGUSR2 and requeues the job
from its own handler (which then exits the process): the signal is recorded on the way, so that
the run is told why it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Sent by Slurm (--signal=USR2@…) before a time limit, or on preemption; handled by submitit.
REQUEUE_SIGNAL = signal.SIGUSR2


class Stopped(BaseException):
    """This process was sent a signal that stops its jobs (a BaseException, as Ctrl-C's is: no
    `except Exception` on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        """The signal's name, e.g. SIGTERM."""
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"stopped by {self.signal_name}"


_received: int | None = None  # the first stop signal this process got
_jobs_here = 0  # how many `jobs_stop_at_once` blocks are open: jobs train in this process


def received() -> Stopped | None:
    """The stop this process was sent, if any."""
    return None if _received is None else Stopped(_received)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        return  # already stopping: the cleanup under way must not be cut short
    _received = signum
    children = [c.pid for c in multiprocessing.active_children() if c.pid is not None]
    for pid in children:  # joblib's workers: each that trains a job stops it
        if _catches(pid, signum):  # an idle worker would die of it, and joblib kill the rest
            os.kill(pid, signum)
    if _jobs_here or not children:
        raise Stopped(signum)


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum` (Linux's /proc says)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(
        (line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0"
    )
    return bool(int(caught, 16) >> (signum - 1) & 1)


def _recording(handler: Callable[[int, FrameType | None], Any]) -> Callable[..., Any]:
    """`handler` (submitit's requeue), called once the signal is recorded as this stop's cause."""

    def record_then_handle(signum: int, frame: FrameType | None) -> Any:
        global _received
        if _received is None:
            _received = signum
        return handler(signum, frame)

    return record_then_handle


@contextmanager
def _handlers(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    """`handlers` installed for the block (only the main thread may), the previous ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def launch_stops_cleanly() -> Iterator[None]:
    """A launching process: a stop signal goes on to its workers, else stops it at once."""
    with _handlers(dict.fromkeys(STOP_SIGNALS, _on_signal)):
        yield


@contextmanager
def jobs_stop_at_once() -> Iterator[None]:
    """Jobs train in this block: a stop signal raises `Stopped` where they are."""
    global _jobs_here
    handlers: dict[signal.Signals, Any] = dict.fromkeys(STOP_SIGNALS, _on_signal)
    requeue = signal.getsignal(REQUEUE_SIGNAL)
    if callable(requeue):
        handlers[REQUEUE_SIGNAL] = _recording(requeue)
    with _handlers(handlers):
        _jobs_here += 1
        try:
            yield
        finally:
            _jobs_here -= 1
