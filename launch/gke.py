#!/usr/bin/env python3
"""Pre-training on GKE: a JobSet manifest for a TPU slice or a GPU node pool, rendered from
the image, the slice, the workdir and the job's flags. Standard library only.

    python launch/gke.py render --image=us-docker.pkg.dev/P/R/gpt1-jax:tpu --tpu=v5e-16 \
        --workdir=gs://bucket/runs/gpt1 -- --config=configs/gpt1.py > jobset.json
    kubectl apply -f jobset.json          # JSON is YAML too

    python launch/gke.py render --image=...:cuda --gpus=8 --nodes=2 --workdir=gs://... -- ...

One pod a host, one container a pod, all pods joined by jax.distributed (process id = the
Job's completion index, coordinator = pod 0 through the JobSet's headless service). Restarts
follow gpt1_jax/train/stopping.py's exit codes: a pod that exits 42 (stopped after committing its
checkpoint) or is preempted fails its Job (backoffLimit 0), and the JobSet restarts every pod
(up to --max-restarts), which resume from the checkpoint; a pod that exits 1 (an error a
rerun will not fix) fails the Job through its podFailurePolicy, and the JobSet fails with no
restart. terminationGracePeriodSeconds exceeds the job's grace period, so a preempted pod
commits before the kubelet's SIGKILL.

A sweep trial (gpt1_jax/sweeps/launchers.py's `gke` launcher) is a JobSet of one pod that runs
`python -m gpt1_jax.cli.sweep_trial SPEC` and is never restarted by the JobSet (the sweep
controller requeues it):

    python launch/gke.py trial --name=sweep-trial-000-x1y2 --image=...:cuda --gpus=1 \
        --volume-claim=sweep-state /shared/sweep/_sweep/trials/trial_000.json
"""
import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpu as tpu_lib  # noqa: E402  (launch/ is not a package; its slice table is shared)

EXIT_FAILED = 1
CONTAINER = "gpt1-jax"
REPLICATED_JOB = "workers"
COORDINATOR_PORT = 8476
# GKE's names for the TPU generations (cloud.google.com/gke-tpu-accelerator).
GKE_TPU = {"v4": "tpu-v4-podslice", "v5litepod": "tpu-v5-lite-podslice", "v5p": "tpu-v5p-slice",
           "v6e": "tpu-v6e-slice"}
# Chips of a slice -> its topology: 2-D for v5e/v6e, 3-D for v4/v5p.
TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
               512: "8x8x8"}
# The launcher's flags before the user's: every process joins one job.
JOB_FLAGS = ("--config.distributed.initialize=True", "--config.mesh.data=-1", "--config.model.attention=einsum")
# bash -c: the job's flags arrive as "$@", and the per-pod values from the environment.
ENTRY = ('exec python -m gpt1_jax.cli.main "$@" --config.distributed.process_id="$JOB_COMPLETION_INDEX" '
         '--config.distributed.coordinator_address="$GPT1_JAX_COORDINATOR_ADDRESS"')


