"""Preemption: a signal that asks a training run to save and stop at the next safe point.

Clusters announce the end of a job with a signal (SLURM's ``--signal=USR1@120`` sends SIGUSR1
that many seconds before the time limit, ``scancel`` and Kubernetes send SIGTERM). Once a run
holds a checkpoint, the command line's signal handler (:mod:`pipeline.cli`) does not stop the
process at once but calls :func:`request`; the trainer polls :func:`requested` after every
optimiser step, writes ``last.pt`` there (mid-epoch, with the position in the epoch, so that
``--resume`` continues bit-identically) and raises :class:`Preempted`, which the command line
turns into one line saying how to resume and exit code ``128 + signal`` (143 for SIGTERM, 138
for SIGUSR1).

Before the first checkpoint nothing is armed: the handler stops the run at once and the fresh
run's files are removed (there is nothing to resume).

This module holds process-wide state on purpose: a signal handler can only reach the trainer
through it. It imports nothing, so the command line can install its handler before torch loads.
"""

from __future__ import annotations

import os
import signal

__all__ = ["Preempted", "arm", "disarm", "request", "requested", "signal_name"]

_state: dict[str, int | None] = {"armed_pid": None, "signum": None}


class Preempted(KeyboardInterrupt):
    """Raised by the trainer after it saved a resumable checkpoint because a signal asked it to stop.

    A ``KeyboardInterrupt`` so that every clean-up that runs for Ctrl-C runs for it too.

    Attributes:
        signum: the signal that asked for it.
        checkpoint: the checkpoint written (or the last one, when the request came at an epoch's end).
        epoch / step: the 1-based epoch and the optimiser steps of it done (0: at its start).
    """

    def __init__(self, signum: int, checkpoint: str, epoch: int, step: int) -> None:
        super().__init__(signum)
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def arm() -> None:
    """From now on a signal asks this process to stop at the next safe point (the run has a checkpoint)."""
    _state["armed_pid"] = os.getpid()


def disarm() -> None:
    """Back to stopping at once; forgets a request that came too late to act on."""
    _state["armed_pid"] = None
    _state["signum"] = None


def request(signum: int) -> bool:
    """Called by a signal handler: True when this process is armed and will stop at its next safe
    point (the handler then returns), False when the handler should stop the process itself.

    The process id is part of the check: a data-loader worker forked from an armed trainer
    inherits this state and the handler, but it is not the process that can save.
    """
    if _state["armed_pid"] != os.getpid():
        return False
    if _state["signum"] is None:
        _state["signum"] = signum
    return True


def requested() -> int | None:
    """The signal that asked this (armed) process to stop, or None."""
    return _state["signum"] if _state["armed_pid"] == os.getpid() else None
