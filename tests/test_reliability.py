"""Reliability (issue #6): preemption, crashes, non-finite steps, bad input, one job per workdir.

Job-level tests run `python -m gpt1_jax.cli.main` in fresh processes, as a user or a scheduler
would, on a tiny model over a slice of one book. Faults come from outside, as they would in
production: signals, SIGKILL, a corrupted token cache, a file-size limit, a lock held by
another process; the product has no test hooks. All jobs share one step count (runs end at
`stop_at_step`) and a persistent XLA compilation cache, so only the first job compiles.
"""
import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jobs
from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax import config_files, tokenizers
from gpt1_jax.storage import workdir as workdir_lib
from gpt1_jax.train import loop, stopping, train_state

# One schedule for every job (its length is compiled into the train step); runs stop earlier.
STEPS = ["--config.train.num_steps=100000"]


# --- jobs in subprocesses ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return jobs.env(1, **jobs.compilation_cache(tmp_path_factory.mktemp("xla_cache")))


def job_args(corpus, workdir, *overrides, cache_dir=None):
    return jobs.pretrain_argv(corpus, workdir, *STEPS, *overrides, cache_dir=cache_dir)


def snapshot(directory) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


def untouched(before: dict, directory) -> bool:
    """Every file of `before` is still there, unchanged (new files may have appeared)."""
    now = snapshot(directory)
    return all(now.get(path) == stat for path, stat in before.items())


def last_logged_step(workdir) -> int:
    return max((r["step"] for r in jobs.metric_records(workdir)), default=-1)


def load_config(file_name, *args):
    """configs/<file_name>'s get_config(*args), as `--config=configs/<file_name>` loads it."""
    return config_files.load(jobs.REPO / "configs" / file_name, *args)


@pytest.fixture(scope="module")
def trained(corpus, env, tmp_path_factory):
    """A workdir stopped at step 4 with checkpoints 2 and 4 (at most 2 kept)."""
    workdir = tmp_path_factory.mktemp("trained")
    jobs.run(job_args(corpus, workdir, "--config.train.stop_at_step=4", "--config.checkpoint.every_steps=2",
                      "--config.checkpoint.max_to_keep=2"), env)
    assert jobs.finished_steps(workdir) == [2, 4]
    return workdir


def copy_of(workdir, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(workdir, tmp_path / "workdir"))


def token_cache_of(workdir, cache_dir) -> pathlib.Path:
    """The token cache in `cache_dir` that a job resuming in `workdir` reads: the one whose
    metadata names the tokenizer the workdir records. (Other jobs of the module may have
    left caches of other tokenizers beside it.)"""
    fingerprint = tokenizers.load_tokenizer(workdir / "tokenizer").fingerprint()
    [metadata] = [p for p in pathlib.Path(cache_dir).glob("*.json")
                  if json.loads(p.read_text()).get("tokenizer_fingerprint") == fingerprint]
    return metadata.with_suffix(".npy")


# --- 1. preemption -----------------------------------------------------------------------------

