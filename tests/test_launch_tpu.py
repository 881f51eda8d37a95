"""launch/tpu.py against a simulated Cloud TPU (tests/standins/gcloud): queued resources, a
stock-out, refusals before anything is created or deleted, a job that dies at start-up, and a
2-worker pod on the local GCS server that is preempted mid-run, recreated and relaunched by
the supervisor, ending bit for bit where an uninterrupted 2-process run ends.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

import jobs
from gpt1_jax.storage import rundir

STANDINS = jobs.REPO / "tests" / "standins"
LAUNCHER = [sys.executable, "launch/tpu.py"]


def launcher_module():
    """launch/tpu.py imported (launch/ is not a package: its folder goes on sys.path)."""
    if str(jobs.REPO / "launch") not in sys.path:
        sys.path.insert(0, str(jobs.REPO / "launch"))
    import tpu
    return tpu


@pytest.fixture
def cloud(tmp_path):
    """(environment for the launcher, the stand-in's state folder): gcloud simulated, a
    project and zone configured, an ssh agent holding a key."""
    state = tmp_path / "gcloud"
    state.mkdir()
    (state / "standin.json").write_text(json.dumps({"venv": str(jobs.REPO / ".venv"), "waits": 1}))
    tools = tmp_path / "bin"
    tools.mkdir()
    ssh_add = tools / "ssh-add"  # an agent that holds a key
    ssh_add.write_text("#!/bin/sh\necho '256 SHA256:x google_compute_engine (ED25519)'\n")
    ssh_add.chmod(0o755)
    env = {**os.environ, "PATH": f"{STANDINS}:{tools}:{os.environ['PATH']}", "GCLOUD_STANDIN_STATE": str(state),
           "CLOUDSDK_CORE_PROJECT": "gpt1-test", "CLOUDSDK_COMPUTE_ZONE": "us-central2-b",
           "SSH_AUTH_SOCK": str(tmp_path / "agent.sock"), "PYTHONUNBUFFERED": "1"}
    return env, state


@pytest.mark.parametrize("name, expected", [
    ("v4-8", ("v4-8", "tpu-ubuntu2204-base", 1)), ("v4-32", ("v4-32", "tpu-ubuntu2204-base", 4)),
    ("v5p-8", ("v5p-8", "v2-alpha-tpuv5", 1)), ("v5p-128", ("v5p-128", "v2-alpha-tpuv5", 16)),
    ("v5e-8", ("v5litepod-8", "v2-alpha-tpuv5-lite", 1)), ("v5litepod-16", ("v5litepod-16", "v2-alpha-tpuv5-lite", 4)),
    ("v6e-4", ("v6e-4", "v2-alpha-tpuv6e", 1)), ("v6e-256", ("v6e-256", "v2-alpha-tpuv6e", 64))])
def test_each_generation_gets_its_runtime_image_and_its_host_count(name, expected):
    # v4 and v5p name TensorCores (2 a chip), v5e and v6e chips; 4 chips a host, up to 8 on one.
    tpu = launcher_module()
    tpu_slice = tpu.parse_slice(name)
    assert (tpu_slice.accelerator_type, tpu_slice.runtime, tpu_slice.hosts) == expected


def launcher(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHER, *args], cwd=jobs.REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def calls(state) -> list[list[str]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def count(state, *words) -> int:
    return sum(1 for call in calls(state) if call[:len(words)] == list(words))


def node_state(state, name):
    path = state / "nodes" / name / "node.json"
    return json.loads(path.read_text())["state"] if path.exists() else None


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, jobs.output(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), jobs.output(result)
    return lines[0]


def test_a_stock_out_waits_and_asks_again(cloud):
    env, state = cloud
    (state / "standin.json").write_text(json.dumps({"stockouts": 2, "waits": 1}))
    result = launcher(env, "create", "--name=pod", "--type=v4-16", "--spot", "--poll-secs=0.01")
    assert result.returncode == 0, jobs.output(result)
    assert result.stdout.count("stock-out") == 2
    assert count(state, "compute", "tpus", "queued-resources", "create") == 3
    creates = [c for c in calls(state) if c[:4] == ["compute", "tpus", "queued-resources", "create"]]
    assert all("--spot" in c and "--runtime-version=tpu-ubuntu2204-base" in c for c in creates)
    assert node_state(state, "pod") == "READY"
    assert len(list((state / "nodes" / "pod").glob("worker-*"))) == 2


def test_a_runtime_version_given_replaces_the_generations_image(cloud):
    env, state = cloud
    result = launcher(env, "create", "--name=pod", "--type=v6e-4", "--runtime-version=v2-alpha-tpuv6e-next",
                      "--poll-secs=0.01")
    assert result.returncode == 0, jobs.output(result)
    create, = [c for c in calls(state) if c[:4] == ["compute", "tpus", "queued-resources", "create"]]
    assert "--runtime-version=v2-alpha-tpuv6e-next" in create and "--accelerator-type=v6e-4" in create


def test_a_queued_resource_that_is_not_active_in_time_is_an_error_and_stays_queued(cloud):
    env, state = cloud
    (state / "standin.json").write_text(json.dumps({"waits": 10**6}))
    result = launcher(env, "create", "--name=pod", "--type=v5e-16", "--poll-secs=0.01", "--create-timeout=0.2")
    assert "is not ACTIVE after --create-timeout=0.2 s (state WAITING_FOR_RESOURCES)" in one_error_line(result)
    create, = [c for c in calls(state) if c[:4] == ["compute", "tpus", "queued-resources", "create"]]
    assert "--accelerator-type=v5litepod-16" in create and "--runtime-version=v2-alpha-tpuv5-lite" in create
    assert count(state, "compute", "tpus", "queued-resources", "delete") == 0


def _preempted_node_holding_data(env, state):
    """A node that was preempted, its worker's disk holding a file."""
    assert launcher(env, "create", "--name=pod", "--type=v4-16", "--poll-secs=0.01").returncode == 0
    subprocess.run(["gcloud", "_preempt", "pod", "--grace=1"], env=env, check=True)
    marker = state / "nodes" / "pod" / "worker-0" / "data.txt"
    marker.write_text("kept")
    before = len(calls(state))
    return marker, before


@pytest.mark.parametrize("job_flags, waits", [([], 90), (["--config.train.grace_period_secs=300"], 315),
                                              (["--config.train.grace_period_secs", "120.5"], 136)])
def test_stop_waits_for_the_grace_period_the_job_will_use_before_its_sigkill(job_flags, waits):
    tpu = launcher_module()
    script = tpu.worker_script(tpu.job_command(job_flags, "gs://b/run"), "gs://b/run", False, 30)
    assert f"\nstop_wait_secs={waits}\n" in script
    assert 'seq "$stop_wait_secs"' in script and "kill -KILL" in script


@pytest.mark.parametrize("case", ["unknown type", "no ssh agent", "agent without keys", "local workdir for a pod",
                                  "no project", "grace period not a number"])
def test_refusals_are_one_line_before_anything_is_created_or_deleted(cloud, case):
    env, state = cloud
    marker, before = _preempted_node_holding_data(env, state)
    args = ["run", "--name=pod", "--type=v4-16", "--workdir=gs://bucket/run", "--poll-secs=0.01"]
    expected = {"unknown type": "--type=v3-8: unknown TPU accelerator type",
                "no ssh agent": "no ssh agent (SSH_AUTH_SOCK is unset)",
                "agent without keys": "the ssh agent holds no key (The agent has no identities.)",
                "local workdir for a pod": "--workdir=runs/pod: a v4-16 has 2 hosts",
                "no project": "no project: pass --project=PROJECT",
                "grace period not a number": "--config.train.grace_period_secs=1m: not a number of seconds"}[case]
    if case == "unknown type":
        args[2] = "--type=v3-8"
    elif case == "no ssh agent":
        env = {k: v for k, v in env.items() if k != "SSH_AUTH_SOCK"}
    elif case == "agent without keys":
        tools = pathlib.Path(state).parent / "bin"
        (tools / "ssh-add").write_text("#!/bin/sh\necho 'The agent has no identities.'\nexit 1\n")
    elif case == "local workdir for a pod":
        args[3] = "--workdir=runs/pod"
    elif case == "no project":
        env = {k: v for k, v in env.items() if k != "CLOUDSDK_CORE_PROJECT"}
    else:
        args += ["--", "--config.train.grace_period_secs=1m"]
    assert expected in one_error_line(launcher(env, *args))
    made = calls(state)[before:]
    assert not [c for c in made if c[3:4] in (["create"], ["delete"], ["ssh"], ["scp"])], made
    assert marker.read_text() == "kept" and node_state(state, "pod") == "PREEMPTED"


@pytest.mark.slow
def test_a_job_that_dies_during_start_up_is_a_one_line_error_and_the_vm_is_kept(cloud, tmp_path):
    env, state = cloud
    result = launcher(env, "run", "--name=one", "--type=v4-8", f"--workdir={tmp_path / 'run'}", "--no-install",
                      "--poll-secs=0.5", "--", "--config=configs/tiny.py", "--config.distributed.initialize=False",
                      f"--config.data.text_files={tmp_path / 'missing' / 'book.txt'}", timeout=300)
    line = one_error_line(result)
    assert "the job failed during start-up (before its first step) on worker 0 (exit status 1): error: " in line
    assert "missing" in line
    assert node_state(state, "one") == "READY"  # its disk (and the job's log) is kept
    assert "error: " in (state / "nodes" / "one" / "worker-0" / "gpt1_jax_worker.log").read_text()
    assert count(state, "compute", "tpus", "queued-resources", "delete") == 0

    # A bug (no `error:` line) is named by its traceback's last line.
    result = launcher(env, "run", "--name=one", "--type=v4-8", f"--workdir={tmp_path / 'run'}", "--no-install",
                      "--poll-secs=0.5", "--", "--config=configs/tiny.py", timeout=300)
    assert "(exit status 1): ValueError: coordinator_address should be defined." in one_error_line(result)


@pytest.mark.slow
def test_status_logs_and_stop_follow_a_job_and_supervise_ends_on_a_failure_a_retry_would_not_fix(
        cloud, corpus, tmp_path):
    env, state = cloud
    env.update(jobs.env(1), PATH=env["PATH"])
    job = ["--", "--config=configs/tiny.py", *jobs.SMALL_JOB, "--config.distributed.initialize=False",
           "--config.train.num_steps=100000", "--config.checkpoint.every_steps=1000", "--config.train.progress=False",
           f"--config.data.text_files={corpus / 'book.txt'}", f"--config.data.cache_dir={corpus / 'cache'}"]
    workdir = tmp_path / "run"
    started = launcher(env, "run", "--name=one", "--type=v4-8", f"--workdir={workdir}", "--no-install",
                       "--poll-secs=0.5", "--log-every-secs=1", *job, timeout=300)
    assert started.returncode == 0 and "the job is training" in started.stderr + started.stdout, jobs.output(started)

    status = launcher(env, "status", "--name=one", "--poll-secs=0.5")
    assert status.returncode == 0 and "TPU VM one: READY" in status.stdout, jobs.output(status)
    [worker] = [line for line in status.stdout.splitlines() if line.strip().startswith("worker 0:")]
    assert "running, step " in worker, status.stdout
    logs = launcher(env, "logs", "--name=one", "--worker=0", "--lines=5")
    assert logs.returncode == 0 and len(logs.stdout.strip().splitlines()) == 5, jobs.output(logs)
    # While it runs, the worker's log is copied beside the run every --log-every-secs.
    copied = lambda: [p for p in (workdir / "logs").glob("*/worker-0.log") if "step" in p.read_text()]  # noqa: E731
    jobs.wait_for(copied, timeout=60, poll=0.2)
    assert "running" in launcher(env, "status", "--name=one").stdout

    stopped = launcher(env, "stop", "--name=one")
    assert stopped.returncode == 0 and "stopped the job on every worker" in stopped.stderr + stopped.stdout
    # The job got SIGTERM, committed its step and exited "resume me".
    worker_log = state / "nodes" / "one" / "worker-0" / "gpt1_jax_worker.log"
    assert "the job exited with status 42" in worker_log.read_text(), worker_log.read_text()[-2000:]
    assert jobs.finished_steps(workdir), "the stop committed no checkpoint"
    deleted = launcher(env, "stop", "--name=one", "--delete")
    assert deleted.returncode == 0 and node_state(state, "one") is None
    assert "TPU VM one: absent" in launcher(env, "status", "--name=one").stdout

    # A job that fails (here: its data is missing) is not relaunched: one line, exit 1, one creation.
    creations = count(state, "compute", "tpus", "queued-resources", "create")
    result = launcher(env, "supervise", "--name=two", "--type=v4-8", f"--workdir={tmp_path / 'run2'}",
                      "--no-install", "--poll-secs=0.5", "--max-relaunches=3", *job[:-2],
                      f"--config.data.text_files={tmp_path / 'missing' / 'book.txt'}", timeout=300)
    assert "the job failed during start-up" in one_error_line(result)
    assert count(state, "compute", "tpus", "queued-resources", "create") == creations + 1
    assert "relaunch" not in result.stderr + result.stdout


@pytest.mark.slow
def test_supervise_relaunches_at_most_max_relaunches_times_then_ends_with_the_checkpoint_intact(
        cloud, corpus, tmp_path):
    env, state = cloud
    env.update(jobs.env(1), PATH=env["PATH"])
    workdir = tmp_path / "run"
    supervisor = subprocess.Popen(
        [*LAUNCHER, "supervise", "--name=one", "--type=v4-8", "--spot", f"--workdir={workdir}", "--no-install",
         "--poll-secs=0.5", "--notice-secs=20", "--max-relaunches=1", "--", "--config=configs/tiny.py",
         *jobs.SMALL_JOB, "--config.distributed.initialize=False", "--config.train.num_steps=100000",
         "--config.checkpoint.every_steps=1000", "--config.train.progress=False",
         f"--config.data.text_files={corpus / 'book.txt'}", f"--config.data.cache_dir={corpus / 'cache'}"],
        cwd=jobs.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        last_step = 0
        for launch in (1, 2):  # each launch trains a few steps past the last, then is preempted
            jobs.wait_for(lambda launch=launch, after=last_step: max(jobs.losses(workdir), default=0) >= after + 3
                          and count(state, "compute", "tpus", "queued-resources", "create") == launch,
                          supervisor, poll=0.2)
            subprocess.run(["gcloud", "_preempt", "one"], env=env, check=True, timeout=60)
            last_step = max(jobs.losses(workdir))  # what the preempted launch logged, to its SIGTERM
        stdout, stderr = supervisor.communicate(timeout=300)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    result = subprocess.CompletedProcess(supervisor.args, supervisor.returncode, stdout, stderr)
    assert "still not finished after --max-relaunches=1" in one_error_line(result)
    assert "relaunch 1 of at most 1" in stdout and "relaunch 2" not in stdout, stdout
    assert count(state, "compute", "tpus", "queued-resources", "create") == 2
    # Each preemption's SIGTERM committed the step it reached: the second launch's is kept.
    assert jobs.finished_steps(workdir)[-1] >= last_step


STEPS = 40
POD_JOB = [*jobs.TINY_MODEL, f"--config.train.num_steps={STEPS}", "--config.train.batch_size=8",
           "--config.train.log_every_steps=1", "--config.train.eval_batches=1",
           "--config.train.eval_every_steps=0", "--config.checkpoint.every_steps=5",
           "--config.optimizer.warmup_steps=2", "--config.data.val_fraction=0.1",
           "--config.train.progress=False", "--config.distributed.num_processes=2",
           "--config.distributed.heartbeat_timeout_secs=60"]
# What launch/tpu.py adds to every worker's command (the pod's flags).
POD_FLAGS = ["--config.distributed.initialize=True", "--config.mesh.data=-1",
             "--config.train.grace_period_secs=25", "--config.model.attention=einsum"]


@pytest.mark.slow
def test_the_supervisor_recreates_a_preempted_pod_and_the_run_ends_as_if_never_interrupted(
        cloud, corpus, gcs_server, gcs_bucket_url, tmp_path):
    env, state = cloud
    (state / "standin.json").write_text(json.dumps({"venv": str(jobs.REPO / ".venv"), "waits": 1,
                                                    "stockouts": 1}))
    env.update(jobs.env(1), **jobs.compilation_cache(tmp_path / "xla"), PATH=env["PATH"])
    data = [f"--config.data.text_files={corpus / 'book.txt'}", f"--config.data.cache_dir={corpus / 'cache'}"]
    workdir = f"{gcs_bucket_url}/pod"
    address = f"--config.distributed.coordinator_address=127.0.0.1:{jobs.free_port()}"
    supervisor = subprocess.Popen(
        [*LAUNCHER, "supervise", "--name=pod", "--type=v4-16", "--spot", f"--workdir={workdir}", "--no-install",
         "--poll-secs=2", "--log-every-secs=30", "--notice-secs=20", "--", "--config=configs/tiny.py", *POD_JOB,
         *data, address, "--config.distributed.process_id={worker}"],
        cwd=jobs.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        jobs.wait_for(lambda: any(r.get("step", 0) >= 3 for r in jobs.metric_records(workdir)), supervisor,
                      poll=0.2)
        subprocess.run(["gcloud", "_preempt", "pod"], env=env, check=True, timeout=60)
        output, _ = supervisor.communicate(timeout=600)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    assert supervisor.returncode == 0, output[-4000:]
    assert "stock-out" in output and "TPU VM pod is PREEMPTED" in output and "relaunch 1 of" in output, output
    assert "the run finished" in output
    assert count(state, "compute", "tpus", "queued-resources", "delete") == 2  # the stock-out, the preempted
    summary = rundir.read_json(rundir.path(workdir) / rundir.SUMMARY)
    assert summary["finished"] and summary["step"] == STEPS

    # Each launch left both workers' logs in the bucket; the second one resumed.
    logs = rundir.path(workdir) / "logs"
    launches = sorted(p.name for p in logs.iterdir())
    assert len(launches) == 2, launches
    for launch in launches:
        assert sorted(p.name for p in (logs / launch).iterdir()) == ["worker-0.log", "worker-1.log"]
    first, second = [(logs / launch / "worker-0.log").read_text() for launch in launches]
    assert "the job exited with status 42" in first, first[-2000:]
    resumed = jobs.resumed_from(second)
    assert resumed is not None and 0 < resumed < STEPS, second[-2000:]
    assert "the job exited with status 0" in (logs / launches[1] / "worker-1.log").read_text()

    # An uninterrupted 2-process run of the same command.
    straight = tmp_path / "straight"
    port = jobs.free_port()
    processes = [jobs.start(jobs.argv("configs/tiny.py", straight, *POD_FLAGS, *POD_JOB, *data,
                                      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                                      f"--config.distributed.process_id={i}"),
                            {**jobs.env(1), **jobs.compilation_cache(tmp_path / "xla")})
                 for i in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[:3000] + "\n...\n" + stderr[-3000:]
    jobs.assert_same_state(jobs.saved_state(straight, STEPS), jobs.saved_state(workdir, STEPS))
    assert jobs.losses(workdir) == jobs.losses(straight)
    assert sorted(jobs.losses(workdir)) == list(range(1, STEPS + 1))
