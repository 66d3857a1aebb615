"""Which process owns a file, whether that process still runs, and workers that end with their parent.

A process id alone does not name a process: ids are reused. :class:`Owner` adds the
process's start time (clock ticks after boot, field 22 of ``/proc/<pid>/stat``; 0 where
there is no ``/proc``) and a short digest of the host name and process-id namespace, so a
temporary file named after its owner (:mod:`nabn_onnx.tempfiles`) can later be told apart
from one of a live process, here or on another machine (or container) sharing the folder.
Whenever an answer is uncertain (another host or container, no ``/proc``, not POSIX),
:meth:`Owner.alive` says the owner may be alive, and nothing of it is ever removed.

:func:`exit_with_parent` ties a worker process's life to its parent's: a parallel sweep
whose parent is killed (``kill -9``, out of memory) must not leave workers that go on
computing chips nobody will read, each holding its models and data.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

__all__ = ["Owner", "this_process", "process_start", "exit_with_parent", "ORPHAN_EXIT_CODE"]

logger = logging.getLogger(__name__)

#: Exit status of a worker that ends because its parent is gone (EX_TEMPFAIL).
ORPHAN_EXIT_CODE = 75

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _host() -> str:
    """Six hex digits naming this machine and process-id namespace: a pid means something only within both.

    Two containers may share a folder and a host name while numbering their processes
    apart; the namespace's inode (``/proc/self/ns/pid``) tells them apart.
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:6]


def process_start(pid: int) -> Optional[int]:
    """Start time of process ``pid`` in clock ticks after boot, or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22 of the whole line: starttime
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    """A process, named well enough to tell whether it still runs.

    Attributes:
        pid: its process id.
        start: its start time (:func:`process_start`; 0 when unknown).
        host: six hex digits of the SHA-256 of its host name and process-id namespace.
    """

    pid: int
    start: int
    host: str

    #: how :meth:`tag` writes an owner: ``<pid>.<start>.<host>``
    PATTERN = r"(\d+)\.(\d+)\.([0-9a-f]{6})"

    def tag(self) -> str:
        """``<pid>.<start>.<host>``, for a file name."""
        return f"{self.pid}.{self.start}.{self.host}"

    @classmethod
    def parse(cls, tag: str) -> Optional[Owner]:
        """The owner a :meth:`tag` names, or None when ``tag`` is not one."""
        found = re.fullmatch(cls.PATTERN, tag)
        return None if found is None else cls(int(found[1]), int(found[2]), found[3])

    def alive(self) -> bool:
        """False only when this owner certainly no longer runs; True when it does or when that cannot be told.

        Certainly gone: a process of this host whose id no process has, or whose id now
        belongs to a process started at another time.
        """
        if self.host != _host() or os.name != "posix" or self.pid <= 0:
            return True
        try:
            os.kill(self.pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return False
        except OSError:  # PermissionError: it exists, as another user
            pass
        start = process_start(self.pid)
        if start is None or self.start == 0:
            return True
        return start == self.start


_this: dict = {}


def this_process() -> Owner:
    """This process as an :class:`Owner` (computed again in a forked child, whose pid differs)."""
    pid = os.getpid()
    owner = _this.get(pid)
    if owner is None:
        owner = _this[pid] = Owner(pid, process_start(pid) or 0, _host())
    return owner


def exit_with_parent(parent: int, *, death_signal: bool = True, interval: float = 0.5) -> None:
    """End this process (a worker) as soon as process ``parent`` is gone.

    Two ways, for robustness: on Linux the kernel sends this process ``SIGKILL`` when its
    parent dies (``prctl(PR_SET_PDEATHSIG)``, asked only with ``death_signal``: the kernel
    sends it when the parent *thread* that started this process ends, so the caller asks
    for it only when that thread lives as long as the parent process); and everywhere a
    daemon thread checks every ``interval`` seconds whether this process was handed to
    another parent (``os.getppid()`` changed), and then exits at once
    (:data:`ORPHAN_EXIT_CODE`). Call it first thing in the worker.
    """
    if death_signal and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:  # no libc to load, or no prctl in it
            logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(ORPHAN_EXIT_CODE)
    watch = threading.Thread(target=_watch, args=(parent, interval), name="nabn-parent-watch", daemon=True)
    watch.start()


def _watch(parent: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(ORPHAN_EXIT_CODE)  # no clean-up runs: the parent that would read the results is gone
