"""launch/gke.py's JobSet: it validates against the JobSet CRD's own schema (vendored in
tests/data/jobset/, checked strictly: an unknown field is an error, as `kubectl apply
--validate=strict` makes it), its restart rules follow the exit-code contract, and its
container command, run here for completion indexes 0 and 1 against the local GCS server,
trains, stops with 42 on SIGTERM, and resumes when restarted.
"""
import copy
import json
import os
import signal
import subprocess
import sys

import jsonschema
import pytest

import jobs
from gpt1_jax.train import stopping

SCHEMA = jobs.REPO / "tests" / "data" / "jobset" / "jobset_v1alpha2_schema.json"
GKE = [sys.executable, "launch/gke.py", "render"]


def strict(schema):
    """The CRD schema with unknown fields refused wherever it lists the known ones (the API
    server prunes them silently; a typo in a manifest must fail here instead)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())["schema"]))


def render(*args, expect_ok=True) -> dict | subprocess.CompletedProcess:
    result = subprocess.run([*GKE, *args], cwd=jobs.REPO, capture_output=True, text=True, timeout=60)
    if not expect_ok:
        return result
    assert result.returncode == 0, jobs.output(result)
    return json.loads(result.stdout)


def pod_spec(manifest) -> dict:
    (replicated,) = manifest["spec"]["replicatedJobs"]
    return replicated["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("where", [["--tpu=v5e-16"], ["--gpus=8", "--nodes=2"]])
def test_the_manifest_validates_against_the_jobset_crd_and_restarts_only_on_resume_me(validator, where):
    manifest = render("--image=gpt1-jax:1", "--workdir=gs://b/run", *where, "--", "--config=configs/gpt1.py",
                      "--config.train.batch_size=64")
    errors = [e.message for e in validator.iter_errors(manifest)]
    assert errors == []
    job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    pod = pod_spec(manifest)
    hosts = 4 if where == ["--tpu=v5e-16"] else 2
    assert job["parallelism"] == job["completions"] == hosts and job["completionMode"] == "Indexed"
    # Exit 1 fails the Job by its pod failure policy, and that reason fails the JobSet; any other
    # failure (42, a preemption, a kill) exhausts backoffLimit 0, which the JobSet restarts.
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [stopping.EXIT_FAILED]
    assert stopping.EXIT_RESUME not in rule["onExitCodes"]["values"] and job["backoffLimit"] == 0
    (jobset_rule,) = manifest["spec"]["failurePolicy"]["rules"]
    assert jobset_rule["action"] == "FailJobSet" and jobset_rule["onJobFailureReasons"] == ["PodFailurePolicy"]
    assert manifest["spec"]["failurePolicy"]["maxRestarts"] == 20
    (container,) = pod["containers"]
    grace = [f for f in container["command"] if f.startswith("--config.train.grace_period_secs=")]
    assert pod["terminationGracePeriodSeconds"] > int(grace[-1].split("=")[1])
    assert "--config.distributed.num_processes=" + str(hosts) in container["command"]
    if where == ["--tpu=v5e-16"]:
        assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                       "cloud.google.com/gke-tpu-topology": "4x4"}
        assert container["resources"]["limits"] == {"google.com/tpu": 4}
    else:
        assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
        assert "--config.distributed.local_device_ids=0,1,2,3,4,5,6,7" in container["command"]


@pytest.mark.parametrize("job_flags, grace", [([], 25), (["--config.train.grace_period_secs=120"], 120),
                                              (["--config.train.grace_period_secs", "37.5"], 37.5)])
def test_the_pods_grace_outlasts_the_grace_period_the_job_will_use(job_flags, grace):
    # The job's own flag comes last, so the job stops within it: the kubelet's SIGKILL must wait longer.
    pod = pod_spec(render("--image=i", "--workdir=gs://b/run", "--tpu=v4-16", "--", *job_flags))
    (container,) = pod["containers"]
    command = container["command"]
    used = [command[i + 1] if flag == "--config.train.grace_period_secs" else flag.split("=", 1)[1]
            for i, flag in enumerate(command) if flag.split("=", 1)[0] == "--config.train.grace_period_secs"]
    assert float(used[-1]) == grace
    assert pod["terminationGracePeriodSeconds"] >= grace + 10


def test_the_strict_schema_refuses_what_the_crd_does_not_know(validator):
    manifest = render("--image=i", "--workdir=gs://b/run", "--tpu=v4-16")
    for mutate in (lambda m: m["spec"].update(maxRestarts=3),  # belongs under failurePolicy
                   lambda m: m["spec"]["failurePolicy"]["rules"][0].update(action="Restart"),
                   lambda m: m["spec"]["replicatedJobs"][0]["template"]["spec"].update(backoffLimit="0")):
        wrong = copy.deepcopy(manifest)
        mutate(wrong)
        assert list(validator.iter_errors(wrong)), wrong


@pytest.mark.parametrize("args, message", [
    (["--tpu=v3-8", "--workdir=gs://b/r"], "error: --tpu=v3-8: unknown TPU accelerator type"),
    (["--tpu=v5e-12", "--workdir=gs://b/r"], "error: --tpu=v5e-12: 12 chips has no GKE topology here"),
    (["--tpu=v4-16", "--workdir=/data/run"], "error: --workdir=/data/run: pods share no disk"),
    (["--tpu=v4-16", "--workdir=gs://b/r", "--", "--config.train.grace_period_secs=soon"],
     "error: --config.train.grace_period_secs=soon: not a number of seconds"),
    (["--tpu=v4-16", "--workdir=gs://b/r", "--", "--config.train.grace_period_secs=0"],
     "error: --config.train.grace_period_secs=0: a pod is killed after its termination grace period"),
])
def test_refusals_are_one_line(args, message):
    result = render("--image=i", *args, expect_ok=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr


def _pods(container, port, extra_env):
    """The container's command for completion indexes 0 and 1, as the JobSet runs it, here."""
    env = {e["name"]: e["value"] for e in container["env"]}
    env["GPT1_JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"  # `python` is this environment's
    return [jobs.start(container["command"], {**extra_env, **env, "JOB_COMPLETION_INDEX": str(i), "PATH": path})
            for i in range(2)]


@pytest.mark.slow
def test_the_container_command_trains_as_two_pods_stops_with_42_and_resumes(corpus, gcs_bucket_url, tmp_path):
    workdir = f"{gcs_bucket_url}/gke"
    steps = 30
    manifest = render("--image=i", f"--workdir={workdir}", "--tpu=v4-16", "--", "--config=configs/tiny.py",
                      *jobs.TINY_MODEL, f"--config.train.num_steps={steps}", "--config.train.batch_size=8",
                      "--config.train.log_every_steps=1", "--config.train.eval_batches=1",
                      "--config.train.eval_every_steps=0", "--config.checkpoint.every_steps=5",
                      "--config.data.val_fraction=0.1", "--config.train.progress=False",
                      f"--config.data.text_files={corpus / 'book.txt'}")
    (container,) = pod_spec(manifest)["containers"]
    pod_env = {**jobs.env(1), **jobs.compilation_cache(tmp_path / "xla")}
    pods = _pods(container, jobs.free_port(), pod_env)
    try:
        jobs.wait_for(lambda: any(r.get("step", 0) >= 3 for r in jobs.metric_records(workdir)), *pods, poll=0.2)
        for pod in pods:  # the kubelet stops every pod of a preempted slice with SIGTERM
            pod.send_signal(signal.SIGTERM)
        results = [pod.communicate(timeout=300) for pod in pods]
    finally:
        for pod in pods:
            if pod.poll() is None:
                pod.kill()
                pod.communicate()
    assert [pod.returncode for pod in pods] == [stopping.EXIT_RESUME] * 2, [e[-2000:] for _, e in results]
    committed = jobs.finished_steps(workdir)
    assert committed and committed[-1] < steps

    # The JobSet restarts both pods: they resume and finish.
    pods = _pods(container, jobs.free_port(), pod_env)
    results = [pod.communicate(timeout=300) for pod in pods]
    assert [pod.returncode for pod in pods] == [0, 0], [e[-2000:] for _, e in results]
    assert jobs.resumed_from(results[0][0]) == committed[-1]
    assert sorted(jobs.losses(workdir)) == list(range(1, steps + 1))


def test_the_dockerfile_installs_extras_that_setup_py_defines():
    dockerfile = (jobs.REPO / "Dockerfile").read_text()
    setup = (jobs.REPO / "setup.py").read_text()
    assert "tpu | cuda) pip install \".[$ACCELERATOR]\"" in dockerfile
    for extra in ("tpu", "cuda"):
        assert f'"{extra}": [' in setup, extra
    ignored = (jobs.REPO / ".dockerignore").read_text().split()
    copied = {word for line in dockerfile.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]}
    for needed in ("gpt1_jax", "configs", "launch", "setup.py"):
        assert needed in copied and needed not in ignored, needed
