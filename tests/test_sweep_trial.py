"""The one-trial wrapper every launcher runs (`python -m gpt1_jax.cli.sweep_trial SPEC`): the
job's output goes to the trial's log, its end to an exit record (status, error line, seconds),
each start to a line of `.starts`; a SLURM array task picks its spec by index; SIGTERM reaches
the job, whose own exit status is recorded."""
import json
import os
import signal
import subprocess
import sys
import time

import jobs

# A job that says it is ready, then on SIGTERM exits 42 (what the real job does after committing).
RESUMABLE = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")


def spec(directory, name, code) -> dict:
    return {"argv": [sys.executable, "-c", code], "log": str(directory / f"{name}.log"),
            "exit": str(directory / f"{name}.exit"), "starts": str(directory / f"{name}.starts")}


def write(directory, name, value) -> str:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(value))
    return str(path)


def trial(*args, **env):
    return [sys.executable, "-m", "gpt1_jax.cli.sweep_trial", *args], {**os.environ, **env}


def test_a_failed_job_leaves_its_error_line_and_status_and_an_array_task_runs_its_own_spec(tmp_path):
    failing = spec(tmp_path, "t0", "print('loading'); print('error: data.data_dir=x: no such directory')\n"
                                   "import sys; sys.exit(1)")
    passing = spec(tmp_path, "t1", "print('done')")
    batch = write(tmp_path, "batch", {"trials": [write(tmp_path, "t0", failing), write(tmp_path, "t1", passing)]})
    for index, expected_status in ((1, 0), (0, 1)):
        argv, env = trial(batch, SLURM_ARRAY_TASK_ID=str(index))
        assert subprocess.run(argv, cwd=jobs.REPO, env=env, timeout=60).returncode == expected_status
    assert json.loads((tmp_path / "t0.exit").read_text())["error"] == "error: data.data_dir=x: no such directory"
    record = json.loads((tmp_path / "t1.exit").read_text())
    assert record["status"] == 0 and record["error"] == "" and record["seconds"] >= 0
    assert (tmp_path / "t1.log").read_text() == "done\n"
    for name in ("t0", "t1"):
        [start] = (tmp_path / f"{name}.starts").read_text().splitlines()
        assert json.loads(start)["pid"] > 0


def test_sigterm_reaches_the_job_and_its_resume_status_is_recorded(tmp_path):
    argv, env = trial(write(tmp_path, "t", spec(tmp_path, "t", RESUMABLE)))
    runner = subprocess.Popen(argv, cwd=jobs.REPO, env=env)
    log = tmp_path / "t.log"
    deadline = time.time() + 60
    while not (log.exists() and "ready" in log.read_text()):
        assert time.time() < deadline and runner.poll() is None, "the job never started"
        time.sleep(0.1)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 42
    assert json.loads((tmp_path / "t.exit").read_text())["status"] == 42


def test_a_wrong_command_line_prints_the_usage_and_exits_2():
    argv, env = trial()
    result = subprocess.run(argv, cwd=jobs.REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "sweep_trial SPEC" in result.stderr
