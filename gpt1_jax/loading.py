"""Loading a trained model from wherever a job left it: the one way every job and command
line resolves `init_from` (sampling, LM evaluation, zero-shot, eval mode, fine-tuning,
the decoding benchmark, the orbax reader of `convert`).

`init_from` is a params export (`model.json` + `params/`), a training checkpoint
(`<workdir>/checkpoints/<step>`), or a workdir (its export when the run finished, else its
latest finished checkpoint); local or gs://.
"""
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax

from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax import model as model_lib
from gpt1_jax import tokenizers
from gpt1_jax.checkpoint import CheckpointError
from gpt1_jax.storage import rundir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """Where a model is: `kind` "export" or "state" (a training checkpoint), its recorded
    model config (a dict, as saved), the task it was fine-tuned on (None for a language
    model) and where the tokenizer it was trained with is recorded."""
    kind: str
    path: Any
    model_config: dict
    tokenizer_dir: Any
    task: str | None = None

    def load_params(self, abstract_params: Any) -> Any:
        """The parameters, restored into the shapes and shardings of `abstract_params`."""
        if self.kind == "export":
            return checkpoint_lib.load_params(self.path, abstract_params)
        return checkpoint_lib.load_params_from_state(self.path, abstract_params)


@dataclasses.dataclass
class LoadedModel:
    """A model's config, its parameters and its tokenizer (None if none is recorded)."""
    config: model_lib.ModelConfig
    params: Any
    tokenizer: tokenizers.Tokenizer | None
    source: Pretrained | None = None


def find(init_from) -> Pretrained:
    """Resolves `init_from` without reading any parameters; CheckpointError when it is none
    of the three kinds, or a workdir without a finished checkpoint."""
    path = rundir.path(init_from)
    if (path / rundir.EXPORT / rundir.EXPORT_MODEL_JSON).exists():
        path = path / rundir.EXPORT
    elif (path / rundir.CHECKPOINTS).is_dir():
        steps = checkpoint_lib.finished_steps(path / rundir.CHECKPOINTS)
        if not steps:
            raise CheckpointError(f"{path / rundir.CHECKPOINTS} holds no finished checkpoint")
        path = path / rundir.CHECKPOINTS / str(steps[-1])
    if (path / rundir.EXPORT_MODEL_JSON).exists():
        task_file = path / rundir.EXPORT_TASK_JSON
        task = checkpoint_lib.read_checkpoint_json(task_file, "the export's task")["task"] \
            if task_file.exists() else None
        return Pretrained("export", path, checkpoint_lib.read_model_config(path),
                          path / rundir.TOKENIZER, task)
    if checkpoint_lib.is_training_checkpoint(path):
        meta = checkpoint_lib.read_meta(path)
        if "model" not in meta:
            raise CheckpointError(f"{path}: the checkpoint's metadata records no model config")
        return Pretrained("state", path, meta["model"], path.parent.parent / rundir.TOKENIZER,
                          meta.get("task"))
    if path.parent.name == rundir.CHECKPOINTS and path.name.isdigit() and path.is_dir():
        checkpoint_lib.check_complete(path)  # a step folder partly deleted or emptied: say what is missing
    raise CheckpointError(f"{path} is neither a params export ({rundir.EXPORT_MODEL_JSON} + "
                          f"{rundir.EXPORT_PARAMS}/), a training checkpoint (state/ + meta/) nor "
                          f"a workdir with either")


def write_export(directory, params: Any, model_config: dict, tokenizer: tokenizers.Tokenizer | None,
                 task: dict | None = None) -> None:
    """Writes a params export, the one format `find` reads back: `params/` (every process
    takes part), then, from process 0, `tokenizer/`, `task.json` for a fine-tuned model
    (its task and max_len), and `model.json` last. Whole or absent: `model.json` makes
    `find` take the directory for an export, so it is written once the rest is there."""
    directory = rundir.path(directory)
    checkpoint_lib.save_params(directory, params)
    if jax.process_index() != 0:
        return
    if tokenizer is not None:
        rundir.save_tokenizer(tokenizer, directory / rundir.TOKENIZER)
    if task is not None:
        rundir.write_json(directory / rundir.EXPORT_TASK_JSON, task)
    rundir.write_json(directory / rundir.EXPORT_MODEL_JSON, model_config)


def model_config(source: Pretrained) -> model_lib.ModelConfig:
    try:
        return model_lib.ModelConfig(**source.model_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source.path}: unusable model config: {e}") from e


def load_tokenizer(source: Pretrained) -> tokenizers.Tokenizer | None:
    if not rundir.has_tokenizer(source.tokenizer_dir):
        return None
    return tokenizers.load_tokenizer(source.tokenizer_dir)


def load(init_from, abstract_params: Callable[[model_lib.ModelConfig], Any] | None = None,
         attempts: int = 3) -> LoadedModel:
    """The model at `init_from` (a path or a `find` result). Its parameters are restored into
    `abstract_params(config)` (shapes with shardings: e.g. a task model's tree over a mesh);
    by default the language model's tree on this process's first device.

    A workdir's newest step that the run's rotation deletes while it is read (a run still
    training, with a small `checkpoint.max_to_keep`) is looked up again, up to `attempts`
    times; a step named explicitly, or one that is still there, is not."""
    for attempt in range(1, attempts + 1):
        source = init_from if isinstance(init_from, Pretrained) else find(init_from)
        try:
            return _load(source, abstract_params)
        except CheckpointError:
            if attempt == attempts or not _rotated_away(init_from, source):
                raise
            log.warning("%s was deleted by the run's rotation while it was read; reading the newest step again",
                        source.path)
    raise AssertionError("unreachable")


def _rotated_away(init_from, source: Pretrained) -> bool:
    """Whether `find` chose a step of the workdir `init_from` that is gone now."""
    return (not isinstance(init_from, Pretrained) and source.kind == "state"
            and source.path != rundir.path(init_from) and checkpoint_lib.deleted_by_rotation(source.path))


def _load(source: Pretrained, abstract_params) -> LoadedModel:
    config = model_config(source)
    if abstract_params is None:
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = model_lib.abstract_params(config, one_device)
    else:
        target = abstract_params(config)
    return LoadedModel(config, source.load_params(target), load_tokenizer(source), source)
