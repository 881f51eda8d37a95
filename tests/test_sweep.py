"""The study definition: grid sweeps exactly as `--grid` always ran them, bad studies refused before
any trial, a journal of another definition refused, results gathered into tables."""
import csv
import itertools
import json
import pathlib
import re
import subprocess
import sys

import optuna
import pytest

import jobs
from gpt1_jax.errors import ConfigError
from gpt1_jax.sweeps import controller
from gpt1_jax.sweeps import definition as definition_lib

REPO = jobs.REPO
sys.path.insert(0, str(REPO / "launch"))
import sweep  # noqa: E402  (launch/sweep.py: the `--grid` command line)


# What launch/sweep.py's `commands()` did before the sweeps became Optuna studies (2026-12-04),
# kept verbatim as the reference the grid study must reproduce.
def _legacy_run_name(assignment):
    parts = []
    for key, value in assignment.items():
        short = key.split(".")[-1]
        value = pathlib.Path(value).name if "/" in value else value
        parts.append(f"{short}={value or 'none'}")
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", "_".join(parts)) or "run"


def _legacy_commands(config, root, grid, fixed):
    keys = [k for k, _ in grid]
    for values in itertools.product(*(v for _, v in grid)):
        assignment = dict(zip(keys, values))
        name = _legacy_run_name(assignment)
        workdir = pathlib.Path(root) / name
        argv = [sys.executable, "-m", "gpt1_jax.cli.main", f"--config={config}", f"--workdir={workdir}"]
        argv += [f"--config.{k}={v}" for k, v in assignment.items()]
        argv += [f"--config.{item}" for item in fixed]
        yield name, workdir, argv


GRIDS = [
    ["init_from=runs/pre,", "finetune.lm_coef=0.5,0"],
    ["finetune.load_pretrained_weights=True,False", "finetune.lm_coef=0.5,0"],
    ["optimizer.learning_rate=6.25e-5,1e-4,3e-4", "train.batch_size=8,32", "init_from=gs://b/r un/x,/a/b"],
]
FIXED = ["data.data_dir=/d", "data.max_train_examples=2000"]


@pytest.mark.parametrize("grid", GRIDS)
def test_grid_study_asks_exactly_the_runs_of_the_old_grid_in_its_order(grid, tmp_path):
    parsed = sweep.parse_grid(grid)
    expected = [(n, str(w), a) for n, w, a in _legacy_commands("configs/finetune.py:sst2", tmp_path, parsed, FIXED)]
    listed = [(n, str(w), a) for n, w, a in sweep.commands("configs/finetune.py:sst2", tmp_path, parsed, FIXED)]
    assert listed == expected
    # The study itself hands out the same points in the same order, then nothing new.
    definition = sweep.grid_study("configs/finetune.py:sst2", parsed, FIXED)
    study = controller.open_study(definition, tmp_path / "_sweep")
    asked = []
    for _ in range(definition.num_trials):
        trial = study.ask(definition.distributions())
        name = definition.trial_name(trial.number, trial.params)
        asked.append((name, str(tmp_path / name), definition.trial_argv(tmp_path / name, trial.params)))
    assert asked == expected and definition.num_trials == len(expected)


