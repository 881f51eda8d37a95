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
import contextlib
import os
import sys
import threading
from typing import Iterator

import jax
import numpy as np

_ERROR_KEY = "gpt1_jax/error"
# How long a process that failed waits for the others to see its message (they exit
# within a fraction of a second of reading it) before it exits itself.
_ERROR_GRACE_SECS = 2.0


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
        threading.Thread(target=_watch_for_errors, name="gpt1_jax-error-watcher",
                         daemon=True).start()


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


def agree_on_main(decision: bool) -> bool:
    """Process 0's `decision`, on every process (a collective: call it on all of them)."""
    if not is_multiprocess():
        return decision
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(decision, np.bool_)))


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
    """Posts this process's error for the others (they print it and exit 1); then waits a
    moment so that they see it before this process's exit tears the connection down."""
    if not is_multiprocess():
        return
    import time
    try:
        _client().key_value_set(_ERROR_KEY, f"process {jax.process_index()}: {message}")
    except Exception:  # the coordinator may be the process that is gone; nothing to add
        return
    time.sleep(_ERROR_GRACE_SECS)


def _watch_for_errors() -> None:
    client = _client()
    while True:
        try:
            message = client.blocking_key_value_get(_ERROR_KEY, 3_600_000)
        except Exception as e:  # a time-out: wait again; the runtime shutting down: stop
            if "DEADLINE" in str(e).upper() or "TIMEOUT" in str(e).upper():
                continue
            return
        if not message.startswith(f"process {jax.process_index()}:"):
            os.write(sys.stderr.fileno(), f"error: {message}\n".encode())
            os._exit(1)
        return


def exit_now(status: int) -> None:
    """Exits at once. With several processes the interpreter's normal exit would wait in
    jax.distributed's shutdown barrier for peers that have already gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    if is_multiprocess():
        os._exit(status)
    sys.exit(status)
