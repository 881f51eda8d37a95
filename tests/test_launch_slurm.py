"""launch/slurm_gpu.sbatch run with bash as SLURM would run it (SLURM_* set), with stand-in
`srun` and `scontrol` (tests/standins) and a `scancel --signal` that signals srun's tasks:

- a SIGTERM to the batch shell at the "time limit" is forwarded to the tasks, which commit a
  checkpoint and exit 42; the script requeues the job; the requeued run ends bit for bit where
  an uninterrupted one ends;
- `scancel` (SIGTERM to the batch shell and the tasks at once) loses no committed step;
- more than one task per node is refused; requeues stop at the limit; 1 is never requeued;
  a container image goes to srun as pyxis expects.
"""
import json
import os
import random
import signal
import socket
import subprocess

import pytest

import jobs

SCRIPT = ["bash", "launch/slurm_gpu.sbatch"]
STANDINS = jobs.REPO / "tests" / "standins"
# `scancel --signal=SIG JOBID`: the signal to every task of the job's steps (slurmstepd's part).
SCANCEL = """#!/usr/bin/env python3
import os, pathlib, signal, sys
signum = signal.SIGTERM
for arg in sys.argv[1:]:
    if arg.startswith("--signal="):
        signum = getattr(signal, "SIG" + arg.split("=", 1)[1].removeprefix("SIG"))
job = sys.argv[-1]
for pid in (pathlib.Path(os.environ["SLURM_STANDIN_STATE"]) / "tasks" / job).glob("*.pid"):
    try:
        os.kill(int(pid.read_text()), signum)
    except ProcessLookupError:
        pass
"""


def _job_id() -> int:
    """A job id whose jax.distributed port (JAX derives it from the id) is free."""
    while True:
        job = random.randrange(10**5, 10**6)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", job % 2**12 + 65535 - 2**12 + 1))
                return job
            except OSError:
                continue


@pytest.fixture
def slurm(tmp_path):
    """(environment of a 2-node batch job, the stand-ins' state folder)."""
    state = tmp_path / "slurm"
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "scancel").write_text(SCANCEL)
    (tools / "scancel").chmod(0o755)
    env = {**jobs.env(1), **jobs.compilation_cache(tmp_path / "xla"),
           "PATH": f"{tools}:{STANDINS}:{os.environ['PATH']}", "SLURM_STANDIN_STATE": str(state),
           "SLURM_JOB_ID": str(_job_id()), "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_GPUS_ON_NODE": "1", "SLURM_CPUS_PER_TASK": "1",
           "SLURM_SUBMIT_DIR": str(jobs.REPO)}
    env.pop("SLURM_RESTART_COUNT", None)
    return env, state


def requeues(state) -> list[str]:
    path = state / "requeued"
    return path.read_text().splitlines() if path.exists() else []


def srun_calls(state) -> list[dict]:
    path = state / "srun.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def script(env, workdir, *flags, restart=None, **extra):
    env = {**env, **extra}
    if restart is not None:
        env["SLURM_RESTART_COUNT"] = str(restart)
    return subprocess.Popen([*SCRIPT, str(workdir), *flags], cwd=jobs.REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process, timeout=400):
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stdout, stderr


def test_more_than_one_task_per_node_is_refused_before_srun(slurm, tmp_path):
    env, state = slurm
    status, stdout, stderr = finish(script(env, tmp_path / "run", SLURM_JOB_NUM_NODES="1"))
    assert status == 1
    assert stderr.strip().splitlines() == [
        "error: 2 tasks on 1 node(s): this job runs one task per node, which drives all of the node's GPUs; "
        "submit with --ntasks-per-node=1"]
    status, _, stderr = finish(script(env, tmp_path / "run", SLURM_NTASKS_PER_NODE="2"))
    assert status == 1 and stderr.startswith("error: ")
    assert srun_calls(state) == []


@pytest.mark.parametrize("exit_status, restart, requeued", [(42, 0, True), (42, 19, True), (42, 20, False),
                                                           (1, 0, False), (0, 0, False), (137, 0, False)])
def test_only_a_resume_me_exit_is_requeued_and_only_up_to_the_limit(slurm, tmp_path, exit_status, restart, requeued):
    env, state = slurm
    status, stdout, _ = finish(script(env, tmp_path / "run", restart=restart, SRUN_STANDIN_EXIT=str(exit_status)))
    assert status == exit_status  # the script's own status is the job's
    assert requeues(state) == ([f"{env['SLURM_JOB_ID']} {restart}"] if requeued else [])
    if exit_status == 42 and not requeued:
        assert "GPT1_JAX_MAX_REQUEUES=20" in stdout


