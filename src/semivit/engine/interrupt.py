"""Ctrl-C during training: finish the current step, write a checkpoint, stop with one line.

A KeyboardInterrupt raised in the middle of a step would leave the data position and random state ahead
of the weights, so a checkpoint written then would not resume exactly. Instead the first SIGINT only sets
a flag that the loop reads after a whole step (weights, optimizer, EMA and data cursor all at step k); the
trainer then checkpoints at k and raises :class:`TrainingInterrupted`. A second Ctrl-C interrupts at once
(the last periodic checkpoint stays intact: checkpoints are written atomically).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from semivit.errors import SemivitError


class TrainingInterrupted(SemivitError):
    """Training stopped on Ctrl-C after checkpointing; the message says how to resume."""


class GracefulInterrupt:
    """``with GracefulInterrupt() as stop: ... if stop.requested: ...`` — SIGINT sets ``requested``; a
    second SIGINT raises KeyboardInterrupt. Outside the main thread (no signal handlers there) it does
    nothing and Ctrl-C behaves as usual."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the user insists: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False