@pytest.mark.slow
def test_sigint_then_a_second_signal_commits_the_current_step_and_exits_resume(corpus, env, tmp_path):
    process = jobs.start(job_args(corpus, tmp_path, "--config.checkpoint.every_steps=1000"), env)
    jobs.wait_for(lambda: last_logged_step(tmp_path) >= 3, process, poll=0.1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # a second signal, while stopping: ignored
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_RESUME, stderr[-3000:]
    [step] = jobs.finished_steps(tmp_path)
    assert f"SIGINT: checkpointed step {step}, exiting" in stderr and not jobs.in_flight(tmp_path)
    assert step == last_logged_step(tmp_path)
    assert jobs.saved_state(tmp_path, step)["['step']"] == step  # committed and readable: a rerun starts there


@pytest.mark.slow
def test_a_checkpoint_not_committed_within_the_grace_period_exits_resume_without_it(corpus, env, trained, tmp_path):
    # A grace period far shorter than any checkpoint write: the watchdog must end the job.
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir / "checkpoints")
    process = jobs.start(job_args(corpus, workdir, "--config.train.grace_period_secs=0.001",
                                  "--config.checkpoint.every_steps=1000"), env)
    jobs.wait_for(lambda: last_logged_step(workdir) >= 6, process, poll=0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == stopping.EXIT_RESUME  # the last committed step is intact: rerun
    assert "stopped: SIGTERM: the checkpoint was not committed within the grace period " \
           "(train.grace_period_secs=0.001)" in stderr and "checkpointed step" not in stderr
    assert jobs.finished_steps(workdir) == [2, 4]  # no half-written step looks committed
    assert untouched(before, workdir / "checkpoints")


class _Batches:
    """A list of batches with grain's get_state()."""

    def __init__(self, batches, on_next=None):
        self.batches, self.index, self.on_next = batches, 0, on_next

    def __next__(self):
        self.index += 1
        if self.on_next:
            self.on_next(self.index)
        return self.batches[self.index - 1]

    def get_state(self):
        return {"index": self.index}


class _Writer:
    def __init__(self):
        self.records = {}

    def write(self, step, metrics):
        self.records[step] = dict(metrics)


def _tiny_regression(kinds):
    """A linear model trained by the real jitted step on one device, and a batch per entry
    of `kinds`: 0 is clean, 1 makes the loss NaN, 2 makes the loss and the gradient infinite."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tx = optax.adam(0.1)
    init_params = lambda rng: {"w": jax.random.normal(rng, (3,))}

    def loss_fn(params, batch, rng, deterministic):
        mse = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
        kind = batch["kind"][0]
        return mse * jnp.where(kind == 2, jnp.inf, 1.0) + jnp.where(kind == 1, jnp.nan, 0.0), {}

    _, shardings = train_state.state_shardings(init_params, tx, jax.random.key(0), mesh, ())
    replicated = NamedSharding(mesh, PartitionSpec())
    step = train_state.make_train_step(loss_fn, tx, lambda s: 0.1, shardings, replicated)
    state = train_state.create_train_state(init_params, tx, jax.random.key(0), shardings)
    rng = np.random.RandomState(0)
    batches = [{"x": rng.randn(4, 3).astype(np.float32), "y": rng.randn(4).astype(np.float32),
                "kind": np.full((4,), k, np.int32)} for k in kinds]
    return state, step, batches, shardings


def _run(state, train_step, checkpointer):
    """What the loop reads of a run_setup.Run."""
    return types.SimpleNamespace(state=state, train_step=train_step, checkpointer=checkpointer)


def test_a_second_signal_during_the_checkpoint_write_does_not_interrupt_it(capfd):
    class Checkpointer:  # the save itself draws a second signal
        def __init__(self):
            self.saved, self.committed = [], []

        def save(self, step, state, data_state, meta):
            self.saved.append(step)
            os.kill(os.getpid(), signal.SIGINT)

        def wait(self):
            self.committed = list(self.saved)

    state, step_fn, batches, _ = _tiny_regression([0] * 10)
    preempt_at_3 = lambda i: i == 3 and os.kill(os.getpid(), signal.SIGTERM)
    checkpointer = Checkpointer()
    previous = signal.getsignal(signal.SIGINT)
    state, _ = loop.train_loop(_run(state, step_fn, checkpointer), _Batches(batches, preempt_at_3),
                               lambda b: b, loop.LoopConfig(num_steps=10, progress=False), _Writer(), {})
    assert int(state.step) == 3 and checkpointer.committed == [3]
    err = capfd.readouterr().err
    assert "SIGINT: already stopping after SIGTERM" in err and "SIGTERM: checkpointed step 3" in err
    assert signal.getsignal(signal.SIGINT) is previous  # the caller's handlers are back


class _RecordingCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, step, state, data_state, meta):
        self.saved.append(step)

    def wait(self):
        pass


def test_a_signal_before_the_loop_is_kept_and_stops_it_at_its_first_step(capfd):
    # The job installs the stop first; a SIGTERM while it tokenizes, compiles or restores
    # is kept, and the loop checkpoints its first step and stops.
    state, step_fn, batches, _ = _tiny_regression([0] * 10)
    checkpointer = _RecordingCheckpointer()
    cfg = loop.LoopConfig(num_steps=10, progress=False, checkpoint_every_steps=1000)
    with stopping.StopRequested(grace_period_secs=0) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        state, _ = loop.train_loop(_run(state, step_fn, checkpointer), _Batches(batches), lambda b: b, cfg,
                                   _Writer(), {}, stop_requested=stop)
    assert int(state.step) == 1 and checkpointer.saved == [1]
    assert "SIGTERM: checkpointed step 1, exiting" in capfd.readouterr().err


def test_checkpoint_every_secs_saves_by_time_at_log_steps(monkeypatch):
    state, step_fn, batches, _ = _tiny_regression([0] * 9)
    now = [0.0]  # the loop's clock: each batch takes 7 s
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(
        monotonic=lambda: now[0], perf_counter=time.perf_counter, time=time.time))
    advance = lambda i: now.__setitem__(0, now[0] + 7.0)
    checkpointer = _RecordingCheckpointer()
    cfg = loop.LoopConfig(num_steps=9, progress=False, checkpoint_every_steps=1000,
                             checkpoint_every_secs=20.0, log_every_steps=3)
    loop.train_loop(_run(state, step_fn, checkpointer), _Batches(batches, advance), lambda b: b, cfg,
                    _Writer(), {})
    # Due by time at every log step (3, 6), never between them; the last step always.
    assert checkpointer.saved == [3, 6, 9]


# --- 2. crash safety ---------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_from_the_last_commit_bit_for_bit(corpus, env, tmp_path):
    stop = 12
    # A checkpoint every step (at most 2 kept): a write or a deletion is almost always in flight.
    common = [f"--config.train.stop_at_step={stop}", "--config.checkpoint.every_steps=1",
              "--config.checkpoint.max_to_keep=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    jobs.run(job_args(corpus, straight, *common), env)

    rng = random.Random(6)
    moments = ["write in flight", "between steps", "start-up", "write in flight"]
    interrupted_writes = 0
    expected_resume = None
    for moment in moments:
        process = jobs.start(job_args(corpus, killed, *common), env)
        if moment == "start-up":  # importing, restoring, compiling
            time.sleep(rng.uniform(0.5, 4.0))
        else:
            target = max(jobs.finished_steps(killed), default=0) + rng.randint(1, 2)
            jobs.wait_for(lambda target=target: max(jobs.finished_steps(killed), default=0) >= target,
                          process)
            if moment == "write in flight":
                jobs.wait_for(lambda: jobs.in_flight(killed), process, poll=0.002)
            else:
                time.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        stdout, _ = process.communicate()
        assert process.returncode == -signal.SIGKILL, f"the job ended before the kill ({moment})"
        if expected_resume is not None and jobs.resumed_from(stdout) is not None:
            assert jobs.resumed_from(stdout) == expected_resume
        if moment == "write in flight":
            interrupted_writes += bool(jobs.in_flight(killed))
        print(f"kill -9 ({moment}): resumed from {jobs.resumed_from(stdout)}, committed "
              f"{jobs.finished_steps(killed)}, left uncommitted {jobs.in_flight(killed)}")  # shown with -s
        expected_resume = max(jobs.finished_steps(killed), default=None)
        if moment != "start-up":  # (killed in start-up, it may not have reached the lock)
            # The lock file still names the dead job; it must not block the restart.
            assert f"pid {process.pid} " in (killed / workdir_lib.LOCK_FILE).read_text()

    assert interrupted_writes >= 1, "no kill landed during a checkpoint write"
    final = jobs.run(job_args(corpus, killed, *common), env)
    assert jobs.resumed_from(final.stdout) == expected_resume
    assert jobs.finished_steps(killed)[-1] == stop and not jobs.in_flight(killed)

    jobs.assert_same_state(jobs.saved_state(straight, stop), jobs.saved_state(killed, stop))
    # Steps run again after a kill reproduce their first run's loss exactly.
    losses = jobs.losses(straight)
    for record in jobs.metric_records(killed):
        if "loss" in record:
            assert record["loss"] == losses[record["step"]], record["step"]


# --- 3. non-finite steps -----------------------------------------------------------------------

def test_nonfinite_steps_are_skipped_counted_and_n_in_a_row_stop_the_loop(tmp_path):
    # Steps 3 (NaN) and 6 (Inf) are isolated; 8, 9, 10 are three NaN steps in a row.
    kinds = [0, 0, 1, 0, 0, 2, 0, 1, 1, 1]
    state, step_fn, batches, shardings = _tiny_regression(kinds)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    # What training on the good batches alone gives: a skipped step must leave no trace.
    expected = state
    for batch, kind in zip(batches, kinds):
        if kind == 0:
            expected, _ = step_fn(expected, batch)
    expected_params = np.asarray(expected.params["w"])

    state, step_fn, batches, _ = _tiny_regression(kinds)
    writer = _Writer()
    checkpointer = checkpoint_lib.Checkpointer(tmp_path)
    cfg = loop.LoopConfig(num_steps=10, log_every_steps=1, checkpoint_every_steps=2,
                             max_nonfinite_in_a_row=3, progress=False)
    with pytest.raises(loop.NonFiniteError) as error:
        loop.train_loop(_run(state, step_fn, checkpointer), _Batches(batches), lambda b: b, cfg, writer, {})
    checkpointer.close()
    assert "3 consecutive steps (up to step 10)" in str(error.value)
    assert "The last good checkpoint, step 8, is intact" in str(error.value)
    assert [writer.records[s]["nonfinite"] for s in range(1, 11)] == [float(k != 0) for k in kinds]
    assert [writer.records[s]["nonfinite_total"] for s in range(1, 11)] == [0, 0, 1, 1, 1, 2, 2, 3, 4, 5]

    # Step 8 was skipped, so its checkpoint holds the parameters of the last update (step 7).
    restored = checkpoint_lib.Checkpointer(tmp_path)
    assert restored.all_steps() == [4, 6, 8]  # max_to_keep=3; nothing after the stop
    state8, _, _ = restored.restore(8, train_state.with_shardings(abstract, shardings))
    restored.close()
    np.testing.assert_array_equal(np.asarray(state8.params["w"]), expected_params)


@pytest.mark.slow
def test_a_job_whose_data_turns_nonfinite_stops_with_the_last_good_checkpoint(corpus, env, trained,
                                                                               tmp_path):
    workdir = copy_of(trained, tmp_path)
    cache = pathlib.Path(shutil.copytree(corpus / "cache", tmp_path / "cache"))
    tokens = np.load(token_cache_of(workdir, cache), mmap_mode="r+")
    clean = np.array(tokens)
    tokens[:] = np.iinfo(tokens.dtype).max  # ids past the vocabulary: NaN embeddings and loss
    tokens.flush()
    before = snapshot(workdir / "checkpoints")
    args = job_args(corpus, workdir, "--config.train.max_nonfinite_in_a_row=2",
                    "--config.checkpoint.every_steps=2", "--config.train.stop_at_step=8",
                    cache_dir=cache)
    result = jobs.run(args, env, expect_ok=False)
    assert result.returncode == 1
    assert result.stderr.rstrip().splitlines()[-1].startswith(
        "error: 2 consecutive steps (up to step 6) had a non-finite loss or gradient")
    assert "The last good checkpoint, step 4, is intact" in result.stderr
    assert snapshot(workdir / "checkpoints") == before
    bad = [r for r in jobs.metric_records(workdir) if r["step"] > 4]
    assert [(r["step"], r["nonfinite"], r["nonfinite_total"]) for r in bad] == [(5, 1, 1), (6, 1, 2)]

    tokens[:] = clean  # the data repaired, the job goes on from the last good checkpoint
    tokens.flush()
    rerun = jobs.run(args, env)
    assert jobs.resumed_from(rerun.stdout) == 4 and jobs.finished_steps(workdir)[-1] == 8


@pytest.mark.slow
def test_a_disk_that_fills_during_a_save_is_reported_and_loses_nothing(corpus, env, trained, tmp_path):
    # A 1 MiB file-size limit: the state's ~5 MB files fail mid-save in the file system
    # itself (EFBIG, where a full disk gives ENOSPC), after the job has started writing.
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir / "checkpoints")
    # Orbax packs the arrays into data files of varying sizes: with files barely above the
    # limit (1.1-1.6 MB, as a 4k vocabulary gave), a save could fit and the test flaked.
    largest = max(size for path, (size, _) in before.items() if "/4/state/" in path)
    assert largest > 4 * 2**20, f"checkpoint files of {largest:,} bytes are too close to the 1 MiB limit"
    args = job_args(corpus, workdir, "--config.checkpoint.every_steps=2",
                    "--config.checkpoint.max_to_keep=2", "--config.train.stop_at_step=8")
    limited = ["bash", "-c", 'ulimit -f 1024 && exec "$@"', "bash"]
    result = jobs.run([*limited, *args], env, expect_ok=False)
    report = jobs.output(result)  # every assertion shows what the job printed
    assert result.returncode == 1, report
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: writing checkpoint 6 in {workdir / 'checkpoints'} failed: "), report
    assert "File too large" in last and "The committed checkpoints (2, 4) are untouched" in last, report
    # Saving 6 would have retired 2 (max_to_keep=2): a failed save retires nothing.
    assert jobs.finished_steps(workdir) == [2, 4], report
    assert untouched(before, workdir / "checkpoints"), report
    rerun = jobs.run(args, env)  # space freed: the job goes on from the last commit
    report = jobs.output(rerun)
    assert jobs.resumed_from(rerun.stdout) == 4, report
    assert jobs.finished_steps(workdir) == [6, 8] and not jobs.in_flight(workdir), report


# --- 4. bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "file is empty"),
    (b"caf\xe9 latte\n", "not valid UTF-8"),
    (b"Too short for one window.\n", "needs at least one window"),
])
def test_bad_data_files_are_named_and_change_no_checkpoint(pretrained, tmp_path, content, message):
    # In this process (main.py turns the DataError into one `error:` line, as the job
    # tests above show); the workdir holds checkpoints that must stay as they are.
    from gpt1_jax.jobs import pretrain
    workdir = copy_of(pretrained, tmp_path)
    text_file = tmp_path / "data.txt"
    text_file.write_bytes(content)
    config = load_config("tiny.py")
    config.model.n_ctx = 16
    config.data.update(text_files=str(text_file), cache_dir=str(tmp_path / "cache"))
    before = snapshot(workdir / "checkpoints")
    with pytest.raises(ValueError, match=message) as error:
        pretrain.run(config, workdir)
    assert text_file.name in str(error.value)
    assert snapshot(workdir / "checkpoints") == before


def test_a_workdir_that_cannot_be_written_is_refused_before_anything_else(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # root can write anywhere, but not under a file
    result = jobs.main("--config=configs/tiny.py", f"--workdir={blocker / 'run'}", expect_ok=False)
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: workdir {blocker / 'run'} is not writable")


def test_a_checkpoint_whose_vocabulary_does_not_fit_is_refused(tmp_path):
    from gpt1_jax import loading, tokenizers
    from gpt1_jax import model as model_lib
    from gpt1_jax.jobs import finetune
    # A 1,000-word model exported beside the 40,478-word GPT-1 tokenizer.
    mcfg = model_lib.ModelConfig(vocab_size=1000, n_ctx=16, n_layer=1, n_head=2, d_model=16, d_ff=32)
    params = nn.meta.unbox(model_lib.GPT1(mcfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    export = tmp_path / "export"
    loading.write_export(export, params, dataclasses.asdict(mcfg), tokenizers.gpt1_bpe_tokenizer())
    config = load_config("finetune.py", "sst2")
    config.init_from = str(export)
    with pytest.raises(checkpoint_lib.CheckpointError,
                       match="records vocab_size=1000 but its tokenizer .* has 40478 entries"):
        finetune.run(config, tmp_path / "finetune")
    # Vocabulary recorded right, embedding table of another size: the restore names both.
    big = model_lib.GPT1(dataclasses.replace(mcfg, vocab_size=40478))
    abstract = nn.meta.unbox(jax.eval_shape(
        lambda: big.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
    with pytest.raises(checkpoint_lib.CheckpointError, match=r"tokens_embed/embedding: model expects "
                       r"\(40478, 16\), checkpoint has \(1000, 16\)"):
        checkpoint_lib.load_params(export, abstract)


# --- 5. one job per workdir --------------------------------------------------------------------

def test_a_second_job_on_a_live_jobs_workdir_is_refused_naming_it(corpus, env, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gpt1_jax.storage import workdir; "
         "workdir.WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
         str(tmp_path)], cwd=jobs.REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = jobs.run(job_args(corpus, tmp_path), env, expect_ok=False)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: workdir {tmp_path} is in use by another job "
                           f"(pid {holder.pid} on {socket.gethostname()}, started ")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lib.LOCK_FILE]  # nothing written
    # Its holder dead (kill -9), the lock is free, though the file still names it.
    assert f"pid {holder.pid} " in (tmp_path / workdir_lib.LOCK_FILE).read_text()
    with workdir_lib.WorkdirLock(tmp_path):
        assert f"pid {os.getpid()} " in (tmp_path / workdir_lib.LOCK_FILE).read_text()


@pytest.mark.parametrize("mode", ["finetune", "eval"])
def test_fine_tuning_and_eval_jobs_take_the_lock_too(tmp_path, mode):
    with workdir_lib.WorkdirLock(tmp_path):  # held by this process: the job must be refused
        result = jobs.main("--config=configs/finetune.py:sst2", f"--workdir={tmp_path}",
                           f"--config.mode={mode}", expect_ok=False)
    assert result.returncode == 1
    assert f"error: workdir {tmp_path} is in use by another job (pid {os.getpid()} on" in result.stderr
