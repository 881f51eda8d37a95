"""Orbax checkpoints: the full training state for resuming, params-only for handing on.

A training checkpoint `<workdir>/checkpoints/<step>/` holds three items:
  state  the TrainState (step, params, optimizer state, RNG key), sharded arrays
  data   the input iterator's state (JSON), so a resumed job sees the same batches
  meta   the job's config and the model config (JSON)
Orbax writes each step into a temporary directory (`<step>.orbax-checkpoint-tmp*`) and
renames it when complete (on gs://, where renames are not atomic, it writes a commit
marker inside the final folder instead). Only checkpoints finished by orbax's own test
count, for resuming, `init_from`, evaluation and zero-shot alike (`finished_steps`); the
temporary directories a crash leaves behind are deleted when the next job starts.

A finished step can still be damaged afterwards (a truncated file, a deleted manifest, an
emptied folder). A resume then falls back to the newest step that restores and moves the
damaged ones aside to `<step>.damaged` (never deleted: the user may want them); any other
reader names the damaged file in a CheckpointError.

A params-only export `<dir>/` holds `params/` (orbax) and `model.json` (the model
config), the format that fine-tuning, sampling and evaluation jobs take as `init_from`.

Restoring takes abstract targets (`jax.ShapeDtypeStruct` with shardings), so a
checkpoint written on one mesh restores onto any other.
"""
import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from gpt1_jax import distributed
from gpt1_jax.errors import ConfigError, UserError
from gpt1_jax.storage import rundir

log = logging.getLogger(__name__)

CHECKPOINT_DIR = rundir.CHECKPOINTS
EXPORT_PARAMS_DIR = rundir.EXPORT_PARAMS
EXPORT_MODEL_JSON = rundir.EXPORT_MODEL_JSON
# Orbax's item layout inside a training checkpoint `<step>/` (the items Checkpointer names).
STATE_ITEM, DATA_ITEM, META_ITEM = "state", "data", "meta"
META_FILE = "metadata"          # the JSON handler's file inside an item
DAMAGED_SUFFIX = ".damaged"     # `<step>.damaged`: orbax's listing and finished_steps skip it


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not fit the model or job that tries to restore it."""


class CheckpointWriteError(UserError, RuntimeError):
    """Writing a checkpoint failed (a full disk, a failing file system)."""


class DamagedCheckpointError(CheckpointError):
    """A finished checkpoint whose files cannot be read (truncated, deleted, emptied)."""


def _first_line(text: str, limit: int = 400) -> str:
    # TensorStore appends its whole spec to a message; the part before it says what is wrong.
    line = text.strip().split("\n", 1)[0].split(" [tensorstore_spec=", 1)[0]
    return line if len(line) <= limit else line[:limit] + "..."


def _cause(error: BaseException, path) -> str:
    """What went wrong, in one line. Orbax wraps TensorStore's error (which names the file
    and the problem) in one whose message is a page-long spec, so the first error in the
    chain that names the checkpoint's folder is the telling one."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if str(path) in _first_line(str(e)):
            return _first_line(str(e))
    return f"{type(error).__name__}: {_first_line(str(error))}"


_failed_reads = {"seen": False, "hook": False}


def _abandoned_read_hook(previous, failed_reads: dict):
    """A `sys.unraisablehook` that drops the reports of reads a failed restore abandoned.

    When one read of a step fails, orbax abandons its concurrent reads: Python reports each
    abandoned coroutine ("Exception ignored in", a page-long traceback), and reads that
    TensorStore completes later, from its own threads, find the restore's event loop closed,
    possibly while orbax is still unwinding the first failure. The error raised from that
    first failure already says what is wrong. What the hook uses is bound here: the last
    reports come at exit, when the interpreter may have cleared this module's globals."""
    iscoroutine, current_thread, main_thread = asyncio.iscoroutine, threading.current_thread, threading.main_thread

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        try:
            abandoned = ((closed_loop and current_thread() is not main_thread())
                         or (failed_reads["seen"] and iscoroutine(unraisable.object)))
        except Exception:  # the interpreter's last moments: asyncio's own globals are gone
            abandoned = False
        if not abandoned:
            previous(unraisable)
    return hook


