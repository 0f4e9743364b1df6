"""Ctrl-C during a long command: the first stops it cleanly, a second exits at once.

The first SIGINT raises KeyboardInterrupt as Python always does: the running job stops where
it is (its record stays ``running``, so the next run restarts it from its last checkpoint),
finished jobs are untouched, and the command says how to resume. Cleaning up (closing the
live view, shutting Ray down) can take a while; a second SIGINT during it ends the process
immediately with ``os._exit``, which is as safe as a kill: every result file is written
atomically, so nothing half-written is ever taken for a result.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 130


@contextlib.contextmanager
def second_interrupt_exits() -> Iterator[None]:
    """Within the block, the first SIGINT raises KeyboardInterrupt and the next exits at once."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # handlers can only be set from the main thread; an ignored SIGINT stays ignored
        return

    def exit_now(signum: int, frame: object) -> None:
        os.write(2, b"\ngradience: interrupted again: exiting now\n")
        os._exit(INTERRUPTED_EXIT_CODE)

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, exit_now)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
