"""Run a function in a forked child process, so that a crash in native code kills the child, not the caller.

A segmentation fault in librosa's numba code (seen here with a bad on-disk cache) is not a Python
exception: it kills the process. Inside a Ray Data actor that would take the batch down with no
name attached, and Ray Data restarts the actor and retries the same batch without end. Forking per
batch keeps the crash in a child: the caller learns which work died and carries on. The child
inherits the parent's memory, so code that numba compiled in the parent is not compiled again.

POSIX only (``os.fork``). The child must not use Ray: it runs plain Python and native code, returns
its result through a pipe and leaves with ``os._exit``.
"""

import os
import pickle
import select
import signal
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any


class ChildCrashed(RuntimeError):
    """The child died (a signal, or an exit without a result) or ran past its time limit."""


class ChildTimedOut(ChildCrashed):
    """The child ran past its time limit and was killed."""


class ChildRaised(RuntimeError):
    """The function raised in the child; the message holds the child's traceback."""


def _child(write_fd: int, fn: Callable[..., Any], args: tuple) -> None:
    status = 0
    try:
        # A warning printed here could block on a stream lock some parent thread held at fork time.
        warnings.simplefilter("ignore")
        payload = pickle.dumps((True, fn(*args)))
    except BaseException:
        payload = pickle.dumps((False, traceback.format_exc()))
    try:
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
    except BaseException:
        status = 1
    os._exit(status)


def _read_all(read_fd: int, deadline: float) -> bytes | None:
    """Everything the child writes until it closes the pipe, or None past the deadline."""
    chunks = []
    poller = select.poll()  # not select.select: a Ray worker's descriptors may number past 1024
    poller.register(read_fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return None
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def run_forked(fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
    """``fn(*args)`` computed in a forked child and returned here (it must pickle).

    Raises ``ChildCrashed`` if the child dies, ``ChildTimedOut`` if it takes longer than ``timeout_s``
    (it is then killed), and ``ChildRaised`` with the child's traceback if ``fn`` raised.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(write_fd, fn, args)
    os.close(write_fd)
    try:
        payload = _read_all(read_fd, time.monotonic() + timeout_s)
    finally:
        os.close(read_fd)
    if payload is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise ChildTimedOut(f"timed out after {timeout_s:g} s")
    _, status = os.waitpid(pid, 0)
    if status != 0 or not payload:
        raise ChildCrashed(_describe(status))
    ok, value = pickle.loads(payload)
    if not ok:
        raise ChildRaised(f"the child process raised:\n{value}")
    return value
