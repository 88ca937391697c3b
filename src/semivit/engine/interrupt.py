"""Ctrl-C, SIGTERM and a scheduler's pre-emption signal during training: finish the current step, write a
checkpoint, stop with one line.

A KeyboardInterrupt raised in the middle of a step would leave the data position and random state ahead
of the weights, so a checkpoint written then would not resume exactly. Instead the first signal only sets
a flag that the loop reads after a whole step (weights, optimizer, EMA and data cursor all at step k); the
trainer then checkpoints at k and raises :class:`TrainingInterrupted`, and the CLI exits with the shell's
code for that signal (130 for SIGINT, 143 for SIGTERM). A second signal interrupts at once (the last
periodic checkpoint stays intact: checkpoints are written atomically).

SIGTERM is what ``timeout``, Kubernetes, systemd and cluster schedulers send before they kill a job; SLURM
sends it at pre-emption and at the time limit, or the signal chosen with ``sbatch --signal`` (SIGUSR1 or
SIGUSR2, also caught inside a SLURM job). Under torchrun each rank gets the signal; the ranks agree at a
log step and rank 0 writes one checkpoint for all of them.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType

from semivit.errors import SemivitError


class TrainingInterrupted(SemivitError):
    """Training stopped on a signal after checkpointing; the message says how to resume, ``exit_code`` is
    the shell's convention for the signal (128 + its number)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a run gracefully: SIGINT, SIGTERM, and inside a SLURM job its usual
    ``--signal`` choices SIGUSR1 and SIGUSR2."""
    signals = [signal.SIGINT, signal.SIGTERM]
    if os.environ.get("SLURM_JOB_ID") and hasattr(signal, "SIGUSR1"):
        signals += [signal.SIGUSR1, signal.SIGUSR2]
    return tuple(signals)


class GracefulInterrupt:
    """``with GracefulInterrupt() as stop: ... if stop.requested: ...`` — a stop signal sets ``requested``
    (and ``signum``); a second one raises KeyboardInterrupt. Outside the main thread (no signal handlers
    there) it does nothing and signals behave as usual."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the user insists: stop now
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in stop_signals():
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous = {}