def tpu_placement(name: str) -> tuple[int, dict, dict]:
    """(hosts, nodeSelector, per-container resources) of a TPU slice; LaunchError for one
    without a GKE topology here."""
    tpu = tpu_lib.parse_slice(name, "--tpu")
    generation, count = tpu.accelerator_type.rsplit("-", 1)
    chips = int(count) // 2 if generation in ("v4", "v5p") else int(count)
    topology = (TOPOLOGY_3D if generation in ("v4", "v5p") else TOPOLOGY_2D).get(chips)
    if topology is None:
        raise tpu_lib.LaunchError(f"--tpu={name}: {chips} chips has no GKE topology here")
    selector = {"cloud.google.com/gke-tpu-accelerator": GKE_TPU[generation],
                "cloud.google.com/gke-tpu-topology": topology}
    return tpu.hosts, selector, {"google.com/tpu": chips // tpu.hosts}


def render(name: str, image: str, workdir: str, job_flags: list[str], hosts: int, node_selector: dict,
           resources: dict, max_restarts: int = 20, grace_period_secs: float = tpu_lib.GRACE_PERIOD_SECS,
           local_device_ids: str = "") -> dict:
    """The JobSet (a dict, as `kubectl apply` reads it from JSON)."""
    config = next((f for f in job_flags if f.startswith("--config=")), "--config=configs/gpt1.py")
    rest = [f for f in job_flags if not f.startswith("--config=")]
    # The job's own flag comes after the launcher's, so the job uses it: the pod's grace follows.
    grace_period_secs = job_grace_period(rest, grace_period_secs)
    flags = [config, f"--workdir={workdir}", *JOB_FLAGS, f"--config.distributed.num_processes={hosts}",
             f"{tpu_lib.GRACE_FLAG}={grace_period_secs:g}", *rest]
    if local_device_ids:
        flags.append(f"--config.distributed.local_device_ids={local_device_ids}")
    container = {
        "name": CONTAINER, "image": image, "workingDir": "/app",
        "command": ["bash", "-c", ENTRY, CONTAINER, *flags],
        "env": [{"name": "GPT1_JAX_COORDINATOR_ADDRESS",
                 "value": f"{name}-{REPLICATED_JOB}-0-0.{name}:{COORDINATOR_PORT}"},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "ports": [{"containerPort": COORDINATOR_PORT}],
        "resources": {"limits": resources},
    }
    return _jobset(name, container, hosts, node_selector, grace_period_secs, max_restarts, annotations={
        # One slice (one node pool) for the one replicated Job.
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"})


def job_grace_period(job_flags: list[str], default: float) -> float:
    """The grace period the job will use (tpu.job_grace_period), which must be a limit: the
    kubelet kills a pod at the end of its termination grace period whatever the job does."""
    seconds = tpu_lib.job_grace_period(job_flags, default)
    if seconds <= 0:  # the job's "no limit"
        raise tpu_lib.LaunchError(f"{tpu_lib.GRACE_FLAG}={seconds:g}: a pod is killed after its termination "
                                  f"grace period, so the job needs a limit of its own (> 0)")
    return seconds


def render_trial(name: str, image: str, spec: str, node_selector: dict, resources: dict, python: str = "python",
                 volume_claim: str = "", mount_path: str = "", service_account: str = "",
                 grace_period_secs: float = tpu_lib.GRACE_PERIOD_SECS) -> dict:
    """A sweep trial's JobSet: one pod running the trial runner on SPEC, no restarts. The runner
    writes the trial's log and exit record beside SPEC, so the pod mounts the sweep's state folder
    (`volume_claim`, a ReadWriteMany claim, at `mount_path`, default SPEC's folder's parent's
    parent: the state folder) where the controller reads it."""
    container = {
        "name": CONTAINER, "image": image, "workingDir": "/app",
        "command": [python, "-m", "gpt1_jax.cli.sweep_trial", spec],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "GPT1_JAX_JOBSET", "value": name}],
        "resources": {"limits": resources},
    }
    pod = {}
    if volume_claim:
        mount_path = mount_path or os.path.dirname(os.path.dirname(spec))
        container["volumeMounts"] = [{"name": "sweep-state", "mountPath": mount_path}]
        pod["volumes"] = [{"name": "sweep-state", "persistentVolumeClaim": {"claimName": volume_claim}}]
    if service_account:  # e.g. Workload Identity's, for gs:// workdirs
        pod["serviceAccountName"] = service_account
    return _jobset(name, container, 1, node_selector, grace_period_secs, 0, annotations={}, pod=pod)


def _jobset(name: str, container: dict, hosts: int, node_selector: dict, grace_period_secs: int,
            max_restarts: int, annotations: dict, pod: dict | None = None) -> dict:
    """One replicated Job of `hosts` indexed pods running `container`, restarted together."""
    pod = {"restartPolicy": "Never", "nodeSelector": node_selector, "containers": [container],
           # The job commits within its grace period; the kubelet's SIGKILL must come after.
           "terminationGracePeriodSeconds": math.ceil(grace_period_secs) + 15, **(pod or {})}
    job = {
        "parallelism": hosts, "completions": hosts, "completionMode": "Indexed",
        # Any failed pod fails the Job, and the JobSet restarts all pods together: the
        # processes of one jax.distributed job cannot be replaced one at a time.
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": [EXIT_FAILED]}}]},
        "template": {"spec": pod},
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": name, **({"annotations": annotations} if annotations else {})},
        "spec": {
            "failurePolicy": {"maxRestarts": max_restarts, "rules": [
                # Exit 1 (the podFailurePolicy above): a failure a restart will not fix.
                {"name": "fail-on-job-errors", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]},
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": job}}],
        },
    }


def main(argv=None) -> int:
    top = argparse.ArgumentParser(prog="launch/gke.py", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("render", help="print the JobSet manifest (JSON, which kubectl reads as YAML)")
    sub.add_argument("--name", default="gpt1-jax", help="the JobSet's name (also its pods' DNS subdomain)")
    sub.add_argument("--image", required=True, help="built from the Dockerfile (--build-arg ACCELERATOR=tpu|cuda)")
    sub.add_argument("--workdir", required=True, help="a gs:// run directory every pod sees")
    where = sub.add_mutually_exclusive_group(required=True)
    where.add_argument("--tpu", help="a TPU slice: v4-16, v5e-16 (v5litepod-16), v5p-16, v6e-16, ...")
    where.add_argument("--gpus", type=int, help="GPUs a node (one pod a node drives them all)")
    sub.add_argument("--nodes", type=int, default=1, help="GPU nodes")
    sub.add_argument("--gpu-type", default="nvidia-h100-80gb", help="cloud.google.com/gke-accelerator")
    sub.add_argument("--max-restarts", type=int, default=20)
    sub.add_argument("--grace-period-secs", type=int, default=tpu_lib.GRACE_PERIOD_SECS,
                     help="the job's train.grace_period_secs (the job's own --config.train.grace_period_secs wins)")
    sub.add_argument("job_flags", nargs="*", help="after --: the job's flags (--config=..., --config.KEY=...)")
    trial = commands.add_parser("trial", help="print a sweep trial's JobSet: one pod running the trial runner")
    trial.add_argument("--name", required=True, help="the JobSet's name: lowercase letters, digits, '-'")
    trial.add_argument("--image", required=True)
    placement = trial.add_mutually_exclusive_group()
    placement.add_argument("--tpu", help="a single-host TPU slice: v5e-4, v5e-8, v6e-4, ...")
    placement.add_argument("--gpus", type=int, help="GPUs for the trial (none: a CPU pod)")
    trial.add_argument("--gpu-type", default="nvidia-h100-80gb", help="cloud.google.com/gke-accelerator")
    trial.add_argument("--volume-claim", default="", help="a ReadWriteMany claim holding the sweep's state folder")
    trial.add_argument("--mount-path", default="", help="where the pod mounts it (default: the state folder)")
    trial.add_argument("--service-account", default="", help="the pod's Kubernetes service account")
    trial.add_argument("--python", default="python", help="the image's Python")
    trial.add_argument("--grace-period-secs", type=int, default=tpu_lib.GRACE_PERIOD_SECS,
                       help="the job's train.grace_period_secs")
    trial.add_argument("spec", help="the trial spec the sweep controller wrote, as the pod sees it")
    args = top.parse_args(argv)
    if args.command == "trial":
        return _print_trial(args)
    try:
        if not args.workdir.startswith("gs://"):
            raise tpu_lib.LaunchError(f"--workdir={args.workdir}: pods share no disk; use a gs:// run directory")
        if args.tpu:
            hosts, selector, resources = tpu_placement(args.tpu)
            device_ids = ""
        else:
            hosts, selector = args.nodes, {"cloud.google.com/gke-accelerator": args.gpu_type}
            resources = {"nvidia.com/gpu": args.gpus}
            device_ids = ",".join(str(i) for i in range(args.gpus))
        manifest = render(args.name, args.image, args.workdir, args.job_flags, hosts, selector, resources,
                          args.max_restarts, args.grace_period_secs, device_ids)
    except tpu_lib.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    json.dump(manifest, sys.stdout, indent=2)
    print()
    return 0


def _print_trial(args) -> int:
    try:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", args.name):
            raise tpu_lib.LaunchError(f"--name={args.name}: a JobSet name here is at most 40 lowercase "
                                      f"letters, digits and '-' (its pods' names add to it)")
        if args.tpu:
            hosts, selector, resources = tpu_placement(args.tpu)
            if hosts != 1:
                raise tpu_lib.LaunchError(f"--tpu={args.tpu}: a trial runs on one host; this slice has {hosts}")
        elif args.gpus:
            selector, resources = {"cloud.google.com/gke-accelerator": args.gpu_type}, {"nvidia.com/gpu": args.gpus}
        else:
            selector, resources = {}, {}
        manifest = render_trial(args.name, args.image, args.spec, selector, resources, args.python,
                                args.volume_claim, args.mount_path, args.service_account, args.grace_period_secs)
    except tpu_lib.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    json.dump(manifest, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
