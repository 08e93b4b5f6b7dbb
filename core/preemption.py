"""Preemption: SIGTERM or SIGUSR1 (how SLURM and Kubernetes stop a job) asks a long command to stop cleanly.

Inside :class:`PreemptionGuard` the signals only set a flag; the command finishes the unit of work in hand
(a training step, an encode batch), saves (a checkpoint, a flushed store) and exits with
:data:`EXIT_PREEMPTED`, so a requeued job continues with ``--resume``. A second signal while stopping is
ignored; SIGKILL cannot be caught (that is what the resume guarantees cover).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

#: Exit code of a command stopped by SIGTERM / SIGUSR1 after saving its work (sysexits.h ``EX_TEMPFAIL``:
#: "try again later"). Requeue scripts rerun the same command with ``--resume``.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_preemption_signals(worker_id: int | None = None) -> None:
    """Ignore SIGTERM / SIGUSR1 in this process: the ``worker_init_fn`` of DataLoader workers, which a job's
    SIGTERM reaches too. They then live until the main process, which saves first, ends them."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Preempted(Exception):
    """The command saved its work and stopped because it was asked to (see :data:`EXIT_PREEMPTED`)."""

    exit_code = EXIT_PREEMPTED


class PreemptionGuard:
    """Turns SIGTERM / SIGUSR1 into a flag for the duration of a ``with`` block (main thread only; elsewhere,
    e.g. in a DataLoader worker or a thread, it installs nothing and the flag stays False)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning(
                "%s received: finishing the current step, then saving and stopping", self.received.name
            )

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
