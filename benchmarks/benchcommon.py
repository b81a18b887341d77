"""What several benchmarks share: a target run in a spawned child (its peak RSS is its own)
and a process's peak RSS."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import resource
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    """This process's peak RSS in MB (VmHWM: per address space; ru_maxrss would carry the
    peak of the parent a spawned child was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(target: Any, *args: Any) -> dict[str, Any]:
    """``target(*args, queue)`` in a spawned process; the dict it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:  # a child that dies without a result (an exception, a kill) ends the wait
        try:
            out: dict[str, Any] = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"{getattr(target, '__name__', target)} exited ({proc.exitcode})"
                    " without a result; its traceback is above"
                ) from None
    proc.join()
    return out
