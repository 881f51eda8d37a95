"""Entry point of every job: flags -> config -> the job its `mode` names.

    python -m gpt1_jax.main --config=configs/demo.py --workdir=runs/demo \
        [--config.train.num_steps=100 --config.train.batch_size=8 ...]

Problems the user can fix (a bad config value, data file, checkpoint or workdir, a
full disk, a diverged run) end the job with `error: <message>` on stderr and status 1;
anything else is a bug and keeps its traceback.
"""
import logging
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(config) -> None:
    """Joins the multi-process runtime when the config asks for it (TPU pods and SLURM
    are auto-detected by JAX; other clusters pass the coordinator explicitly)."""
    import jax
    dist = config.distributed
    if not dist.initialize:
        return
    # Each value left unset (empty, 0, -1) is detected by JAX from the environment
    # (TPU metadata, SLURM_*, Open MPI's OMPI_*), as when none is given.
    kwargs = {}
    if dist.coordinator_address:
        kwargs["coordinator_address"] = dist.coordinator_address
    if dist.num_processes > 0:
        kwargs["num_processes"] = dist.num_processes
    if dist.process_id >= 0:
        kwargs["process_id"] = dist.process_id
    jax.distributed.initialize(**kwargs)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Library chatter (orbax, XLA) at warnings only; this project's own progress at info.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("gpt1_jax").setLevel(logging.INFO)
    config = _CONFIG.value
    workdir = pathlib.Path(_WORKDIR.value)
    initialize_distributed(config)
    try:
        run_job(config, workdir)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _user_errors() -> tuple:
    # ValueError: this project's (and its readers') way to report bad config, data and
    # checkpoints (CheckpointError is one); OSError: paths, permissions, full disks.
    from gpt1_jax import checkpoint, trainer, workdir
    return (ValueError, OSError, checkpoint.CheckpointWriteError, trainer.NonFiniteError,
            workdir.WorkdirError)


def run_job(config, workdir: pathlib.Path) -> None:
    if config.mode == "pretrain":
        from gpt1_jax import pretrain
        pretrain.run(config, workdir)
    elif config.mode == "finetune":
        from gpt1_jax import finetune
        finetune.run(config, workdir)
    elif config.mode == "eval":
        from gpt1_jax import finetune
        finetune.run_eval(config, workdir)
    else:
        raise app.UsageError(f"config.mode={config.mode!r}; expected pretrain, finetune or eval")


if __name__ == "__main__":
    app.run(main)