def _study(**changes) -> dict:
    config = {"name": "s", "job": {"config": "configs/finetune.py:sst2", "overrides": ("data.data_dir=/d",)},
              "space": [{"key": "optimizer.learning_rate", "type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                        {"key": "finetune.lm_coef", "type": "categorical", "choices": (0.0, 0.5)}],
              "objective": {"metric": "eval.validation.accuracy", "direction": "maximize"},
              "intermediate": {"metric": "loss", "direction": "minimize"},
              "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "median"}, "num_trials": 4, "parallel": 2}
    config.update(changes)
    return config


@pytest.mark.parametrize("changes, named", [
    ({"num_trails": 3}, "num_trails"),
    ({"space": [{"key": "optimizer.learning_rat", "type": "float", "low": 1e-5, "high": 1e-3}]},
     "optimizer.learning_rat"),
    ({"job": {"config": "configs/finetune.py:sst2", "overrides": ("data.dir=/d",)}}, "data.dir"),
    ({"space": []}, "empty"),
    ({"objective": {"metric": "eval.validation.f1", "direction": "maximize"}}, "eval.validation.f1"),
    ({"objective": {"metric": "eval.dev.accuracy", "direction": "maximize"}}, "eval.dev.accuracy"),
    ({"objective": {"metric": "last:val_acc", "direction": "maximize"}}, "last:val_acc"),
    ({"intermediate": {"metric": "los", "direction": "minimize"}}, "los"),
    ({"sampler": {"name": "grid"}}, "grid"),
])
def test_a_bad_study_is_refused_naming_the_key(changes, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        definition_lib.from_config(_study(**changes))


def test_a_good_study_is_accepted_and_its_fingerprint_ignores_count_and_placement():
    study = definition_lib.from_config(_study())
    assert [p.key for p in study.space] == ["optimizer.learning_rate", "finetune.lm_coef"]
    assert study.fingerprint() == definition_lib.from_config(_study(num_trials=40, parallel=8)).fingerprint()
    assert study.fingerprint() != definition_lib.from_config(
        _study(objective={"metric": "eval.validation.accuracy", "direction": "minimize"})).fingerprint()


@pytest.mark.parametrize("sampler, pruner, kinds", [
    ("tpe", "median", (optuna.samplers.TPESampler, optuna.pruners.MedianPruner)),
    ("random", "halving", (optuna.samplers.RandomSampler, optuna.pruners.SuccessiveHalvingPruner)),
    ("random", "none", (optuna.samplers.RandomSampler, optuna.pruners.NopPruner)),
])
def test_the_sampler_and_pruner_named_are_built(sampler, pruner, kinds):
    study = definition_lib.from_config(_study(sampler={"name": sampler, "seed": 3}, pruner={"name": pruner}))
    assert isinstance(study.make_sampler(), kinds[0]) and isinstance(study.make_pruner(), kinds[1])


def test_a_bad_study_is_one_error_line_and_no_trial_starts(tmp_path):
    config = tmp_path / "study.py"
    config.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict("
                      + repr(_study(space=[{"key": "finetune.lm_cof", "type": "categorical", "choices": (0, 1)}]))
                      + ")\n")
    result = subprocess.run([sys.executable, "-m", "gpt1_jax.cli.sweep", f"--study={config}",
                             f"--root={tmp_path / 'root'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: sweep: finetune.lm_cof: not a key")
    assert not (tmp_path / "root" / "_sweep").exists()


def test_a_journal_of_another_definition_is_refused(tmp_path):
    controller.open_study(definition_lib.from_config(_study()), tmp_path)
    assert controller.open_study(definition_lib.from_config(_study(num_trials=9)), tmp_path)  # same study
    other = definition_lib.from_config(_study(sampler={"name": "random", "seed": 1}))
    with pytest.raises(ConfigError, match="another definition"):
        controller.open_study(other, tmp_path)


def test_objective_and_intermediate_values_are_read_from_the_trials_files(tmp_path):
    study = definition_lib.from_config(_study())
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2))
                                            + '{"step": 3, "lo')  # a line being written
    (tmp_path / "summary.json").write_text(json.dumps({"eval": {"validation": {"accuracy": 0.75}}}))
    assert definition_lib.objective_value(study, tmp_path) == 0.75
    # The loss falls while the study maximizes: reported negated, so larger is better for both.
    assert definition_lib.intermediate_values(study, tmp_path) == {1: -1.0, 2: -0.5}


def test_gather_writes_one_row_per_run_in_markdown_and_csv(tmp_path):
    for name, acc in (("a", 0.75), ("b", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"task": "sst2", "lm_coef": 0.5, "eval": {"validation": {"accuracy": acc}}}))
    rows = sweep.gather(tmp_path)
    sweep.write_tables(rows, tmp_path)
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["run"], r["eval.validation.accuracy"]) for r in table] == [("a", "0.75"), ("b", "0.5")]
    markdown = (tmp_path / "results.md").read_text().splitlines()
    assert markdown[0].startswith("| run |") and "eval.validation.accuracy" in markdown[0]
    assert len(markdown) == 4 and "| 0.75 |" in markdown[2]


