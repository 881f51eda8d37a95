"""The pretraining job end to end, as users run it: `python -m gpt1_jax.cli.main ...`.

Each job runs in its own process (as a resumed job would), on a tiny model over a
slice of one bundled book.
"""
import json
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest

import jobs
from gpt1_jax.train import stopping


def run_job(corpus, workdir, *overrides, devices=1, expect_ok=True):
    return jobs.run(jobs.pretrain_argv(corpus, workdir, *overrides), jobs.env(devices), expect_ok=expect_ok)


def final_params(workdir):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(workdir.absolute() / "export" / "params")


def leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
def test_job_writes_metrics_summary_checkpoints_and_export(corpus, tmp_path):
    run_job(corpus, tmp_path, "--config.train.num_steps=4", "--config.checkpoint.every_steps=2")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 4 and summary["num_params"] > 0
    assert np.isfinite(summary["train_loss"]) and np.isfinite(summary["val_loss"])
    assert summary["initial_val_loss"] > 0
    records = jobs.metric_records(tmp_path)
    assert records[-1]["step"] == 4
    assert {"step", "loss", "lr", "tokens_per_sec"} <= set(records[-1])
    assert jobs.finished_steps(tmp_path) == [2, 4]
    assert (tmp_path / "export" / "model.json").exists()
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    assert list((tmp_path / "tensorboard").iterdir())


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_identical(corpus, tmp_path):
    straight, sliced = tmp_path / "straight", tmp_path / "sliced"
    common = ["--config.train.num_steps=6", "--config.checkpoint.every_steps=3"]
    run_job(corpus, straight, *common)
    run_job(corpus, sliced, *common, "--config.train.stop_at_step=3")
    assert max(jobs.losses(sliced)) == 3
    assert not (sliced / "export").exists()  # stopped early: no hand-off export yet
    second = run_job(corpus, sliced, *common)
    assert "Resuming from" in second.stdout + second.stderr
    a, b = jobs.losses(straight), jobs.losses(sliced)
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # exact, not approximate
    for x, y in zip(leaves(final_params(straight)), leaves(final_params(sliced))):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_checkpoint_restores_onto_a_different_mesh(corpus, tmp_path):
    straight, moved = tmp_path / "straight", tmp_path / "moved"
    common = ["--config.train.num_steps=4", "--config.checkpoint.every_steps=2"]
    run_job(corpus, straight, *common)
    run_job(corpus, moved, *common, "--config.train.stop_at_step=2")
    run_job(corpus, moved, *common, "--config.mesh.data=1", "--config.mesh.fsdp=2",
            "--config.mesh.tensor=2", devices=4)
    a, b = jobs.losses(straight), jobs.losses(moved)
    np.testing.assert_allclose([b[s] for s in (3, 4)], [a[s] for s in (3, 4)], atol=1e-5)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(corpus, tmp_path):
    process = jobs.start(jobs.pretrain_argv(corpus, tmp_path, "--config.train.num_steps=100000",
                                            "--config.checkpoint.every_steps=1000"))
    jobs.wait_for(lambda: len(jobs.metric_records(tmp_path)) >= 5, process, poll=0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_RESUME, stderr[-3000:]
    saved = jobs.finished_steps(tmp_path)
    assert len(saved) == 1 and saved[0] >= 4 and saved[0] < 1000
    assert f"checkpointed step {saved[0]}" in stderr
    resumed = run_job(corpus, tmp_path, "--config.train.num_steps=100000",
                      f"--config.train.stop_at_step={saved[0] + 2}")
    assert f"checkpoints/{saved[0]}" in resumed.stdout + resumed.stderr
    assert max(jobs.losses(tmp_path)) == saved[0] + 2


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_the_model_is_refused_untouched(corpus, tmp_path):
    run_job(corpus, tmp_path, "--config.train.num_steps=2", "--config.checkpoint.every_steps=2")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    result = run_job(corpus, tmp_path, "--config.train.num_steps=4", "--config.model.d_model=48",
                     expect_ok=False)
    assert result.returncode != 0
    assert "does not fit the model" in result.stderr and "checkpoints/2" in result.stderr
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    assert after == before


def test_an_unknown_config_key_is_an_error_naming_it(corpus, tmp_path):
    result = run_job(corpus, tmp_path, "--config.train.num_stepz=3", expect_ok=False)
    assert result.returncode != 0 and "num_stepz" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_a_sample_prompt_that_leaves_no_room_is_an_error_line_before_any_training(corpus, tmp_path):
    # 16 positions: a prompt of 20 words cannot be continued. Said at the start, not after the run.
    result = run_job(corpus, tmp_path, "--config.train.sample_prompt=" + "the house " * 10, expect_ok=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "train.sample_prompt" in line and "shorten it" in line
    assert not (tmp_path / "checkpoints").exists()
