"""Hosts that agree: two `jax.distributed` processes on 127.0.0.1 act as one job.

- SIGTERM to one process only: both stop after the same step, save it together and exit
  42 ("resume me"); the resumed run ends bit for bit where an uninterrupted one does (on gs:// and on a
  shared local folder).
- An error on one process ends the other within seconds, with the first one's message.
- A second job on a live job's gs:// workdir is refused; once the job is dead (kill -9)
  and its lease has expired, it is allowed.
- A mesh whose `tensor` axis spans the processes gets the same batches (and losses) as
  one process driving the same mesh: rows follow the batch sharding, not process ids.
"""
import signal
import time

import pytest

import jobs
from gpt1_jax.train import stopping

pytestmark = pytest.mark.slow

LEASE_TTL_SECS = 3
SMALL = [*jobs.TINY_MODEL, "--config.train.batch_size=8", "--config.train.log_every_steps=1",
         "--config.train.eval_batches=1", "--config.train.eval_every_steps=0",
         "--config.optimizer.warmup_steps=2", "--config.data.val_fraction=0.1"]


def _argv(corpus, workdir, *overrides):
    return jobs.argv("configs/tiny.py", workdir, *SMALL, f"--config.data.text_files={corpus / 'book.txt'}",
                     f"--config.data.cache_dir={corpus / 'cache'}", *overrides)


def start_pair(corpus, workdir, *overrides, devices=2, per_process=((), ())):
    """Two processes of `devices` devices each, one job; `per_process[i]` are process i's
    own extra flags."""
    address = f"127.0.0.1:{jobs.free_port()}"
    job_env = jobs.env(devices, GPT1_JAX_LEASE_TTL_SECS=str(LEASE_TTL_SECS))
    return [jobs.start(_argv(corpus, workdir, *overrides, "--config.distributed.initialize=True",
                             f"--config.distributed.coordinator_address={address}",
                             "--config.distributed.num_processes=2",
                             f"--config.distributed.process_id={i}",
                             "--config.distributed.heartbeat_timeout_secs=20", *per_process[i]),
                       job_env)
            for i in range(2)]


def finish(processes, timeout=300) -> list[tuple[int, str, str]]:
    """Each process's (status, stdout, stderr); none is left running."""
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def run_pair(corpus, workdir, *overrides, **kwargs):
    results = finish(start_pair(corpus, workdir, *overrides, **kwargs))
    for i, (status, _, stderr) in enumerate(results):
        assert status == 0, f"process {i}:\n{stderr[-3000:]}"
    return results


@pytest.fixture(params=["gs", "local"])
def shared_workdirs(request, tmp_path):
    """(straight, interrupted) workdirs on gs:// or on a local folder both processes see."""
    if request.param == "local":
        return tmp_path / "straight", tmp_path / "interrupted"
    request.getfixturevalue("gcs_server")
    root = f"gs://gpt1-jax-test/pods-{time.time_ns()}"
    return f"{root}/straight", f"{root}/interrupted"


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_resume_is_exact(corpus, shared_workdirs):
    straight, interrupted = shared_workdirs
    schedule = "--config.train.num_steps=100000"  # the lr schedule's length; runs stop earlier
    processes = start_pair(corpus, interrupted, schedule, "--config.checkpoint.every_steps=100000")
    jobs.wait_for(lambda: any(r.get("step", 0) >= 3 for r in jobs.metric_records(interrupted)), *processes)
    processes[1].send_signal(signal.SIGTERM)  # one process only, as a preempted host
    results = finish(processes)
    assert [status for status, _, _ in results] == [stopping.EXIT_RESUME] * 2, [e[-2000:] for _, _, e in results]
    saved = jobs.finished_steps(interrupted)
    assert len(saved) == 1 and saved[0] >= 3, saved
    for _, _, stderr in results:  # both processes stopped after that same step
        assert f"SIGTERM: checkpointed step {saved[0]}, exiting" in stderr

    # Resumed a few steps on, it ends where a run that was never interrupted ends.
    end = f"--config.train.stop_at_step={saved[0] + 3}"
    resumed = run_pair(corpus, interrupted, schedule, end)
    assert jobs.resumed_from(resumed[0][1]) == saved[0]
    run_pair(corpus, straight, schedule, end)
    jobs.assert_same_state(jobs.saved_state(straight, saved[0] + 3),
                           jobs.saved_state(interrupted, saved[0] + 3))
    losses = {r["step"]: r["loss"] for r in jobs.metric_records(straight) if "loss" in r}
    assert {r["step"]: r["loss"] for r in jobs.metric_records(interrupted) if "loss" in r} == losses


def test_an_error_on_one_process_ends_both_promptly(corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # Process 1 alone cannot read the token cache (its cache_dir lies under a file), while
    # process 0 goes on into the first collective of the run setup.
    processes = start_pair(corpus, tmp_path / "run", "--config.train.num_steps=5",
                           per_process=((), (f"--config.data.cache_dir={blocker / 'cache'}",)))
    ended = {}
    deadline = time.monotonic() + 240
    while len(ended) < 2 and time.monotonic() < deadline:
        for i, process in enumerate(processes):
            if i not in ended and process.poll() is not None:
                ended[i] = time.monotonic()
        time.sleep(0.05)
    (status0, _, stderr0), (status1, _, stderr1) = finish(processes)
    assert len(ended) == 2 and ended[0] - ended[1] < 15, ended  # not the 20 s heartbeat, nor a hang
    assert status1 == 1 and "error: " in stderr1 and "a_file" in stderr1, stderr1[-2000:]
    assert status0 == 1, stderr0[-2000:]
    assert "error: process 1: " in stderr0 and "a_file" in stderr0, stderr0[-2000:]


def test_a_second_job_on_a_live_gcs_workdir_is_refused_until_the_job_is_dead(corpus, gcs_server):
    workdir = f"gs://gpt1-jax-test/lock-{time.time_ns()}"
    processes = start_pair(corpus, workdir, "--config.train.num_steps=100000",
                           "--config.checkpoint.every_steps=100000")
    jobs.wait_for(lambda: jobs.metric_records(workdir), *processes)
    second = _argv(corpus, workdir, "--config.train.num_steps=2")
    second_env = jobs.env(1, GPT1_JAX_LEASE_TTL_SECS=str(LEASE_TTL_SECS))
    refused = jobs.run(second, second_env, expect_ok=False)
    assert refused.returncode == 1
    assert f"error: workdir {workdir} is in use by another job (pid {processes[0].pid} " in refused.stderr
    for process in processes:
        process.send_signal(signal.SIGKILL)
    finish(processes)
    time.sleep(LEASE_TTL_SECS + 1)  # the dead job's lease expires
    jobs.run(second, second_env)


def test_a_tensor_axis_across_processes_is_fed_like_one_process(corpus, tmp_path):
    mesh = ["--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=2",
            "--config.train.num_steps=3"]
    one = tmp_path / "one"
    jobs.run(_argv(corpus, one, *mesh), jobs.env(2))
    two = tmp_path / "two"
    run_pair(corpus, two, *mesh, devices=1)  # each process drives one half of the tensor axis
    expected = {r["step"]: r["loss"] for r in jobs.metric_records(one) if "loss" in r}
    got = {r["step"]: r["loss"] for r in jobs.metric_records(two) if "loss" in r}
    assert got.keys() == expected.keys() == {1, 2, 3}
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5)
