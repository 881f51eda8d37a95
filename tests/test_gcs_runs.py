"""Whole runs on `gs://` run directories, against a real GCS server on 127.0.0.1 (tests/gcs.py).

One pre-training run is killed with `kill -9` after a committed checkpoint and resumed;
its last checkpoint must equal a straight local run's bit for bit, and its metrics history
must hold every step once. Then every consumer reads it from gs://: fine-tuning with
`init_from=gs://...`, eval mode, `convert --from=orbax`, `sample`, `evaluate_lm`. Nothing
may land in a local folder named `gs:`.
"""
import random
import signal
import sys
import time

import pytest

import jobs
from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax import loading
from gpt1_jax.storage import rundir

pytestmark = pytest.mark.slow
LEASE_TTL_SECS = 3  # the workdir lease of a killed job expires this soon (production: 60)

STOP = 12
COMMON = [*jobs.TINY_MODEL, f"--config.train.num_steps={STOP}", "--config.train.batch_size=4",
          "--config.train.log_every_steps=1", "--config.train.eval_batches=1",
          "--config.train.eval_every_steps=6", "--config.checkpoint.every_steps=1",
          "--config.checkpoint.max_to_keep=2", "--config.data.val_fraction=0.1"]


def pretrain_argv(workdir, corpus, cache_dir, *overrides):
    return jobs.argv("configs/tiny.py", workdir, *COMMON, f"--config.data.text_files={corpus}",
                     f"--config.data.cache_dir={cache_dir}", *overrides)


@pytest.fixture(scope="module")
def runs(gcs_server, corpus, tmp_path_factory):
    """(local workdir, gs:// workdir) of the same pre-training: straight, and killed + resumed."""
    local = tmp_path_factory.mktemp("straight")
    jobs.run(pretrain_argv(local, corpus / "book.txt", corpus / "cache"))
    remote = f"gs://gpt1-jax-test/runs-{random.Random().randrange(1 << 30)}/pretrain"
    # The corpus and the token cache on gs:// too: built by the job, read back on resume.
    data = rundir.path(remote).parent / "data"
    rundir.write_bytes(data / "book.txt", (corpus / "book.txt").read_bytes())
    argv = pretrain_argv(remote, f"{data}/*.txt", data / "cache")
    job_env = jobs.env(GPT1_JAX_LEASE_TTL_SECS=str(LEASE_TTL_SECS))
    process = jobs.start(argv, job_env)
    jobs.wait_for(lambda: max(jobs.finished_steps(remote), default=0) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the job ended before the kill"
    killed_at = jobs.finished_steps(remote)
    assert killed_at and killed_at[-1] < STOP
    time.sleep(LEASE_TTL_SECS + 1)  # the dead job's lease expires; then it is taken over
    resumed = jobs.run(argv, job_env)
    assert jobs.resumed_from(resumed.stdout) == killed_at[-1]
    return local, remote


def test_a_killed_run_on_gcs_resumes_bit_for_bit_with_its_metrics_history(runs):
    local, remote = runs
    assert jobs.finished_steps(remote)[-1] == STOP
    jobs.assert_same_state(jobs.saved_state(local, STOP), jobs.saved_state(remote, STOP))
    # Every step logged once, with the straight run's loss: what the killed job logged past
    # its last checkpoint was dropped on resume and logged again by the resumed run.
    straight = {r["step"]: r.get("loss") for r in jobs.metric_records(local)}
    history = jobs.metric_records(remote)
    assert [r["step"] for r in history] == list(range(STOP + 1))
    assert {r["step"]: r.get("loss") for r in history} == straight
    summary = rundir.read_json(rundir.path(remote) / rundir.SUMMARY)
    assert summary["step"] == STOP and "initial_val_loss" in summary
    assert (rundir.path(remote) / rundir.EXPORT / rundir.EXPORT_MODEL_JSON).exists()
    assert list((rundir.path(remote) / rundir.TENSORBOARD).iterdir())


def test_an_interrupted_save_on_gcs_is_never_loaded(runs):
    _, remote = runs
    # A step folder without orbax's commit marker: what a save cut short leaves on GCS.
    torn = rundir.path(remote) / rundir.CHECKPOINTS / "99"
    rundir.write_text(torn / "state" / "_METADATA", "{}")
    assert jobs.finished_steps(remote)[-1] == STOP
    source = loading.find(f"{remote}/{rundir.CHECKPOINTS}/{STOP}")
    assert source.kind == "state" and source.path.name == str(STOP)
    # A job's checkpointer resumes from the last finished step and clears the torn one away.
    checkpointer = checkpoint_lib.Checkpointer(remote)
    try:
        assert checkpointer.latest_step() == STOP
    finally:
        checkpointer.close()
    assert not rundir.list_names(torn)


def test_every_consumer_reads_the_run_from_gcs(runs, shared_data, tmp_path):
    _, remote = runs
    finetuned = rundir.path(remote).parent / "sst2"
    jobs.run(jobs.argv("configs/finetune.py:sst2", finetuned, f"--config.init_from={remote}",
                       f"--config.data.data_dir={shared_data / 'glue'}",
                       "--config.data.max_train_examples=16", "--config.data.max_eval_examples=16",
                       "--config.train.batch_size=8", "--config.train.num_steps=2"))
    summary = rundir.read_json(finetuned / rundir.SUMMARY)
    assert 0.0 <= summary["eval"]["validation"]["accuracy"] <= 1.0
    assert list((finetuned / rundir.PREDICTIONS).iterdir())
    evaluated = jobs.run(jobs.argv("configs/finetune.py:sst2", finetuned, "--config.mode=eval",
                                   f"--config.data.data_dir={shared_data / 'glue'}",
                                   "--config.data.max_eval_examples=16", "--config.train.batch_size=8"))
    assert '"validation"' in evaluated.stdout

    hf_dir = tmp_path / "hf"
    converted = jobs.run([sys.executable, "-m", "gpt1_jax.cli.convert", "--from=orbax", "--to=hf",
                          remote, str(hf_dir)])
    assert "1 layers, width 32" in converted.stdout and (hf_dir / "model.safetensors").is_file()
    sampled = jobs.run([sys.executable, "-m", "gpt1_jax.cli.sample", f"--init_from={remote}",
                        "--prompt=it was a dark and stormy night", "--max_new_tokens=4",
                        "--temperature=0"])
    assert sampled.stdout.startswith("it was a dark and stormy night")
    scored = jobs.run([sys.executable, "-m", "gpt1_jax.cli.evaluate_lm", f"--init_from={remote}",
                       f"--text={rundir.path(remote).parent / 'data' / 'book.txt'}"])
    assert '"perplexity"' in scored.stdout

    for folder in (jobs.REPO, tmp_path):
        assert not (folder / "gs:").exists(), f"a local gs: folder in {folder}"


def test_a_cache_dir_in_a_missing_bucket_is_one_line_naming_the_bucket(corpus, gcs_server, tmp_path):
    result = jobs.run(jobs.pretrain_argv(corpus, tmp_path / "run", "--config.train.num_steps=2",
                                         cache_dir="gs://no-such-bucket/cache"), jobs.env(1), expect_ok=False)
    [line] = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
    assert result.returncode == 1 and line.startswith("error: cannot write gs://no-such-bucket/cache/")
    assert "does the bucket gs://no-such-bucket exist" in line
