"""The exit-code contract of a stop (gpt1_jax/train/stopping.py): a signal whose grace period runs
out before the job reached its first step (tokenizing, compiling, restoring) exits 42, "resume me",
and says that the job was starting up, not that a checkpoint failed."""
import subprocess
import sys
import textwrap

import jobs
from gpt1_jax.train import stopping

STARTING_UP = textwrap.dedent("""
    import os, signal, sys, time
    from gpt1_jax.train import stopping
    with stopping.StopRequested(grace_period_secs=0.3) as stop:
        if sys.argv[1] == "in_loop":
            stop.at_step(1)           # the loop has begun: a checkpoint would now be owed
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)                # "tokenizing": far longer than the grace period
""")


def _stopped(where: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STARTING_UP, where], cwd=jobs.REPO, env=jobs.env(1),
                          capture_output=True, text=True, timeout=120)


def test_a_signal_during_start_up_exits_resume_and_says_the_job_was_starting():
    done = _stopped("start_up")
    assert done.returncode == stopping.EXIT_RESUME, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("stopped: SIGTERM: the job was still starting up") and "checkpoint was not" not in line


def test_a_grace_period_that_ends_inside_the_loop_names_the_uncommitted_checkpoint():
    done = _stopped("in_loop")
    assert done.returncode == stopping.EXIT_RESUME, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "stopped: SIGTERM: the checkpoint was not committed within the grace period")

