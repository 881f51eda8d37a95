"""Nothing committed is lost: damaged checkpoints fall back, settings that keep nothing are
refused, an analysis command with nothing to do leaves its earlier results alone (issue 23).

Damage comes from outside, as a failing disk or a careless user would do it: a data file
of the newest step truncated, its array manifest deleted, its folder emptied. A resume
moves the damaged step aside to `<step>.damaged` and continues from the step before,
ending bit for bit where a resume from that step ends; every other committed file keeps
its bytes. Loading a damaged step explicitly is one `error:` line naming the file.
"""
import hashlib
import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jobs
from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.evaluation import zero_shot
from gpt1_jax.storage import rundir

# One schedule for every job (its length is compiled into the train step); runs stop earlier.
# Four checkpoints kept: resuming from 4 and saving 6 and 8 must not rotate step 2 away,
# so that its bytes can be compared before and after.
COMMON = ["--config.train.num_steps=100000", "--config.checkpoint.every_steps=2",
          "--config.checkpoint.max_to_keep=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return jobs.env(1, **jobs.compilation_cache(tmp_path_factory.mktemp("xla_cache")))


def job_args(corpus, workdir, *overrides):
    return jobs.pretrain_argv(corpus, workdir, *COMMON, *overrides)


@pytest.fixture(scope="module")
def trained(corpus, env, tmp_path_factory):
    """A workdir stopped at step 6, with checkpoints 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("trained")
    jobs.run(job_args(corpus, workdir, "--config.train.stop_at_step=6"), env)
    assert jobs.finished_steps(workdir) == [2, 4, 6]
    return workdir


@pytest.fixture(scope="module")
def resumed_from_4(corpus, env, trained, tmp_path_factory):
    """The reference: `trained` without its step 6 (no damage), resumed to step 8."""
    workdir = pathlib.Path(shutil.copytree(trained, tmp_path_factory.mktemp("reference") / "run"))
    shutil.rmtree(workdir / "checkpoints" / "6")
    result = jobs.run(job_args(corpus, workdir, "--config.train.stop_at_step=8"), env)
    assert jobs.resumed_from(result.stdout) == 4
    return workdir


def copy_of(workdir, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(workdir, tmp_path / "run"))


def checksums(directory) -> dict[str, str]:
    """{path relative to `directory`: sha256} of every file under it."""
    directory = pathlib.Path(directory)
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# --- the damage ---------------------------------------------------------------------------------

def truncate_a_data_file(step_dir: pathlib.Path) -> str:
    """Cuts the data file holding the token embedding in the middle of that array (a disk that
    filled, a copy cut short). Which of OCDBT's data files holds which array varies from save to
    save, so the array is looked up in the store's own b-tree, not guessed from file sizes: every
    command that loads a model then reads the cut."""
    import tensorstore as ts
    base = ts.KvStore.open({"driver": "file", "path": f"{step_dir / 'state'}/"}).result()
    [version] = ts.ocdbt.dump(base).result()["versions"]
    assert version["root_height"] == 0, "a tiny model's b-tree is one leaf"
    leaf = ts.ocdbt.dump(base, version["root"]["location"]).result()
    [where] = [e["indirect_value"] for e in leaf["entries"] if e["key"] == b"params.tokens_embed.embedding/0.0"]
    # "value:<prefix>:<file>:<offset>:<length>", e.g. value:ocdbt.process_0/:d/bc48...:4831785:4795414
    prefix, name, offset, length = where.removeprefix("value:").split(":")
    data_file = step_dir / "state" / prefix / name
    data = data_file.read_bytes()
    data_file.write_bytes(data[:int(offset) + int(length) // 2])
    return "is not valid for value of size"  # TensorStore's words for a value cut short


def delete_the_manifest(step_dir: pathlib.Path) -> str:
    """Deletes the array store's manifest (OCDBT's root: without it no array is found)."""
    (step_dir / "state" / "manifest.ocdbt").unlink()
    return f"{step_dir / 'state' / 'manifest.ocdbt'} is missing"


def empty_the_folder(step_dir: pathlib.Path) -> str:
    shutil.rmtree(step_dir)
    step_dir.mkdir()
    return f"{step_dir / 'state'} is missing"


DAMAGE = {"truncated": truncate_a_data_file, "manifest deleted": delete_the_manifest,
          "emptied": empty_the_folder}


def one_error_line(result) -> str:
    """The single `error:` line a failed command printed last; fails unless it is exactly
    that (no traceback, no second error line)."""
    report = jobs.output(result)
    assert result.returncode != 0, report
    assert "Traceback" not in result.stderr, report
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().splitlines()[-1] == errors[0], report
    return errors[0]


def model_flag(module: str) -> str:
    """The flag that names the model to load in `gpt1_jax/cli/<module>.py` (`--init_from`,
    or `--workdir` where a command still spells it so)."""
    source = (jobs.REPO / "gpt1_jax" / "cli" / f"{module}.py").read_text()
    return "init_from" if 'DEFINE_string("init_from"' in source else "workdir"


# --- 1. a resume falls back past a damaged newest step -----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGE)
def test_a_resume_moves_a_damaged_newest_step_aside_and_ends_as_a_resume_from_the_step_before(
        corpus, env, trained, resumed_from_4, tmp_path, kind):
    workdir = copy_of(trained, tmp_path)
    checkpoints = workdir / "checkpoints"
    intact = {step: checksums(checkpoints / str(step)) for step in (2, 4)}
    cause = DAMAGE[kind](checkpoints / "6")
    damaged = checksums(checkpoints / "6")

    result = jobs.run(job_args(corpus, workdir, "--config.train.stop_at_step=8"), env)
    report = jobs.output(result)
    assert jobs.resumed_from(result.stdout) == 4, report
    [warning] = [line for line in result.stderr.splitlines() if "moved it aside" in line]
    assert f"checkpoint {checkpoints / '6'}" in warning and cause in warning, report
    assert f"moved it aside to {checkpoints / '6.damaged'}, resuming from step 4" in warning, report
    # Moved, not deleted nor changed; no longer a step for orbax or for the job.
    assert checksums(checkpoints / "6.damaged") == damaged
    assert jobs.finished_steps(workdir) == [2, 4, 6, 8]
    assert {step: checksums(checkpoints / str(step)) for step in (2, 4)} == intact
    for step in (6, 8):
        jobs.assert_same_state(jobs.saved_state(resumed_from_4, step), jobs.saved_state(workdir, step))
    assert sorted(jobs.losses(workdir)) == list(range(1, 9))  # the history before step 4 kept
    assert jobs.losses(workdir) == jobs.losses(resumed_from_4)


@pytest.mark.slow
def test_a_step_without_its_checkpoint_metadata_file_still_restores_and_is_kept(corpus, env, trained, tmp_path):
    # Orbax's `_CHECKPOINT_METADATA` (timestamps) is not needed to restore: not damage.
    workdir = copy_of(trained, tmp_path)
    (workdir / "checkpoints" / "6" / "_CHECKPOINT_METADATA").unlink()
    result = jobs.run(job_args(corpus, workdir, "--config.train.stop_at_step=8"), env)
    assert jobs.resumed_from(result.stdout) == 6 and "moved it aside" not in result.stderr
    assert jobs.finished_steps(workdir) == [2, 4, 6, 8]


@pytest.mark.slow
def test_when_no_step_restores_one_error_line_names_each_and_nothing_moves(corpus, env, trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    checkpoints = workdir / "checkpoints"
    truncate_a_data_file(checkpoints / "6")
    delete_the_manifest(checkpoints / "4")
    empty_the_folder(checkpoints / "2")
    before = checksums(checkpoints)
    line = one_error_line(jobs.run(job_args(corpus, workdir, "--config.train.stop_at_step=8"), env,
                                   expect_ok=False))
    assert line.startswith(f"error: no checkpoint in {checkpoints} can be restored: step 6: ")
    for step in (6, 4, 2):
        assert f"step {step}: checkpoint {checkpoints / str(step)} " in line
    assert checksums(checkpoints) == before and sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "6"]


# --- 2. the same, in process, on local disk and on gs:// ----------------------------------------

def _state(step: int) -> dict:
    return {"w": jnp.arange(6.0) * step, "b": jnp.full((2, 3), step, jnp.int32)}


@pytest.mark.parametrize("where", ["local", "gs"])
def test_restore_latest_falls_back_and_sets_the_damaged_step_aside(request, tmp_path, where):
    workdir = tmp_path if where == "local" else request.getfixturevalue("gcs_bucket_url")
    checkpoints = rundir.path(workdir) / "checkpoints"
    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=3, async_save=False)
    for step in (1, 2, 3):
        checkpointer.save(step, _state(step), {"index": step}, {"step": step})
    checkpointer.close()
    (checkpoints / "3" / "state" / "manifest.ocdbt").unlink()

    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device),
                                      _state(0))
    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=3, async_save=False)
    step, state, data_state, meta = checkpointer.restore_latest(abstract)
    assert (step, data_state, meta) == (2, {"index": 2}, {"step": 2})
    for key, value in _state(2).items():
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(value))
    names = rundir.list_names(checkpoints)
    assert "3.damaged" in names and "3" not in names
    assert checkpointer.all_steps() == [1, 2] == checkpoint_lib.finished_steps(checkpoints)
    # Step 3 is written afresh; the step set aside neither blocks it nor counts for rotation.
    for step in (3, 4):
        checkpointer.save(step, _state(step), {"index": step}, {"step": step})
    checkpointer.close()
    assert checkpoint_lib.finished_steps(checkpoints) == [2, 3, 4]
    assert "3.damaged" in rundir.list_names(checkpoints)


# --- 3. explicit loading of a damaged step -----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGE)
def test_sampling_from_a_damaged_step_is_one_error_line_naming_it(trained, tmp_path, kind):
    workdir = copy_of(trained, tmp_path)
    step_dir = workdir / "checkpoints" / "6"
    cause = DAMAGE[kind](step_dir)
    result = jobs.run([sys.executable, "-m", "gpt1_jax.cli.sample", f"--{model_flag('sample')}={step_dir}",
                       "--prompt=It was", "--max_new_tokens=2"], expect_ok=False)
    line = one_error_line(result)
    assert str(step_dir) in line and cause in line


@pytest.mark.slow
def test_evaluating_zero_shot_or_fine_tuning_from_a_damaged_step_is_one_error_line(trained, corpus, shared_data,
                                                                                   tmp_path):
    workdir = copy_of(trained, tmp_path)
    step_dir = workdir / "checkpoints" / "6"
    cause = truncate_a_data_file(step_dir)
    before = checksums(workdir / "checkpoints")
    commands = {
        "evaluate_lm": [sys.executable, "-m", "gpt1_jax.cli.evaluate_lm", f"--{model_flag('evaluate_lm')}={step_dir}",
                        f"--text={corpus / 'book.txt'}"],
        # The run's newest step is damaged: its curve cannot be drawn until a resume sets it aside.
        "zero_shot": [sys.executable, "-m", "gpt1_jax.cli.zero_shot", f"--workdir={workdir}",
                      f"--glue_dir={shared_data / 'glue'}", "--max_examples=4"],
        "finetune": [sys.executable, "-m", "gpt1_jax.cli.main", "--config=configs/finetune.py:sst2",
                     f"--workdir={tmp_path / 'finetune'}", f"--config.init_from={step_dir}",
                     f"--config.data.data_dir={shared_data / 'glue'}", "--config.train.progress=False"],
    }
    for name, command in commands.items():
        line = one_error_line(jobs.run(command, expect_ok=False))
        assert str(step_dir) in line and cause in line, name
    assert checksums(workdir / "checkpoints") == before
    assert not (workdir / rundir.ZERO_SHOT_JSON).exists()


def test_reads_abandoned_by_a_failed_restore_stay_out_of_stderr_but_the_main_threads_errors_do_not(
        tmp_path, monkeypatch):
    """TensorStore reports a read that a failed restore abandoned from its own thread, through
    sys.unraisablehook, possibly before the restore's error reaches any handler (CI saw it
    land between a command's traceback-free lines). The filter is in place before the first
    read; the same error from the main thread still reaches the previous hook."""
    import threading
    import types
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    monkeypatch.setattr(checkpoint_lib, "_failed_reads", {"seen": False, "hook": False})
    with checkpoint_lib._reading(tmp_path):
        pass

    def report():
        sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"),
                                                 object=None))
    worker = threading.Thread(target=report)
    worker.start()
    worker.join()
    assert reported == []
    report()
    assert [str(u.exc_value) for u in reported] == ["Event loop is closed"]


# --- 4. settings that would keep nothing --------------------------------------------------------

@pytest.mark.parametrize("max_to_keep", [0, -1])
def test_a_checkpointer_that_would_keep_nothing_is_refused_naming_the_key(tmp_path, max_to_keep):
    with pytest.raises(ConfigError, match=f"checkpoint.max_to_keep={max_to_keep}"):
        checkpoint_lib.Checkpointer(tmp_path, max_to_keep=max_to_keep)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_max_to_keep_1_keeps_the_step_just_committed(tmp_path):
    checkpointer = checkpoint_lib.Checkpointer(tmp_path, max_to_keep=1, async_save=False)
    for step in (1, 2, 3):
        checkpointer.save(step, _state(step), {"index": step}, {"step": step})
        checkpointer.wait()
        assert checkpoint_lib.finished_steps(tmp_path / "checkpoints") == [step]
    checkpointer.close()


@pytest.mark.slow
def test_a_job_with_max_to_keep_0_is_refused_and_its_checkpoints_kept(corpus, env, trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = checksums(workdir)
    line = one_error_line(jobs.run(job_args(corpus, workdir, "--config.checkpoint.max_to_keep=0",
                                            "--config.train.stop_at_step=8"), env, expect_ok=False))
    assert "checkpoint.max_to_keep" in line
    now = checksums(workdir)
    assert {path: now.get(path) for path in before if path.startswith("checkpoints/")} == \
        {path: digest for path, digest in before.items() if path.startswith("checkpoints/")}
    assert jobs.finished_steps(workdir) == [2, 4, 6]


# --- 5. analysis outputs are replaced only by a whole new result --------------------------------

def test_zero_shot_with_no_task_says_so_and_leaves_the_earlier_results(tmp_path):
    earlier = {"steps": [2, 4], "tasks": {"sst2": [0.5, 0.625]}, "random": {"sst2": 0.5}}
    rundir.write_json(tmp_path / rundir.ZERO_SHOT_JSON, earlier)
    rundir.write_bytes(tmp_path / rundir.ZERO_SHOT_PNG, zero_shot.plot(earlier))
    before = checksums(tmp_path)
    result = jobs.run([sys.executable, "-m", "gpt1_jax.cli.zero_shot", f"--workdir={tmp_path}"], expect_ok=False)
    line = one_error_line(result)
    assert "nothing to evaluate" in line and "--glue_dir" in line
    assert checksums(tmp_path) == before
    assert json.loads((tmp_path / rundir.ZERO_SHOT_JSON).read_text()) == earlier


def test_loading_a_workdir_reads_the_newest_step_again_when_rotation_deletes_it_under_the_read(
        pretrained, tmp_path, monkeypatch):
    # A run still training commits step 4 and its rotation deletes step 3 while `sample`,
    # `evaluate_lm` or `init_from` (all through loading.load) read step 3.
    from gpt1_jax import loading
    workdir = copy_of(pretrained, tmp_path)
    shutil.rmtree(workdir / rundir.EXPORT)  # not finished: the newest checkpoint is what loads
    checkpoints = workdir / "checkpoints"
    expected = loading.load(checkpoints / "3").params
    real_read = checkpoint_lib.load_params_from_state
    reads = []

    def rotated_then_read(step_dir, *args, **kwargs):
        reads.append(pathlib.Path(step_dir).name)
        if pathlib.Path(step_dir).name == "3":
            shutil.copytree(checkpoints / "3", checkpoints / "4")
            shutil.rmtree(checkpoints / "3")
        return real_read(step_dir, *args, **kwargs)

    monkeypatch.setattr(checkpoint_lib, "load_params_from_state", rotated_then_read)
    loaded = loading.load(workdir)
    assert reads == ["3", "4"] and loaded.source.path.name == "4"
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, expected)
    # A step named explicitly, or one still there, is not looked up again: its error stands.
    shutil.rmtree(checkpoints / "4" / "state")
    with pytest.raises(checkpoint_lib.CheckpointError, match="state is missing"):
        loading.load(workdir)


def test_zero_shot_skips_a_step_rotated_away_while_it_is_read(pretrained, tmp_path, monkeypatch):
    # A run still training deletes its oldest step (rotation) between the listing and the read.
    from gpt1_jax import loading
    workdir = copy_of(pretrained, tmp_path)
    real_load = loading.load

    def rotated_then_load(step_dir, *args, **kwargs):
        if pathlib.Path(step_dir).name == "1":
            shutil.rmtree(step_dir)
        return real_load(step_dir, *args, **kwargs)

    monkeypatch.setattr(loading, "load", rotated_then_load)
    dprd = tmp_path / "dprd.txt"
    dprd.write_text("The trophy did not fit in the suitcase because it was too big .\nit\ntrophy,suitcase\ntrophy\n")
    said = []
    results = zero_shot.evaluate_run(workdir, zero_shot.ZeroShotData(dprd=zero_shot.read_dprd(dprd)),
                                     batch_size=2, progress=said.append)
    assert results["steps"] == [2, 3] and len(results["tasks"]["dprd"]) == 2
    assert "step 1: deleted by the run's rotation while it was read; skipped" in said
