"""A warm interpreter: `python tests/support/warm.py SOCKET` imports what run.py and analyze.py
import, then forks a fresh process per request on SOCKET and runs the script in it. With
`--libraries-only` it imports the libraries they import but not hw3, for the scripts of a copy of
the project: each forked process then imports the copy's own hw3.

Each such process is what `python <script> args…` would be, less the seconds of importing torch,
MLflow and Hydra: its own pid, session and process group, its own stdin (/dev/null), stdout and
stderr (files the caller passes), working directory, environment and argv; the script runs as
`__main__` and the interpreter ends as it would (pools stopped, threads joined, atexit handlers run,
stdout and stderr flushed, its exit status, a traceback for an uncaught error) but for the
teardown: it exits without freeing its objects one by one, which in a copy of the warm heap costs
over a second of CPU (each page an object is freed from is copied first). Its parent is a small
monitor process that reports its pid, then its exit status (negative: the signal that ended it),
one JSON line each, on the request's connection.

Run by path, not imported: its only dependency on the tests is this file.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import runpy
import signal
import socket
import sys
import threading
from typing import NoReturn


def warm_up(project: bool) -> dict[str, str]:
    """Import what a job and an analysis import (hw3 too if `project`); the environment
    variables the imports set."""
    before = dict(os.environ)
    import hydra  # noqa: F401
    import matplotlib
    import mlflow  # noqa: F401

    matplotlib.use("Agg")  # what analyze.py selects; pyplot is imported by the figures module
    import torch

    if project:
        import hw3.analysis.job
        import hw3.tracking.job
        import hw3.tracking.sweep
        import hw3.tracking.training  # noqa: F401
    elif "hw3" in sys.modules:
        raise RuntimeError("a library imported hw3: a copy of the project would run this one's")
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports torch._dynamo
    # Native pools (OpenBLAS, Arrow's jemalloc) have fork handlers, as multiprocessing's fork
    # (and analyze.py's figure workers) rely on; a Python thread would not survive the fork.
    if threading.active_count() != 1:
        raise RuntimeError("the warm interpreter started a Python thread: it cannot fork")
    return {k: v for k, v in os.environ.items() if before.get(k) != v}


def serve(path: str, project: bool) -> dict:
    """Accept requests forever; return only in a forked job process, with its request."""
    set_by_imports = warm_up(project)
    gc.freeze()  # the jobs' collections skip (and do not copy) what the imports made
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the monitors
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() != 0:
            conn.close()
            continue
        listener.close()  # the monitor of one request
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _, fds, _, _ = socket.recv_fds(conn, 1, 2)
        request = json.loads(conn.makefile("rb").readline())
        started, ready = os.pipe()
        pid = os.fork()
        if pid == 0:
            conn.close()
            os.close(started)
            become_job(request, fds, set_by_imports)
            os.close(ready)  # its session exists: the caller may signal its group
            return request
        for fd in (*fds, ready):
            os.close(fd)
        os.read(started, 1)  # b"" once the job has closed its end (or died)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        os._exit(0)


def become_job(request: dict, fds: list[int], set_by_imports: dict[str, str]) -> None:
    """Turn this forked process into `python <script>`'s, as the request describes it."""
    os.setsid()
    stdin = os.open(os.devnull, os.O_RDONLY)
    for target, fd in ((0, stdin), (1, fds[0]), (2, fds[1])):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(set_by_imports | request["env"])  # as the imports would have set them
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(script)


def run_as_main(script: str) -> NoReturn:
    """Run `script` as `__main__` and end as the interpreter ends, but for the teardown."""
    interrupted = False
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as stop:  # sys.exit(None | status | message)
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException as error:
        sys.excepthook(type(error), error, error.__traceback__)
        status, interrupted = 1, isinstance(error, KeyboardInterrupt)
    threading._shutdown()  # the interpreter's first step: pools told to stop, threads joined
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if interrupted:  # as the interpreter does: ended by the signal, for the caller to see
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


if __name__ == "__main__":
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the project's root, as for run.py
    run_as_main(serve(sys.argv[1], project=sys.argv[2:] != ["--libraries-only"])["script"])