class _AbandonedReadLogs(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" for the abandoned reads that failed
    alike: asyncio logs each when it is collected, at the latest at exit, after the command's
    `error:` line."""

    def __init__(self, failed_reads: dict):
        super().__init__()
        self.failed_reads = failed_reads

    def filter(self, record: logging.LogRecord) -> bool:
        first_line = record.getMessage().split("\n", 1)[0]
        return not (self.failed_reads["seen"] and first_line.endswith("exception was never retrieved"))


def _quiet_abandoned_reads() -> None:
    """Installed before the first read: keeps the reports of reads a failed restore abandoned
    out of stderr, where the user should find one `error:` line (or a resume's warning)."""
    if _failed_reads["hook"]:
        return
    sys.unraisablehook = _abandoned_read_hook(sys.unraisablehook, _failed_reads)
    logging.getLogger("asyncio").addFilter(_AbandonedReadLogs(_failed_reads))
    _failed_reads["hook"] = True


@contextlib.contextmanager
def _reading(step_dir) -> Any:
    """Turns a failure to read the checkpoint at `step_dir` into DamagedCheckpointError.

    Orbax and TensorStore raise many types for a damaged file (Exception, ValueError,
    TypeError on missing metadata, OSError), so every error but the project's own (a model
    that does not fit is a CheckpointError, not damage) counts as damage here.
    """
    _quiet_abandoned_reads()
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        _failed_reads["seen"] = True
        gc.collect()  # the abandoned reads are reported (quietly) now, not at exit
        raise DamagedCheckpointError(f"checkpoint {step_dir} cannot be read: {_cause(e, step_dir)}") from e


def is_training_checkpoint(step_dir) -> bool:
    """Whether `step_dir` has the layout of a training checkpoint (its files unread)."""
    step_dir = rundir.path(step_dir)
    return (step_dir / STATE_ITEM).is_dir() and (step_dir / META_ITEM / META_FILE).exists()


def check_complete(step_dir) -> None:
    """DamagedCheckpointError naming the first item a checkpoint `<step>/` lacks (an
    emptied or partly deleted folder)."""
    step_dir = rundir.path(step_dir)
    for item in (STATE_ITEM, DATA_ITEM, META_ITEM):
        if not (step_dir / item).is_dir():
            raise DamagedCheckpointError(f"checkpoint {step_dir} is damaged: {step_dir / item} is missing")
    if not (step_dir / META_ITEM / META_FILE).exists():
        raise DamagedCheckpointError(
            f"checkpoint {step_dir} is damaged: {step_dir / META_ITEM / META_FILE} is missing")
    _check_arrays(step_dir / STATE_ITEM, f"checkpoint {step_dir}")


def _check_arrays(arrays_dir, what: str) -> None:
    """DamagedCheckpointError naming the index file an orbax array folder lacks. Checked
    before orbax reads: orbax logs a missing one, fails later, and leaves reads in flight
    that print tracebacks when the process exits."""
    required = ["_METADATA"]
    if (arrays_dir / "ocdbt.process_0").is_dir():  # the OCDBT layout: its root manifest
        required.append("manifest.ocdbt")
    for name in required:
        if not (arrays_dir / name).exists():
            raise DamagedCheckpointError(f"{what} is damaged: {arrays_dir / name} is missing")


def read_meta(step_dir) -> dict:
    """The job's record in a training checkpoint: its config and the model config."""
    path = rundir.path(step_dir) / META_ITEM / META_FILE
    meta = read_checkpoint_json(path, "the checkpoint's metadata")
    if not isinstance(meta, dict):
        raise DamagedCheckpointError(f"{path} holds no metadata record")
    return meta


def _state_metadata(state_dir, metadata: Any) -> Any:
    if metadata is None:  # orbax returns None, and logs why, when it cannot read the tree's metadata
        raise DamagedCheckpointError(f"the arrays' metadata in {state_dir} cannot be read")
    return metadata


def _path_name(path) -> str:
    # Saved metadata turns attributes and tuple fields into dict keys and indices, so
    # compare paths by their names alone.
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "/".join(str(p) for p in parts)


def _shapes(tree: Any) -> dict:
    return {_path_name(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _check_fits(path, target: Any, found: Any) -> None:
    """Raises CheckpointError listing leaves whose shape differs between target and found."""
    target_shapes, found_shapes = _shapes(target), _shapes(found)
    problems = []
    for key in sorted(set(target_shapes) | set(found_shapes)):
        want, got = target_shapes.get(key), found_shapes.get(key)
        if want != got:
            problems.append(f"{key}: model expects {want}, checkpoint has {got}")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointError(f"checkpoint {path} does not fit the model:\n  {shown}{more}")


class Checkpointer:
    """Saves and restores training checkpoints in `<workdir>/checkpoints`."""

    def __init__(self, workdir, max_to_keep: int | None = 3, async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            # Orbax keeps the newest `max_to_keep` steps: fewer than one would delete the
            # step a stop or the end of the run has just committed, and a rerun would
            # start again from step 0.
            raise ConfigError(f"checkpoint.max_to_keep={max_to_keep} keeps no checkpoint, not even the "
                              f"one a stop commits: use 1 or more (None keeps every one)")
        self.directory = rundir.path(workdir) / CHECKPOINT_DIR
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                # Interval policy lives in the training loop, which also saves on
                # demand (end of run, preemption).
                save_interval_steps=1,
                # A crash or kill mid-save leaves a temporary directory; orbax never
                # restores one, and deleting it at start keeps a full disk from filling.
                cleanup_tmp_directories=True,
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self._writing: int | None = None   # the step of the write in flight
        self._failed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Starts writing a checkpoint (asynchronously); `wait()` blocks until committed.

        A failed write raises CheckpointWriteError here or at the next `save`/`wait`
        (an asynchronous write reports when it is next waited for).
        """
        self.wait()  # so that an error of the previous write is reported as its own
        self._writing = step
        with self._reporting_write_errors():
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores (state, data_state, meta) at `step` into the shardings of `abstract_state`.
        DamagedCheckpointError, naming the file, when the step cannot be read."""
        path = self.directory / str(step)
        check_complete(path)
        with _reading(path):
            found = self._manager.item_metadata(step)[STATE_ITEM]
            if found is not None:
                _check_fits(path, abstract_state, found)
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ))
        return restored[STATE_ITEM], restored[DATA_ITEM], restored[META_ITEM]

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, meta) of the newest finished checkpoint that restores,
        into the shardings of `abstract_state`; None when there is none (a fresh start).

        Newer steps that cannot be read are moved aside to `<step>.damaged`, with a warning
        naming each and its cause, once an older step has restored. When no step restores,
        nothing is moved and DamagedCheckpointError says what is wrong with each.
        """
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                restored, problem = self.restore(step, abstract_state), None
            except DamagedCheckpointError as e:
                restored, problem = None, str(e)
            # Each process reads its own shards, so a file may fail on one process only:
            # a step counts when it restored on every process, and all resume from it.
            if distributed.all_agree(problem is None):
                self._set_aside(damaged, step)
                return (step, *restored)
            damaged.append((step, problem or f"checkpoint {self.directory / str(step)} cannot be read "
                                             f"on another process"))
        if damaged:
            raise DamagedCheckpointError(
                f"no checkpoint in {self.directory} can be restored: "
                + "; ".join(f"step {step}: {problem}" for step, problem in damaged)
                + ". Repair or remove them (a fresh start needs an empty checkpoints folder)")
        return None

    def _set_aside(self, damaged: list[tuple[int, str]], resumed: int) -> None:
        """Renames each damaged step to `<step>.damaged` (process 0; on gs:// a copy and a
        delete), so that neither orbax's step list (rotation, latest step) nor
        finished_steps count it any longer, and the step can be written afresh."""
        if not damaged:
            return
        if jax.process_index() == 0:
            for step, problem in damaged:
                target = rundir.move_aside(self.directory / str(step), DAMAGED_SUFFIX)
                log.warning("%s; moved it aside to %s, resuming from step %d", problem, target, resumed)
        distributed.barrier("gpt1_jax/checkpoints/set_aside")
        self._manager.reload()

    def wait(self) -> None:
        with self._reporting_write_errors():
            self._manager.wait_until_finished()
        self._writing = None

    def close(self) -> None:
        """Waits for the write in flight and closes; a write error already raised is not
        raised again (close runs in `finally` blocks, where it would hide the first)."""
        if not self._failed:
            self.wait()
            self._manager.close()
            return
        try:
            self._manager.close()  # stops orbax's threads; it re-raises the write error
        except (OSError, ValueError):
            pass

    @contextlib.contextmanager
    def _reporting_write_errors(self):
        # The file system's own error (tensorstore raises ValueError, Python OSError)
        # says what went wrong; this says which checkpoint, and what is still safe.
        try:
            yield
        except (OSError, ValueError) as e:
            self._failed = True
            # From the disk: orbax's own list already drops the steps this save was to
            # replace (max_to_keep), but a failed save deletes nothing.
            committed = finished_steps(self.directory)
            raise CheckpointWriteError(
                f"writing checkpoint {self._writing} in {self.directory} failed: {e}. "
                f"The committed checkpoints ({', '.join(map(str, committed)) or 'none'}) are "
                f"untouched; a rerun resumes from the latest once the cause is fixed.") from e


def finished_steps(checkpoints_dir) -> list[int]:
    """The steps under `checkpoints_dir` that orbax considers finished, in order: a save cut
    short (its temporary folder locally, a folder without its commit marker on gs://) is
    never one of them."""
    checkpoints_dir = rundir.path(checkpoints_dir)
    return sorted(int(name) for name in rundir.list_names(checkpoints_dir)
                  if name.isdigit() and ocp.utils.is_checkpoint_finalized(checkpoints_dir / name))


def deleted_by_rotation(step_dir, checks: int = 3, wait_secs: float = 1.0) -> bool:
    """Whether a step that failed to load is being deleted by its run's rotation (a reader of a
    run still training, with a small `checkpoint.max_to_keep`): gone now or within a few seconds,
    since deleting many objects on gs:// is not instant. A step still there is damaged."""
    step_dir = rundir.path(step_dir)
    for check in range(checks):
        if not step_dir.exists():
            return True
        if check < checks - 1:
            time.sleep(wait_secs)
    return False


def save_params(directory, params: Any) -> None:
    """Writes the parameters of a params-only export into `<directory>/params/` (every
    process takes part; `loading.write_export` writes the rest of the export)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(rundir.path(directory) / EXPORT_PARAMS_DIR, params, force=True)


def read_model_config(directory) -> dict:
    """The model config recorded in a params-only export."""
    path = rundir.path(directory) / EXPORT_MODEL_JSON
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {directory} is not a params export "
                              f"(expected {EXPORT_PARAMS_DIR}/ and {EXPORT_MODEL_JSON})")
    return read_checkpoint_json(path, "the export's model config")


def read_checkpoint_json(path, what: str) -> Any:
    """JSON written beside a checkpoint; CheckpointError naming the file when it is not valid."""
    try:
        return rundir.read_json(path, what)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def load_params(directory, abstract_params: Any) -> Any:
    """Restores a params-only export into the shapes and shardings of `abstract_params`."""
    path = rundir.path(directory) / EXPORT_PARAMS_DIR
    if not path.is_dir():
        raise CheckpointError(f"{path} is missing: {directory} is not a params export")
    _check_arrays(path, f"params export {directory}")
    with _reading(path), ocp.StandardCheckpointer() as checkpointer:
        _check_fits(path, abstract_params, _state_metadata(path, checkpointer.metadata(path).item_metadata))
        return checkpointer.restore(path, abstract_params)


def load_params_from_state(step_dir, abstract_params: Any) -> Any:
    """Restores only the parameters of a training checkpoint `<workdir>/checkpoints/<step>`
    (the optimizer state is not read), onto any mesh or one device whatever mesh and
    processes wrote it."""
    step_dir = rundir.path(step_dir)
    path = step_dir / STATE_ITEM
    if not path.is_dir():
        raise CheckpointError(f"{path} is missing: {step_dir} is not a training checkpoint")
    check_complete(step_dir)
    target = {"params": abstract_params}
    with _reading(step_dir), ocp.PyTreeCheckpointer() as checkpointer:
        found = _state_metadata(path, checkpointer.metadata(path).item_metadata)
        if "params" not in found:
            raise DamagedCheckpointError(f"the arrays' metadata in {path} records no params")
        _check_fits(path, target, {"params": found["params"]})
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    return restored["params"]
