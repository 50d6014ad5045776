"""The fork server's lifeline: imported first into the server, it ends the server as soon as its parent is gone.

multiprocessing's fork server notices that the process which started it has died only in its main loop (EOF on a
pipe), which it reaches after importing the whole stack (`runner.PRELOAD`: tens of seconds on a busy 2-core machine),
and then exits through a full interpreter shutdown (seconds with torch loaded). Measured with a `kill -9` of
`quantkit compare` (tests/test_bad_input.py times it): 28 s for a server still importing, 4.9 s for one that was
idle. This module, first in the preload list, starts a thread that looks at the parent pid every
`INTERVAL_S` and leaves with `os._exit` the moment it changes (the orphan was adopted by init or a subreaper):
well under a second in both cases. Threads do not survive `fork`, so the workers the server forks do not inherit
it; they have their own lifeline (`worker.worker_main`).
"""

from __future__ import annotations

import os
import sys
import threading
import time

INTERVAL_S = 0.1  # how often the parent pid is looked at (a getppid() call: nanoseconds)
_SERVER = "multiprocessing.forkserver import main"  # what the fork server's command line runs


def _watch(parent: int) -> None:
    while True:
        time.sleep(INTERVAL_S)
        if os.getppid() != parent:
            os._exit(0)  # nothing to flush or save: the server holds no state of its own


def start(parent: int | None = None) -> threading.Thread:
    """Start watching: exit this process when its parent (`parent`, default the current one) is gone."""
    thread = threading.Thread(
        target=_watch,
        args=(os.getppid() if parent is None else parent,),
        daemon=True,
        name="quantkit-forkserver-lifeline",
    )
    thread.start()
    return thread


def in_fork_server() -> bool:
    return any(_SERVER in arg for arg in getattr(sys, "orig_argv", sys.argv))


if in_fork_server():
    start()

__all__ = ["INTERVAL_S", "in_fork_server", "start"]
