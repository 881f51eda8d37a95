"""Entry point of every job: flags -> config -> the job its `mode` names.

    python -m gpt1_jax.main --config=configs/demo.py --workdir=runs/demo \
        [--config.train.num_steps=100 --config.train.batch_size=8 ...]

The workdir may be local or gs://. Around the job: the multi-process runtime (when the
config asks for it), the stop on SIGTERM/SIGINT (installed before anything else, so no
signal is lost), and the workdir's lock. Problems the user can fix (`errors.UserError`,
`OSError`) end the job with `error: <message>` on stderr and status 1, on every process;
anything else is a bug and keeps its traceback.
"""
import contextlib
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from gpt1_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries "
                               "(local or gs://).")
flags.mark_flags_as_required(["config", "workdir"])

MODES = ("pretrain", "finetune", "eval")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpt1_jax import distributed, rundir, trainer
    from gpt1_jax.errors import UserError
    config = _CONFIG.value
    if config.mode not in MODES:
        raise app.UsageError(f"config.mode={config.mode!r}; expected one of {', '.join(MODES)}")
    dist = config.distributed
    if dist.initialize:
        distributed.initialize(dist.coordinator_address, dist.num_processes, dist.process_id,
                               dist.get("local_device_ids", ""),
                               dist.get("heartbeat_timeout_secs", 100))
    workdir = rundir.path(_WORKDIR.value)
    try:
        with trainer.StopRequested(config.train.grace_period_secs) as stop, _workdir_lock(workdir):
            run_job(config, workdir, stop)
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        distributed.report_error(str(e))
        distributed.exit_now(1)
    except Exception:
        if not distributed.is_multiprocess():
            raise
        traceback.print_exc()  # a bug: its traceback, and the other processes told
        distributed.report_error(traceback.format_exc(limit=1).strip().splitlines()[-1])
        distributed.exit_now(1)
    # Success: a normal exit, whose jax.distributed shutdown waits for every process.


def _workdir_lock(workdir):
    """The workdir's lock, claimed by process 0 only: a job's processes share the workdir,
    and if process 0 is refused, its error ends the others."""
    import jax

    from gpt1_jax import workdir as workdir_lib
    if jax.process_index() != 0:
        return contextlib.nullcontext()
    return workdir_lib.WorkdirLock(workdir)


def run_job(config, workdir, stop) -> None:
    if config.mode == "pretrain":
        from gpt1_jax.jobs import pretrain
        pretrain.run(config, workdir, stop)
    elif config.mode == "finetune":
        from gpt1_jax.jobs import finetune
        finetune.run(config, workdir, stop)
    else:
        from gpt1_jax.jobs import finetune
        finetune.run_eval(config, workdir)


if __name__ == "__main__":
    common.run(main)
