"""Many processes, one job: joining JAX's multi-process runtime, and keeping the processes
in step.

- `initialize` joins the runtime (TPU pods, SLURM and Open MPI are detected by JAX).
- `reached_stop_point` is JAX's preemption sync point: a SIGTERM to any one process makes
  all of them stop after the same step.
- `agree_on_main` makes process 0's decision everyone's (time-based checkpoints).
- `main_first` runs work that must happen once (training the tokenizer, building the
  token cache) on process 0 while the others wait, then lets them read its result.
- `report_error` / the error watcher: a process that fails posts its message to the
  coordination service; every other process prints it and exits at once instead of
  waiting in a collective for a peer that is gone.

With one process every function here is a no-op or returns its argument.
"""
import atexit
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np

_ERROR_KEY = "gpt1_jax/error"
# How long process 0, when it is the one that failed, keeps the coordination service up
# for the others to read its message (they exit within milliseconds of reading it).
_ERROR_GRACE_SECS = 2.0
_COORDINATOR_LINGER_SECS = 1.0
_ERROR_POLL_SECS = 0.2
_watcher: threading.Thread | None = None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               local_device_ids: str = "", heartbeat_timeout_secs: int = 100) -> None:
    """Joins the multi-process runtime. Each value left unset (empty, 0, -1) is detected by
    JAX from the environment (TPU metadata, SLURM_*, Open MPI's OMPI_*)."""
    kwargs = {"heartbeat_timeout_seconds": heartbeat_timeout_secs}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes > 0:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    if local_device_ids:
        kwargs["local_device_ids"] = [int(i) for i in local_device_ids.split(",")]
    jax.distributed.initialize(**kwargs)
    if jax.process_count() > 1:
        global _watcher
        _watcher = threading.Thread(target=_watch_for_errors, name="gpt1_jax-error-watcher",
                                    daemon=True)
        _watcher.start()
        # atexit runs last-registered first: the watcher stops before JAX's own shutdown.
        atexit.register(_stop_watching)


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def _client():
    # The coordination service's key-value store: the one channel every process can read
    # while another is stuck in a collective. JAX keeps its client in the distributed
    # module's global state; there is no public accessor.
    from jax._src import distributed as jax_distributed
    return jax_distributed.global_state.client


def reached_stop_point(step: int) -> bool:
    """True on every process at the same step once any process has received SIGTERM
    (JAX's preemption sync point); call it once per step on every process."""
    if not is_multiprocess():
        return False
    from jax.experimental import multihost_utils
    return bool(multihost_utils.reached_preemption_sync_point(step))


def from_main(value: np.ndarray) -> np.ndarray:
    """Process 0's `value` (same shape and dtype on every process), on every process (a
    collective: call it on all of them)."""
    if not is_multiprocess():
        return value
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(value), value.dtype)


def agree_on_main(decision: bool) -> bool:
    """Process 0's `decision`, on every process (a collective: call it on all of them)."""
    return bool(from_main(np.asarray(decision, np.bool_)))


def all_agree(ok: bool) -> bool:
    """True on every process when `ok` is true on all of them (a collective: call it on all)."""
    if not is_multiprocess():
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.bool_))))


def barrier(name: str) -> None:
    if is_multiprocess():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_first(name: str) -> Iterator[bool]:
    """`with main_first("tokenizer") as is_main:` process 0 runs the body first (it should
    build what the others then read); the others enter it only after process 0 is done.
    If process 0 fails, the error watcher ends the waiting processes."""
    is_main = jax.process_index() == 0
    if not is_main:
        barrier(f"gpt1_jax/{name}/built")
    yield is_main
    if is_main:
        barrier(f"gpt1_jax/{name}/built")


def report_error(message: str) -> None:
    """Posts this process's error for the others: they print it and exit 1. Process 0 runs
    the coordination service, so it then waits a moment for them to read it before its own
    exit takes the service down; any other process may exit at once."""
    if not is_multiprocess():
        return
    try:
        _client().key_value_set(_ERROR_KEY, f"process {jax.process_index()}: {message}")
    except Exception:  # the coordinator may be the process that is gone; nothing to add
        return
    if jax.process_index() == 0:
        time.sleep(_ERROR_GRACE_SECS)


_watcher_stop = threading.Event()
_said = threading.Lock()  # one `error: process I: ...` line, whichever thread sees it first


def _posted_error() -> str | None:
    """Another process's posted error, or None (none posted, or this process's own)."""
    try:
        message = _client().key_value_try_get(_ERROR_KEY)
    except Exception:  # not posted (NOT_FOUND), or the runtime is shutting down
        return None
    return None if message.startswith(f"process {jax.process_index()}:") else message


def _end_with(message: str) -> None:
    """Prints another process's error as this one's single line and exits 1."""
    if not _said.acquire(blocking=False):
        time.sleep(3600)  # the other thread is printing it and ending the process
    os.write(sys.stderr.fileno(), f"error: {message}\n".encode())
    if jax.process_index() == 0:
        # The failed process exits at once after posting; the coordination service
        # (here) stays up a moment longer so that its exit is its own, not an abort.
        time.sleep(_COORDINATOR_LINGER_SECS)
    os._exit(1)


def _watch_for_errors() -> None:
    # Polls with a non-blocking read and waits in Python: a thread parked inside a blocking
    # C++ call when the interpreter exits would abort the process.
    while not _watcher_stop.wait(_ERROR_POLL_SECS):
        message = _posted_error()
        if message is not None:
            _end_with(message)


def end_if_another_process_failed(wait_secs: float = 2.0) -> None:
    """After an unexpected exception: when another process has posted its error (it failed,
    and this one's collective broke because it left: "Connection closed by peer"), that error
    is this process's single line too, not the collective's traceback; exits 1. Waits up to
    `wait_secs` for a post (a failed process posts before it exits). Returns when none came."""
    if not is_multiprocess():
        return
    deadline = time.monotonic() + wait_secs
    while True:
        message = _posted_error()
        if message is not None:
            sys.stdout.flush()
            _end_with(message)
        if time.monotonic() >= deadline:
            return
        time.sleep(_ERROR_POLL_SECS)


def _stop_watching() -> None:
    _watcher_stop.set()
    if _watcher is not None:
        _watcher.join(timeout=5)


def exit_now(status: int) -> None:
    """Exits at once, after a failure whose message is already printed. The interpreter's
    normal exit would wait in jax.distributed's shutdown barrier for peers that have gone,
    and lets asyncio log the failed writes of an abandoned checkpoint after the message,
    which must stay the last line. (The job's writers and checkpointer are closed by then.)"""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
