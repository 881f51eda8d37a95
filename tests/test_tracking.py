"""W&B tracking: an offline run holds the scalars metrics.jsonl holds, a job stopped by SIGTERM
and resumed from an earlier checkpoint appends to the same run, and nothing breaks without wandb or when it
cannot start."""
import json
import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("wandb")

import jobs  # noqa: E402
import wandb_records  # noqa: E402
from gpt1_jax import plots, tracking  # noqa: E402
from gpt1_jax.storage import rundir  # noqa: E402

# A job's logging as the pre-training loop does it: MetricsWriter with the tracker, one
# record a step, resuming after `resume_step` (argv: workdir, first step, last step, resume step).
LOGGING_JOB = textwrap.dedent("""
    import signal, sys, time
    from gpt1_jax import reporting, tracking
    def stop(signum, frame):  # as the job: SIGTERM ends it with status 42, "resume me"
        raise SystemExit(42)
    signal.signal(signal.SIGTERM, stop)
    workdir, first, last, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    tracker = tracking.from_settings(workdir, True, {"model": {"n_layer": 2}, "train": {"lr": 0.1}},
                                     mode="offline")
    assert tracker is not None
    writer = reporting.MetricsWriter(workdir, None if resume == "none" else int(resume), tracker=tracker)
    try:
        for step in range(first, last + 1):
            writer.write(step, {"loss": 10.0 / (step + 1) + first / 1000, "lr": 0.1, "note": "text"})
            print("logged", step, flush=True)
        if "--hang" in sys.argv:
            time.sleep(600)
    finally:
        writer.close()
""")


def _run_files(workdir):
    return sorted((workdir / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_offline_run_holds_metrics_jsonl_and_a_resumed_job_appends_to_it(tmp_path):
    env = jobs.env(1, WANDB_MODE="offline", WANDB_SILENT="true")
    killed = subprocess.Popen([sys.executable, "-c", LOGGING_JOB, str(tmp_path), "0", "9", "none", "--hang"],
                              cwd=jobs.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in killed.stdout:
        if line.strip() == "logged 9":
            break
    killed.send_signal(signal.SIGTERM)
    assert killed.wait(timeout=120) == 42
    # Resumed from a checkpoint at step 5: steps 6.. are logged again, with new values.
    jobs.run([sys.executable, "-c", LOGGING_JOB, str(tmp_path), "6", "12", "5"], env, timeout=300)

    files = _run_files(tmp_path)
    assert len(files) == 2
    run_id = (tmp_path / tracking.ID_FILE).read_text().strip()
    assert [wandb_records.run_id(f) for f in files] == [run_id, run_id]
    assert wandb_records.config(files[0])["model"] == {"n_layer": 2}
    last_by_step = {}
    for f in files:
        for row in wandb_records.history(f):
            last_by_step[row["step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == list(range(13))
    numeric = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in logged]
    assert [last_by_step[step] for step in range(13)] == numeric
    assert last_by_step[7]["loss"] == pytest.approx(10 / 8 + 6 / 1000)  # the resumed job's value


def test_without_wandb_or_when_it_cannot_start_training_goes_on(tmp_path, monkeypatch, caplog):
    assert tracking.from_settings(tmp_path, False, {}) is None
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert tracking.from_settings(tmp_path, True, {}) is None
    assert "wandb is not installed" in caplog.text
    monkeypatch.undo()
    assert tracking.from_settings(tmp_path, True, {}, mode="no-such-mode") is None
    assert "W&B could not start" in caplog.text


@pytest.mark.slow
def test_a_pretraining_job_logs_harness_tasks_and_mirrors_its_metrics_to_wandb(corpus, tmp_path):
    pytest.importorskip("lm_eval")
    import harness_local_tasks
    tasks = harness_local_tasks.write(tmp_path / "tasks", n=6)
    workdir = tmp_path / "run"
    env = jobs.env(1, WANDB_MODE="offline", WANDB_SILENT="true", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    jobs.run(jobs.pretrain_argv(corpus, workdir, "--config.train.num_steps=4", "--config.train.eval_every_steps=2",
                                "--config.tracking.wandb=True", f"--config.harness.tasks={tasks[0]}",
                                f"--config.harness.include_path={tmp_path / 'tasks'}",
                                "--config.harness.limit=4"), env, timeout=600)
    logged = jobs.metric_records(workdir)
    harness_keys = {k for row in logged for k in row if k.startswith("val_harness/")}
    assert harness_keys and all(k.startswith(f"val_harness/{tasks[0]}/") for k in harness_keys)
    assert sorted(row["step"] for row in logged if harness_keys & set(row)) == [0, 2, 4]
    [run_file] = _run_files(workdir)
    history = {row["step"]: row for row in wandb_records.history(run_file)}
    for row in logged:  # W&B holds every scalar metrics.jsonl holds, step by step
        numeric = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        assert {k: history[row["step"]][k] for k in numeric} == numeric
    # curves.png draws them below the losses, every harness metric in a panel of its kind.
    panels = plots.drawn_series((workdir / rundir.CURVES).read_bytes())
    harness_series = {name for p in panels if p["panel"].startswith("harness: ") for name in p["series"]}
    assert harness_series == {k.removeprefix("val_harness/") for k in harness_keys}


@pytest.mark.slow
def test_a_pretraining_job_killed_and_resumed_appends_to_its_wandb_run(corpus, tmp_path):
    # The real job, not its logging alone: SIGTERM mid-run (exit 42, a checkpoint committed),
    # then the same command again resumes the run and its W&B run.
    workdir = tmp_path / "run"
    env = jobs.env(1, WANDB_MODE="offline", WANDB_SILENT="true")
    argv = jobs.pretrain_argv(corpus, workdir, "--config.train.num_steps=40", "--config.checkpoint.every_steps=1000",
                              "--config.tracking.wandb=True")
    first = jobs.start(argv, env)
    jobs.wait_for(lambda: any(r.get("step", 0) >= 5 for r in jobs.metric_records(workdir)), first, poll=0.1)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 42, stderr[-3000:]
    stopped_at = max(jobs.losses(workdir))
    resumed = jobs.run(argv, env)
    assert jobs.resumed_from(resumed.stdout) == stopped_at

    files = _run_files(workdir)
    run_id = (workdir / tracking.ID_FILE).read_text().strip()
    assert len(files) == 2 and [wandb_records.run_id(f) for f in files] == [run_id, run_id]
    last_by_step = {}
    for f in files:
        for row in wandb_records.history(f):
            last_by_step[row["step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
    logged = jobs.metric_records(workdir)
    assert sorted(row["step"] for row in logged if "loss" in row) == list(range(1, 41))
    for row in logged:  # every scalar of metrics.jsonl, in the one W&B run
        numeric = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        assert {k: last_by_step[row["step"]][k] for k in numeric} == numeric
