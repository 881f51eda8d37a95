r"""Entry point of every job: flags -> config -> the job its `mode` names.

    python -m gpt1_jax.cli.main --config=configs/demo.py --workdir=runs/demo \
        [--config.train.num_steps=100 --config.train.batch_size=8 ...]

The workdir may be local or gs://. Around the job: the multi-process runtime (when the
config asks for it), the stop on SIGTERM/SIGINT (installed before anything else, so no
signal is lost), and the workdir's lock. The exit status follows `stopping`'s contract:
0 finished; 42 stopped by a signal with its checkpoint committed (rerun to resume); 1 a
problem the user can fix (`errors.UserError`, `OSError`: one `error: <message>` line on
every process) or a bug (its traceback).
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

def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpt1_jax import config_rules, distributed
    from gpt1_jax.errors import UserError
    from gpt1_jax.storage import rundir
    from gpt1_jax.train import stopping
    config = _CONFIG.value
    config_rules.check(config)  # before any work: a bad value never costs a compile or a run
    dist = config.distributed
    if dist.initialize:
        distributed.initialize(dist.coordinator_address, dist.num_processes, dist.process_id,
                               dist.get("local_device_ids", ""),
                               dist.get("heartbeat_timeout_secs", 100))
    workdir = rundir.path(_WORKDIR.value)
    try:
        with stopping.StopRequested(config.train.grace_period_secs) as stop, _workdir_lock(workdir, stop):
            summary = run_job(config, workdir, stop)
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        distributed.report_error(str(e))
        distributed.exit_now(stopping.EXIT_FAILED)
    except Exception:
        if not distributed.is_multiprocess():
            raise
        distributed.end_if_another_process_failed()  # broken by a peer that failed: its line
        traceback.print_exc()  # a bug: its traceback, and the other processes told
        distributed.report_error(traceback.format_exc(limit=1).strip().splitlines()[-1])
        distributed.exit_now(stopping.EXIT_FAILED)
    # A normal exit (its jax.distributed shutdown waits for every process): finished, or
    # stopped by a signal before the end with the step committed ("resume me").
    if stop.stopped and not summary.get("finished", True):
        sys.exit(stopping.EXIT_RESUME)


def _workdir_lock(workdir, stop):
    """The workdir's lock, claimed by process 0 only: a job's processes share the workdir,
    and if process 0 is refused, its error ends the others. A gs:// lease that another job
    takes over fails the job at its next step (`stop.abort`), before another checkpoint."""
    import jax

    from gpt1_jax.storage import workdir as workdir_lib
    if jax.process_index() != 0:
        return contextlib.nullcontext()
    return workdir_lib.WorkdirLock(workdir, on_lost=stop.abort)


def run_job(config, workdir, stop) -> dict:
    """Runs the job `config.mode` names; returns its summary (`finished`: it reached its end)."""
    if config.mode == "pretrain":
        from gpt1_jax.jobs import pretrain
        return pretrain.run(config, workdir, stop)
    from gpt1_jax.jobs import finetune
    if config.mode == "finetune":
        return finetune.run(config, workdir, stop)
    finetune.run_eval(config, workdir)
    return {"finished": True}


if __name__ == "__main__":
    common.run(main)
