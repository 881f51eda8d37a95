"""Stopping on signals: SIGTERM/SIGINT become a stop that every process takes at the same
step after committing a checkpoint of it, with a watchdog for the grace period; and the exit
codes that tell a scheduler what happened.

The exit-code contract (every launcher relies on it):
  0   EXIT_FINISHED  the run reached its last step (or the command did its work)
  42  EXIT_RESUME    stopped by a signal after committing a checkpoint: rerun the same
                     command to resume (xpk/JobSet restart on 42; SLURM requeues; the TPU
                     supervisor relaunches)
  1   EXIT_FAILED    an error a rerun will not fix as it is (a bad config, data or
                     checkpoint: one `error:` line; or a bug: a traceback)
A process killed outright (SIGKILL, a lost machine) exits 128 + the signal's number; its
last committed checkpoint is intact, so rerunning is safe.
"""
import os
import signal
import sys
import threading
from collections.abc import Callable

import jax

from gpt1_jax import distributed
from gpt1_jax.errors import UserError

EXIT_FINISHED = 0
EXIT_RESUME = 42
EXIT_FAILED = 1


class AbortedError(UserError, RuntimeError):
    """The job must stop without saving: what it would write is no longer its to write."""


class StopRequested:
    """Turns SIGTERM/SIGINT into a stop that every process takes at the same step, after
    committing a checkpoint of it.

    One process: a flag set by the signal handler, checked between steps. Several
    processes (jax.distributed): JAX's preemption notifier owns SIGTERM and the processes
    agree on a sync step (`distributed.reached_stop_point`); a SIGINT is passed on to it as
    a SIGTERM. A signal that comes before the loop (tokenizing, compiling, restoring) is
    kept and honoured at the loop's first step, so the job's entry installs this first.

    Once stopping, a watchdog runs: a job still running `grace_period_secs` later (a long
    step, a slow file system) is ended by `on_expiry` (default: a message and exit status
    42, "resume me": rerunning is safe) before the scheduler's SIGKILL can come unannounced; a checkpoint it was writing
    stays uncommitted, so the next run resumes from the last committed one. Later signals
    are reported and otherwise ignored: a second Ctrl-C must not abandon the checkpoint
    being written. `grace_period_secs <= 0` waits without limit.

    `abort(message)` (from any thread; the workdir lease's when another job took the
    workdir over) makes the next `at_step` raise AbortedError instead of returning, so the
    loop saves no further checkpoint and the job ends with one `error:` line.
    """

    def __init__(self, grace_period_secs: float = 25.0,
                 on_expiry: Callable[[str, float], None] | None = None):
        self.grace_period_secs = grace_period_secs
        self.on_expiry = on_expiry or self._exit_grace_expired
        self.loop_started = False   # set at the first step: a stop before it has nothing to save
        self.signal_name: str | None = None
        self.stopped = False
        self._previous = {}
        self._watchdog: threading.Timer | None = None
        self._multiprocess = False
        self._abort_message: str | None = None

    def abort(self, message: str) -> None:
        """Fails the job at its next step, before it saves anything more."""
        self._abort_message = message

    def __enter__(self):
        self._multiprocess = jax.process_count() > 1
        # With several processes JAX's own SIGTERM handler must stay: it is what makes
        # the processes agree on the step to stop at.
        signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            _stderr(f"{name}: already stopping after {self.signal_name}; "
                    f"committing the checkpoint first\n")
            return
        self.signal_name = name
        if self._multiprocess:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier
        else:
            self._start_watchdog()

    def _start_watchdog(self) -> None:
        if self.grace_period_secs > 0 and self._watchdog is None:
            self._watchdog = threading.Timer(self.grace_period_secs, self.on_expiry,
                                             args=(self.signal_name, self.grace_period_secs))
            self._watchdog.daemon = True
            self._watchdog.start()

    def at_step(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop; call it once per step, on every process.
        Raises AbortedError after `abort`."""
        self.loop_started = True
        if self._abort_message is not None:
            raise AbortedError(f"stopped at step {step} without saving it: {self._abort_message}")
        if not self.stopped:
            if self._multiprocess:
                self.stopped = distributed.reached_stop_point(step)
                if self.stopped:
                    self.signal_name = self.signal_name or "SIGTERM"
                    self._start_watchdog()
            else:
                self.stopped = self.signal_name is not None
        return self.stopped

    def _exit_grace_expired(self, signal_name: str, grace_period_secs: float) -> None:
        _exit_grace_expired_at(signal_name, grace_period_secs, self.loop_started)

    def __exit__(self, *exc):
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self):
        return self.signal_name is not None or self.stopped


def _stderr(message: str) -> None:
    # os.write, not print: a signal handler or another thread may run while the main
    # thread is inside a print to the same stream, and a nested print raises.
    os.write(sys.stderr.fileno(), message.encode())


def _exit_grace_expired_at(signal_name: str, grace_period_secs: float, loop_started: bool) -> None:
    """Ends a job whose stop outlived the grace period. Rerunning is safe either way (the last
    committed checkpoint is intact), so the exit says "resume me"."""
    if loop_started:
        what = ("the checkpoint was not committed within the grace period "
                f"(train.grace_period_secs={grace_period_secs:g}); exiting without it. The next run "
                "resumes from the last committed checkpoint.")
    else:
        what = ("the job was still starting up (no training step yet) when the grace period "
                f"(train.grace_period_secs={grace_period_secs:g}) ended; exiting. Nothing was lost: "
                "the next run starts where the last committed checkpoint left off.")
    _stderr(f"stopped: {signal_name}: {what}\n")
    os._exit(EXIT_RESUME)