def test_a_container_image_and_per_task_logs_go_to_srun(slurm, tmp_path):
    env, state = slurm
    workdir = tmp_path / "runs" / "gpt1"
    finish(script(env, workdir, "--config=configs/tiny.py", SRUN_STANDIN_EXIT="0",
                  GPT1_JAX_CONTAINER_IMAGE="ghcr.io/x/gpt1-jax:cuda"))
    (call,) = srun_calls(state)
    assert call["options"]["--container-image"] == "ghcr.io/x/gpt1-jax:cuda"
    assert f"{tmp_path / 'runs'}:{tmp_path / 'runs'}" in call["options"]["--container-mounts"]
    assert call["options"]["--output"] == f"{workdir}/logs/slurm-{env['SLURM_JOB_ID']}.0/task-%t.log"
    assert call["command"][:4] == ["python", "-m", "gpt1_jax.cli.main", "--config=configs/tiny.py"]
    assert "--config.distributed.local_device_ids=0" in call["command"]


STEPS = 40
JOB = [*jobs.TINY_MODEL, "--config=configs/tiny.py", f"--config.train.num_steps={STEPS}",
       "--config.train.batch_size=8", "--config.train.log_every_steps=1", "--config.train.eval_batches=1",
       "--config.train.eval_every_steps=0", "--config.checkpoint.every_steps=5",
       "--config.optimizer.warmup_steps=2", "--config.data.val_fraction=0.1", "--config.train.progress=False",
       "--config.distributed.heartbeat_timeout_secs=20"]


@pytest.mark.slow
def test_a_time_limit_requeues_and_a_scancel_loses_no_committed_step_and_the_run_ends_as_if_uninterrupted(
        slurm, corpus, tmp_path):
    env, state = slurm
    flags = [*JOB, f"--config.data.text_files={corpus / 'book.txt'}", f"--config.data.cache_dir={corpus / 'cache'}"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    # The time limit: SIGTERM to the batch shell only (--signal=B:TERM@150).
    first = script(env, interrupted, *flags)
    jobs.wait_for(lambda: any(r.get("step", 0) >= 3 for r in jobs.metric_records(interrupted)), first, poll=0.2)
    first.send_signal(signal.SIGTERM)
    status, stdout, stderr = finish(first)
    assert status == 42, stdout + stderr[-3000:]
    committed = jobs.finished_steps(interrupted)
    assert committed and committed[-1] < STEPS
    assert requeues(state) == [f"{env['SLURM_JOB_ID']} 0"] and "requeueing (restart 1 of at most 20)" in stdout
    job_logs = interrupted / "logs" / f"slurm-{env['SLURM_JOB_ID']}.0"
    assert sorted(p.name for p in job_logs.iterdir()) == ["task-0.log", "task-1.log"]
    assert f"SIGTERM: checkpointed step {committed[-1]}, exiting" in (job_logs / "task-1.log").read_text()

    # The requeued job, cancelled with `scancel`: SIGTERM to the batch shell and every task at once.
    second = script(env, interrupted, *flags, restart=1)
    jobs.wait_for(lambda: max(jobs.finished_steps(interrupted)) > committed[-1], second, poll=0.2)
    before = jobs.finished_steps(interrupted)
    second.send_signal(signal.SIGTERM)
    subprocess.run(["scancel", "--signal=TERM", env["SLURM_JOB_ID"]], env=env, check=True)
    status, stdout, stderr = finish(second)
    assert status == 42, stdout + stderr[-3000:]
    after = jobs.finished_steps(interrupted)
    assert max(after) >= max(before), (before, after)  # what was committed stays committed
    resumed_log = (interrupted / "logs" / f"slurm-{env['SLURM_JOB_ID']}.1" / "task-0.log").read_text()
    assert jobs.resumed_from(resumed_log) == committed[-1]

    # Requeued once more, it finishes; an uninterrupted job ends at the same state and losses.
    status, stdout, stderr = finish(script(env, interrupted, *flags, restart=2))
    assert status == 0 and "gpt1-jax: finished" in stdout, stdout + stderr[-3000:]
    env["SLURM_JOB_ID"] = str(_job_id())
    status, stdout, stderr = finish(script(env, straight, *flags))
    assert status == 0, stdout + stderr[-3000:]
    assert len(requeues(state)) == 2  # the time limit's and the scancel's; none after the finished ones
    jobs.assert_same_state(jobs.saved_state(straight, STEPS), jobs.saved_state(interrupted, STEPS))
    assert jobs.losses(interrupted) == jobs.losses(straight)
    assert sorted(jobs.losses(straight)) == list(range(1, STEPS + 1))