def test_finished_runs_are_not_run_again(tmp_path, capsys):
    (tmp_path / "lm_coef=0").mkdir()
    (tmp_path / "lm_coef=0" / "summary.json").write_text(json.dumps({"finished": True, "train_loss": 0.5}))
    code = sweep.main(["--root", str(tmp_path), "--config", "configs/finetune.py:sst2",
                       "--grid", "finetune.lm_coef=0,0.5", "--dry_run"])
    out = capsys.readouterr().out
    assert code == 0 and "lm_coef=0: done already" in out and "--config.finetune.lm_coef=0.5" in out
    # A real run records it complete from its summary without starting a job (the other one would).
    definition = sweep.grid_study("configs/finetune.py:sst2", [("finetune.lm_coef", ["0"])], [])
    run = controller.Controller(definition, tmp_path, launcher=None, directory=tmp_path / "_sweep", out=print).run()
    assert [(t.state, t.value) for t in run.trials] == [(optuna.trial.TrialState.COMPLETE, 0.5)]
    assert (tmp_path / "results.md").exists() and not (tmp_path / "_sweep" / "trials" / "lm_coef=0.json").exists()


class _ScriptedLauncher:
    """Trials that leave what a fine-tune with `train.eval_every_steps=2` leaves (val_accuracy in
    metrics.jsonl at steps 2 and 4), their accuracy set by λ: λ=0.5 trials finish, the others keep
    running until stopped, then exit 42 as a job stopped by SIGTERM does; λ=2's job has already
    passed its last step when the stop comes, and finishes (exit 0)."""

    def __init__(self, accuracy_of):
        self.accuracy_of, self.running, self.stopped = accuracy_of, {}, []

    @staticmethod
    def _finish(workdir, spec, accuracy):
        summary = {"finished": True, "eval": {"validation": {"accuracy": accuracy}}}
        (workdir / "summary.json").write_text(json.dumps(summary))
        pathlib.Path(spec["exit"]).write_text(json.dumps({"status": 0, "error": "", "seconds": 1.0}))

    def submit(self, specs):
        ids = []
        for spec_path in specs:
            spec = json.loads(spec_path.read_text())
            workdir = pathlib.Path(next(a for a in spec["argv"] if a.startswith("--workdir="))[10:])
            accuracy = self.accuracy_of[next(a for a in spec["argv"] if a.startswith("--config.finetune.lm_coef="))
                                        .split("=", 1)[1]]
            workdir.mkdir(parents=True)
            (workdir / "metrics.jsonl").write_text("".join(json.dumps(
                {"step": s, "loss": 0.5, **({"val_accuracy": accuracy} if s % 2 == 0 else {})}) + "\n"
                for s in (1, 2, 3, 4)))
            job = f"scripted:{spec['name']}"
            if accuracy >= 0.5:
                self._finish(workdir, spec, accuracy)
            else:
                self.running[job] = (spec, workdir, accuracy)
            ids.append(job)
        return ids

    def alive(self, job):
        return job in self.running

    def stop(self, job):
        self.stopped.append(job)
        spec, workdir, accuracy = self.running.pop(job)
        if "--config.finetune.lm_coef=2.0" in spec["argv"]:
            self._finish(workdir, spec, accuracy)
        else:
            pathlib.Path(spec["exit"]).write_text(json.dumps({"status": 42, "error": "", "seconds": 1.0}))


def test_pruning_reads_the_validation_metrics_the_trials_log(tmp_path):
    definition = definition_lib.from_config(_study(
        space=[{"key": "finetune.lm_coef", "type": "categorical", "choices": (0.5, 8.0, 2.0)}],
        intermediate={"metric": "val_accuracy", "direction": "maximize"},
        pruner={"name": "median", "startup_trials": 1}, num_trials=4, parallel=1,
        enqueue=({"finetune.lm_coef": 0.5}, {"finetune.lm_coef": 0.5}, {"finetune.lm_coef": 8.0},
                 {"finetune.lm_coef": 2.0})))
    launcher = _ScriptedLauncher({"0.5": 0.75, "8.0": 0.25, "2.0": 0.375})
    study = controller.Controller(definition, tmp_path, launcher, tmp_path / "_sweep", poll_secs=0.01,
                                  out=lambda *_: None).run()
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED,
                                                               optuna.trial.TrialState.COMPLETE]
    # What the pruner judged is what the trials logged at their evaluation steps, and only those.
    assert [t.intermediate_values for t in study.trials] == [{2: 0.75, 4: 0.75}] * 2 + [
        {2: 0.25, 4: 0.25}, {2: 0.375, 4: 0.375}]
    assert launcher.stopped == ["scripted:trial_002", "scripted:trial_003"]
    assert study.trials[2].user_attrs["pruned_at"] == 4
    # Trial 3 was judged at its last step but finished before the stop: its result counts.
    assert study.trials[3].value == 0.375 and study.trials[3].user_attrs["pruned_at"] is None
