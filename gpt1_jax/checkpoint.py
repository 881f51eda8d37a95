"""Orbax checkpoints: the full training state for resuming, params-only for handing on.

A training checkpoint `<workdir>/checkpoints/<step>/` holds three items:
  state  the TrainState (step, params, optimizer state, RNG key), sharded arrays
  data   the input iterator's state (JSON), so a resumed job sees the same batches
  meta   the job's config and the model config (JSON)
Orbax writes each step into a temporary directory and renames it when complete, so a
crash never leaves a checkpoint that looks finished.

A params-only export `<dir>/` holds `params/` (orbax) and `model.json` (the model
config), the format that fine-tuning, sampling and evaluation jobs take as `init_from`.

Restoring takes abstract targets (`jax.ShapeDtypeStruct` with shardings), so a
checkpoint written on one mesh restores onto any other.
"""
import dataclasses
import json
import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
EXPORT_PARAMS_DIR = "params"
EXPORT_MODEL_JSON = "model.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model or job that tries to restore it."""


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

    def __init__(self, workdir, max_to_keep: Optional[int] = 3, async_save: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                # Interval policy lives in the training loop, which also saves on
                # demand (end of run, preemption).
                save_interval_steps=1,
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Starts writing a checkpoint (asynchronously); `wait()` blocks until committed."""
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

    def restore_meta(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def save_params(directory, params: Any, model_config: dict) -> None:
    """Writes a params-only export: `params/` and `model.json`."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / EXPORT_PARAMS_DIR, params, force=True)
    if jax.process_index() == 0:
        (directory / EXPORT_MODEL_JSON).write_text(json.dumps(model_config, indent=2, sort_keys=True))


def read_model_config(directory) -> dict:
    """The model config recorded in a params-only export."""
    path = pathlib.Path(directory) / EXPORT_MODEL_JSON
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a params export "
                              f"(expected {EXPORT_PARAMS_DIR}/ and {EXPORT_MODEL_JSON})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def load_params(directory, abstract_params: Any) -> Any:
    """Restores a params-only export into the shapes and shardings of `abstract_params`."""
    path = pathlib.Path(directory).absolute() / EXPORT_PARAMS_DIR
    if not path.is_dir():
        raise CheckpointError(f"{path} is missing: {directory} is not a params export")
    with ocp.StandardCheckpointer() as checkpointer:
        _check_fits(path, abstract_params, checkpointer.metadata(path).item_metadata)
        return checkpointer.restore(path, abstract_params)


def load_params_from_state(step_dir, abstract_params: Any) -> Any:
    """Restores only the parameters of a training checkpoint `<workdir>/checkpoints/<step>`
    (the optimizer state is not read)."""
    path = pathlib.Path(step_dir).absolute() / "state"
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


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model to start from: a params export or a training checkpoint.

    `kind` is "export" or "state"; `model_config` is the recorded ModelConfig as a dict;
    `tokenizer_dir` is where the tokenizer it was trained with is recorded.
    """
    kind: str
    path: pathlib.Path
    model_config: dict
    tokenizer_dir: pathlib.Path

    def load_params(self, abstract_params: Any) -> Any:
        if self.kind == "export":
            return load_params(self.path, abstract_params)
        return load_params_from_state(self.path, abstract_params)


def find_pretrained(path) -> Pretrained:
    """Resolves `init_from`: a params export dir, a training checkpoint `<workdir>/checkpoints/<step>`,
    or a workdir (its export when the run finished, else its latest checkpoint)."""
    path = pathlib.Path(path).expanduser().absolute()
    if (path / "export" / EXPORT_MODEL_JSON).is_file():
        path = path / "export"
    elif (path / CHECKPOINT_DIR).is_dir():
        steps = sorted(int(p.name) for p in (path / CHECKPOINT_DIR).iterdir() if p.name.isdigit())
        if not steps:
            raise CheckpointError(f"{path / CHECKPOINT_DIR} holds no finished checkpoint")
        path = path / CHECKPOINT_DIR / str(steps[-1])
    if (path / EXPORT_MODEL_JSON).is_file():
        return Pretrained("export", path, read_model_config(path), path / "tokenizer")
    meta_file = path / "meta" / "metadata"
    if (path / "state").is_dir() and meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{meta_file} is not valid JSON: {e}") from e
        if "model" not in meta:
            raise CheckpointError(f"{meta_file} records no model config")
        return Pretrained("state", path, meta["model"], path.parent.parent / "tokenizer")
    raise CheckpointError(f"{path} is neither a params export ({EXPORT_MODEL_JSON} + "
                          f"{EXPORT_PARAMS_DIR}/), a training checkpoint (state/ + meta/) nor a "
                          f"workdir with either")
