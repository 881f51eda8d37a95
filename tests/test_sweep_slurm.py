"""The SLURM launcher against stand-in sbatch/squeue/scancel (tests/standins/) that run array
tasks as local processes: one array per batch of asked trials, array index i running the i-th
trial asked, and a pruned trial cancelled with `scancel` and recorded pruned."""
import json
import os

import optuna
import pytest

import jobs
import sweeps

STANDINS = jobs.REPO / "tests" / "standins"


@pytest.mark.slow
def test_trials_run_as_slurm_array_tasks_and_a_pruned_one_is_cancelled(pretrained, shared_data, tmp_path):
    study_file = sweeps.write_study(tmp_path, pretrained, shared_data / "glue", num_trials=3,
                                    launcher={"name": "slurm", "sbatch_args": ("--partition=gpu",)})
    root, slurm = tmp_path / "root", tmp_path / "slurm"
    env = sweeps.sweep_env(tmp_path, PATH=f"{STANDINS}{os.pathsep}{os.environ['PATH']}",
                           SLURM_STANDIN_DIR=str(slurm))
    result = jobs.run(sweeps.sweep_argv(study_file, root), env)
    study = sweeps.load(root)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [
        optuna.trial.TrialState.PRUNED], result.stdout[-3000:]
    jobs_of = [t.user_attrs["job"] for t in study.trials]
    # Trials 0 and 1 were asked together: one array, indices 0 and 1; trial 2 alone: a second array.
    first_array = jobs_of[0].split("_")[0]
    assert jobs_of[:2] == [f"{first_array}_0", f"{first_array}_1"] and jobs_of[2].split("_")[0] != first_array
    for t in study.trials:  # the array task that ran is the one recorded for that trial
        starts = sweeps.trial_record(root, t.user_attrs["name"], ".starts")
        assert [s["slurm_job"] for s in starts] == [t.user_attrs["job"]]
    cancelled = json.loads((slurm / f"{jobs_of[2]}.json").read_text())
    assert cancelled["state"] == "CANCELLED" and cancelled["exit_code"] == 42
    assert sweeps.trial_record(root, "trial_002", ".exit")["status"] == 42
    assert [json.loads((slurm / f"{j}.json").read_text())["state"] for j in jobs_of[:2]] == ["COMPLETED"] * 2
