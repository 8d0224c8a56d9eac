"""SIGTERM turned into the exception Ctrl-C raises, so a long command can save what it finished.

Schedulers (SLURM's time limit, `kill`, a container stop) send SIGTERM; by default it ends Python
at once, leaving a run's record saying ``running``. Inside :func:`terminate_as_interrupt` it raises
``KeyboardInterrupt`` instead, which the evaluation code already turns into a saved, resumable state.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
