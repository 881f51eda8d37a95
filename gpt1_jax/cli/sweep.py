r"""A study of ordinary jobs with Optuna: parallel trials, pruning, a study that survives.

    python -m gpt1_jax.cli.sweep --study=configs/sweeps/sst2_lr_lm_coef.py --root=runs/sweep \
        [--study.num_trials=12 --study.parallel=2 --study.launcher.name=slurm ...]
    python -m gpt1_jax.cli.sweep --study=... --root=runs/sweep --best      # evaluate the best trial
    python -m gpt1_jax.cli.sweep --study=... --root=runs/sweep --results   # tables and plots only

Each trial is `python -m gpt1_jax.cli.main --config=<job> --workdir=ROOT/<trial> --config.KEY=VALUE ...`,
run by the study's launcher (local processes, a SLURM array). The study's journal, the trials'
commands, logs and exit records are in ROOT/_sweep/ (gs:// roots: in --state_dir). Start the
same command again after the controller died: it reruns no finished trial, adopts the running
ones, and continues to the requested count. At the end: ROOT/results.md, results.csv,
optimization_history.png, parallel_coordinate.png, param_importances.png.
"""
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

from gpt1_jax import loading
from gpt1_jax.cli import common
from gpt1_jax.errors import ConfigError
from gpt1_jax.storage import rundir
from gpt1_jax.sweeps import controller, launchers
from gpt1_jax.sweeps import definition as definition_lib

_STUDY = config_flags.DEFINE_config_file("study", None, "A study config file (configs/sweeps/*.py).",
                                         lock_config=True)
_ROOT = flags.DEFINE_string("root", None, "The sweep root: one workdir per trial (local or gs://).",
                            required=True)
_STATE_DIR = flags.DEFINE_string("state_dir", "", "Where the journal and trial logs go (default ROOT/_sweep).")
_BEST = flags.DEFINE_bool("best", False, "Print the best trial's checkpoint and evaluate it in ROOT/best_eval.")
_RESULTS = flags.DEFINE_bool("results", False, "Only write the results tables and plots.")
_POLL_SECS = flags.DEFINE_float("poll_secs", 2.0, "Seconds between looks at the running trials.",
                                lower_bound=0.1)
flags.mark_flags_as_required(["study"])


def eval_argv(study: definition_lib.Study, best_workdir: str, workdir) -> list[str]:
    """Eval mode of the job config on the best trial's fine-tuned model (its task's evaluation
    splits), with the study's data overrides but not its own `init_from`."""
    keep = [o for o in study.overrides if o.split("=", 1)[0] not in ("init_from", "mode")]
    return [sys.executable, "-m", "gpt1_jax.cli.main", f"--config={study.job_config}", f"--workdir={workdir}",
            "--config.mode=eval", f"--config.init_from={best_workdir}", *[f"--config.{o}" for o in keep]]


def evaluate_best(study: definition_lib.Study, root, directory) -> int:
    best = controller.best_trial(controller.open_study(study, directory))
    if best is None:
        raise ConfigError(f"{directory / controller.JOURNAL}: no trial of the study has finished")
    workdir = best.user_attrs["workdir"]
    print(f"best: trial {best.number} {best.user_attrs['name']} {study.objective}={best.value:.4g} "
          f"params {best.params}")
    print(f"checkpoint: {loading.find(workdir).path}")
    argv = eval_argv(study, workdir, rundir.path(root) / "best_eval")
    print(f"evaluating: {' '.join(argv[1:])}", flush=True)
    return subprocess.call(argv)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    study = definition_lib.from_config(_STUDY.value)
    directory = controller.state_dir(_ROOT.value, _STATE_DIR.value)
    if _BEST.value:
        sys.exit(evaluate_best(study, _ROOT.value, directory))
    if _RESULTS.value:
        controller.write_results(controller.open_study(study, directory), study, _ROOT.value, directory, plots=True)
        return
    launcher = launchers.make(study.launcher, study.parallel, directory)
    result = controller.Controller(study, _ROOT.value, launcher, directory, _POLL_SECS.value).run()
    best = controller.best_trial(result)
    counts = {}
    for t in result.get_trials(deepcopy=False):
        state = "requeued" if t.user_attrs.get("requeued") else t.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    print(f"[sweep] {study.name}: {counts}; results in {rundir.path(_ROOT.value) / 'results.md'}")
    if best is not None:
        print(f"[sweep] best: trial {best.number} {study.objective}={best.value:.4g} {best.user_attrs['workdir']}")


if __name__ == "__main__":
    common.run(main, "sweep")
