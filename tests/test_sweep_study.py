"""A TPE study of tiny fine-tunes, two at a time on this machine: the pruner stops a hopeless
trial, which exits cleanly; the controller killed outright mid-study and started again reruns
no finished trial and reaches the requested count; results, plots, and the best trial evaluated."""
import csv
import json
import os
import subprocess
import time

import optuna
import pytest

import jobs
import sweeps


@pytest.mark.slow
def test_a_tpe_study_prunes_survives_sigkill_and_evaluates_its_best(pretrained, shared_data, tmp_path):
    study_file = sweeps.write_study(tmp_path, pretrained, shared_data / "glue")
    root, env = tmp_path / "root", sweeps.sweep_env(tmp_path)
    argv = sweeps.sweep_argv(study_file, root)
    with open(tmp_path / "first_controller.log", "w") as log:
        first = subprocess.Popen(argv, cwd=jobs.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        # Killed once trials 0 and 1 have ended and 2 and 3 have started: mid-study, trials running.
        trials = root / "_sweep" / "trials"
        deadline = time.time() + 500
        while not (trials / "trial_003.starts").exists() and first.poll() is None:
            assert time.time() < deadline, (tmp_path / "first_controller.log").read_text()[-3000:]
            time.sleep(0.2)
        first.kill()  # SIGKILL: no chance to tidy up; its running trials go on without it
        first.wait()
    assert first.returncode == -9, (tmp_path / "first_controller.log").read_text()[-3000:]
    ended_before = {p.stem: (root / p.stem / "summary.json").stat().st_mtime_ns
                    for p in trials.glob("*.exit") if (root / p.stem / "summary.json").exists()}
    assert {"trial_000", "trial_001"} <= set(ended_before) and not (trials / "trial_003.exit").exists()

    second = jobs.run(argv, env, timeout=900)
    study = sweeps.load(root)
    attempts = [t for t in study.trials if not t.user_attrs.get("requeued")]
    states = [t.state for t in attempts]
    assert len(attempts) == 6 and all(s.is_finished() for s in states), second.stdout[-3000:]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1 and states.count(optuna.trial.TrialState.COMPLETE) >= 2
    names = [t.user_attrs["name"] for t in attempts]
    assert len(set(names)) == 6
    # No trial ran twice: one start each, and the runs that had ended keep their summaries untouched.
    assert all(len(sweeps.trial_record(root, name, ".starts")) == 1 for name in names)
    # Trials 0 and 1 ran side by side, each on its own share of the cores.
    cores = [set(sweeps.trial_record(root, name, ".starts")[0]["cores"]) for name in names[:2]]
    assert not cores[0] & cores[1] or len(os.sched_getaffinity(0)) < 2
    assert {n: (root / n / "summary.json").stat().st_mtime_ns for n in ended_before} == ended_before
    # Trial 2 (λ = 8) was pruned and stopped cleanly: its checkpoint committed, exit 42.
    pruned = study.trials[2]
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.params["finetune.lm_coef"] == 8.0
    assert sweeps.trial_record(root, "trial_002", ".exit")["status"] == 42
    assert json.loads((root / "trial_002" / "summary.json").read_text())["step"] < sweeps.NUM_STEPS
    for t in attempts:
        if t.state == optuna.trial.TrialState.COMPLETE:
            summary = json.loads((root / t.user_attrs["name"] / "summary.json").read_text())
            assert t.value == summary["eval"]["validation"]["accuracy"] and summary["finished"]

    rows = list(csv.DictReader(open(root / "results.csv")))
    assert [r["run"] for r in rows if "requeued" not in r["state"]] == names
    assert {r["state"] for r in rows} >= {"complete", "pruned"}
    assert f"best: trial {study.best_trial.number} " in (root / "results.md").read_text()
    for png in ("optimization_history.png", "parallel_coordinate.png", "param_importances.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    best = jobs.run(argv + ["--best"], env)
    best_dir = root / study.best_trial.user_attrs["name"]
    assert f"checkpoint: {best_dir / 'export'}" in best.stdout
    evaluated = json.loads((root / "best_eval" / "summary.json").read_text())
    assert evaluated["evaluated"] == str(best_dir / "export")
    assert evaluated["eval"]["validation"]["accuracy"] == study.best_value


@pytest.mark.slow
def test_failed_trials_are_recorded_with_their_error_line_and_the_sweep_goes_on(pretrained, tmp_path):
    study_file = sweeps.write_study(tmp_path, pretrained, tmp_path / "no_glue", num_trials=3, enqueue=(),
                                    pruner={"name": "none"})
    root = tmp_path / "root"
    result = jobs.run(sweeps.sweep_argv(study_file, root), sweeps.sweep_env(tmp_path))
    study = sweeps.load(root)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3, result.stdout[-3000:]
    for t in study.trials:
        assert t.user_attrs["error"].startswith("error: ") and "no_glue" in t.user_attrs["error"]
        assert sweeps.trial_record(root, t.user_attrs["name"], ".exit")["status"] == 1
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert [r["state"] for r in rows] == ["fail"] * 3 and all("no_glue" in r["error"] for r in rows)
    assert "best: no finished trial yet" in (root / "results.md").read_text()
