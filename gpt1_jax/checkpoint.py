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

A params-only export `<dir>/` holds `params/` (orbax) and `model.json` (the model
config), the format that fine-tuning, sampling and evaluation jobs take as `init_from`.

Restoring takes abstract targets (`jax.ShapeDtypeStruct` with shardings), so a
checkpoint written on one mesh restores onto any other.
"""
import contextlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from gpt1_jax import rundir
from gpt1_jax.errors import UserError

CHECKPOINT_DIR = rundir.CHECKPOINTS
EXPORT_PARAMS_DIR = rundir.EXPORT_PARAMS
EXPORT_MODEL_JSON = rundir.EXPORT_MODEL_JSON


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not fit the model or job that tries to restore it."""


class CheckpointWriteError(UserError, RuntimeError):
    """Writing a checkpoint failed (a full disk, a failing file system)."""


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
        """Restores (state, data_state, meta) at `step` into the shardings of `abstract_state`."""
        path = self.directory / str(step)
        found = self._manager.item_metadata(step)["state"]
        if found is not None:
            _check_fits(path, abstract_state, found)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["data"], restored["meta"]

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, meta) of the newest finished checkpoint, restored into
        the shardings of `abstract_state`; None when there is none (a fresh start)."""
        step = self.latest_step()
        if step is None:
            return None
        return (step, *self.restore(step, abstract_state))

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
    with ocp.StandardCheckpointer() as checkpointer:
        _check_fits(path, abstract_params, checkpointer.metadata(path).item_metadata)
        return checkpointer.restore(path, abstract_params)


def load_params_from_state(step_dir, abstract_params: Any) -> Any:
    """Restores only the parameters of a training checkpoint `<workdir>/checkpoints/<step>`
    (the optimizer state is not read)."""
    path = rundir.path(step_dir) / "state"
    if not path.is_dir():
        raise CheckpointError(f"{path} is missing: {step_dir} is not a training checkpoint")
    target = {"params": abstract_params}
    with ocp.PyTreeCheckpointer() as checkpointer:
        found = checkpointer.metadata(path).item_metadata
        _check_fits(path, target, {"params": found["params"]})
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    return restored["params"]
