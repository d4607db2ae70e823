"""`python -m bridge gateway ...` for `bench/memory.py --trace`. Not a benchmark.

The first SIGUSR1 starts tracemalloc (so only what is allocated from then on is traced, and
start-up is not slowed down) and writes an empty `$TRACE_DIR/snapshot-0.pickle`; each later one
writes the next `snapshot-N.pickle`. TRACE_FRAMES sets the traceback depth.
Run as `python bench/_traced_gateway.py <gateway args>`.
"""

from __future__ import annotations

import itertools
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

FRAMES = int(os.environ.get("TRACE_FRAMES", "12"))
_n = itertools.count()


def _dump(_sig: int, _frame: Any) -> None:
    if not tracemalloc.is_tracing():
        tracemalloc.start(FRAMES)
    path = Path(os.environ["TRACE_DIR"]) / f"snapshot-{next(_n)}.pickle"
    tracemalloc.take_snapshot().dump(str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").rename(path)


def _census(_sig: int, _frame: Any) -> None:
    """Live objects by type and pymalloc's arena statistics, to the next census-N.txt."""
    import collections
    import gc

    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    path = Path(os.environ["TRACE_DIR"]) / f"census-{next(_c)}.txt"
    with open(path.with_suffix(".tmp"), "w") as out:
        for name, count in counts.most_common(60):
            out.write(f"{count:9d} {name}\n")
        out.flush()
        fd = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(fd, 2)
            os.close(fd)
    path.with_suffix(".tmp").rename(path)


_c = itertools.count()


signal.signal(signal.SIGUSR1, _dump)
signal.signal(signal.SIGUSR2, _census)
sys.argv = ["bridge", "gateway", *sys.argv[1:]]
runpy.run_module("bridge", run_name="__main__", alter_sys=True)
