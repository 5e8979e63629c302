"""Stop requests for ``braintseg train``: SIGTERM/SIGUSR1 set a flag (no Keras here).

``run_train`` installs the handlers first thing, before the checks, the Keras import and the
model build, so a signal at any moment of a run ends it the same way: with
:class:`~braintseg.errors.Interrupted` (the CLI exits 75), after saving a checkpoint when there
is something to save.  The training loop looks at the flag before each batch (with several
processes, collectively: see ``StopSignals.collective``).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from braintseg.errors import Interrupted

logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """SIGTERM/SIGUSR1 handlers that record the signal (``signum``) instead of exiting.

    Installed only from the main thread (Python delivers signals there); elsewhere (a training
    run called from a worker thread) the process keeps its own handlers.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        #: one of several processes of a training: a signal during start-up does not end this
        #: process alone (its peers would wait for it until their timeout, or fail in a
        #: collective); :meth:`check` lets start-up go on and the collective stop check before
        #: the first training step stops every process at once (exit 75 everywhere)
        self.collective = False
        #: Ctrl-C arrived (see :meth:`_ctrl_c`)
        self.interrupted = False
        self._deferred = False
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not the main thread: SIGTERM/SIGUSR1 handlers not installed")
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not SIG_IGN, not
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._ctrl_c)  # yours
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _ctrl_c(self, signum: int, frame: Any) -> None:
        """Python's Ctrl-C (raise KeyboardInterrupt), remembered: where Python swallows the
        exception (a garbage-collector callback such as JAX's, a ``__del__``: "Exception
        ignored in ..."), the training loop raises it again before the next batch."""
        self.interrupted = True
        raise KeyboardInterrupt

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("received %s: stopping", signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name (``SIGTERM`` when none arrived)."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    def check(self, where: str, checkpoint: bool = False) -> None:
        """Raise :class:`Interrupted` if a signal arrived (``where``: what was going on;
        ``checkpoint``: the run folder holds one, which stays as it was)."""
        if self.signum is not None:
            if self.collective:  # several processes: all stop together at the first step
                if not self._deferred:
                    self._deferred = True
                    logger.warning("%s during %s: this process stops with the others before "
                                   "the first training step", self.name, where)
                return
            saved = ("its checkpoint is unchanged" if checkpoint else
                     "no checkpoint yet (a rerun or --resume starts at epoch 1)")
            raise Interrupted(f"{self.name} during {where}: stopped before training began, "
                              f"{saved}")
