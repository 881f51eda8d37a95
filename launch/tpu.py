#!/usr/bin/env python3
"""Pre-training on Cloud TPU VMs that outlives them: queued resources, a health check, logs in
the workdir, and a supervisor that relaunches after a preemption. Standard library only (it
runs on a laptop without JAX); everything on Google Cloud goes through `gcloud`.

    python launch/tpu.py supervise --name=gpt1 --zone=us-central2-b --type=v4-32 --spot \
        --workdir=gs://bucket/runs/gpt1 -- --config=configs/gpt1.py [--config.KEY=VALUE ...]

Commands (each takes --name, --zone, --project; zone and project default to gcloud's config):
  create     the TPU VM through a queued resource (--spot, --best-effort or on-demand), waiting
             until it is ACTIVE (--create-timeout); a stock-out waits and retries
  run        create the VM if needed (a PREEMPTED / FAILED / TERMINATED one is deleted and
             recreated), ship the code, start the job on every worker, and wait until step 1
             is logged or the job has died, saying which
  supervise  `run`, then watch: relaunch after a preemption or a "resume me" exit (42) until
             the run's summary.json says finished, at most --max-relaunches times; a failure
             a rerun will not fix (exit 1) ends it
  status     the node's state, each worker's job and the last logged step
  logs       the end of each worker's log (also copied to WORKDIR/logs/LAUNCH/worker-I.log)
  stop       SIGTERM to the job on every worker (it commits a checkpoint, exits 42);
             --delete then deletes the TPU VM and its queued resource

Exit status: 0 done (or: training, for `run`), 1 an error (one `error:` line), 2 a usage error.
The job's own codes (gpt1_jax/train/stopping.py): 0 finished, 42 stopped after committing its
checkpoint (rerun to resume), 1 a failure a rerun will not fix, 128+N killed by signal N.
"""
import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace

# gpt1_jax/train/stopping.py's contract, restated: this file must not import JAX.
EXIT_FINISHED, EXIT_RESUME, EXIT_FAILED = 0, 42, 1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The runtime image each TPU generation needs (cloud.google.com/tpu/docs/runtimes).
RUNTIME_IMAGES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
                  "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
# v4 and v5p count TensorCores (2 a chip), v5e and v6e chips; a host holds 4 chips, and
# v5e/v6e slices of up to 8 chips are one host.
CHIPS_PER_HOST = 4
BROKEN_NODE_STATES = ("PREEMPTED", "FAILED", "TERMINATED", "STOPPED", "SUSPENDED")
QUEUED_WAITING = ("ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES", "CREATING")
STOCKOUT_WORDS = ("capacity", "stockout", "stock-out", "resource_exhausted", "resources are not available")
GRACE_FLAG = "--config.train.grace_period_secs"
GRACE_PERIOD_SECS = 25  # the launchers' default for the job: within GCE spot's 30 s notice
# Flags every worker's job gets before the user's: the pod is found by JAX itself.
JOB_FLAGS = ("--config.distributed.initialize=True", "--config.mesh.data=-1",
             f"{GRACE_FLAG}={GRACE_PERIOD_SECS}", "--config.model.attention=einsum")
TAR_EXCLUDES = {".git", ".venv", "runs", "build", "__pycache__", ".pytest_cache", ".ruff_cache"}


class LaunchError(Exception):
    """A problem the user can fix: printed as one `error:` line, exit status 1."""


@dataclass(frozen=True)
class Slice:
    accelerator_type: str   # as gcloud spells it: v4-32, v5litepod-16, v5p-8, v6e-16
    runtime: str
    hosts: int


def parse_slice(name: str, flag: str = "--type") -> Slice:
    """The slice an accelerator type names; LaunchError (naming `flag`) for one this launcher
    does not know."""
    match = re.fullmatch(r"(v4|v5litepod|v5e|v5p|v6e)-(\d+)", name)
    if not match:
        known = ", ".join(f"{g}-N" for g in RUNTIME_IMAGES)
        raise LaunchError(f"{flag}={name}: unknown TPU accelerator type (known: {known}; v5e-N means v5litepod-N)")
    generation, count = match.group(1), int(match.group(2))
    generation = "v5litepod" if generation == "v5e" else generation
    if generation in ("v4", "v5p"):
        hosts = max(1, count // (2 * CHIPS_PER_HOST))
    else:
        hosts = 1 if count <= 8 else count // CHIPS_PER_HOST
    return Slice(f"{generation}-{count}", RUNTIME_IMAGES[generation], hosts)


def gcloud(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`gcloud ARGS`, its output captured; LaunchError with gcloud's own message when it fails."""
    try:
        result = subprocess.run(["gcloud", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise LaunchError("gcloud is not on PATH: install the Google Cloud CLI "
                          "(cloud.google.com/sdk/docs/install)") from None
    if check and result.returncode != 0:
        raise LaunchError(f"gcloud {' '.join(args[:4])}: {_last_line(result.stderr) or result.returncode}")
    return result


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Node:
    """One TPU VM and the queued resource of the same name that creates it."""

    def __init__(self, args):
        self.name = args.name
        self.project = args.project or gcloud("config", "get-value", "project", check=False).stdout.strip()
        self.zone = args.zone or gcloud("config", "get-value", "compute/zone", check=False).stdout.strip()
        if not self.project or self.project == "(unset)":
            raise LaunchError("no project: pass --project=PROJECT or run `gcloud config set project PROJECT`")
        if not self.zone or self.zone == "(unset)":
            raise LaunchError("no zone: pass --zone=ZONE or run `gcloud config set compute/zone ZONE`")
        self.poll_secs = args.poll_secs

    @property
    def where(self) -> list[str]:
        return [f"--zone={self.zone}", f"--project={self.project}"]

    def state(self) -> str | None:
        """The TPU VM's state (READY, CREATING, PREEMPTED, ...); None when there is none."""
        result = gcloud("compute", "tpus", "tpu-vm", "describe", self.name, *self.where,
                        "--format=value(state)", check=False)
        if result.returncode != 0:
            if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
                return None
            raise LaunchError(f"gcloud compute tpus tpu-vm describe {self.name}: {_last_line(result.stderr)}")
        return result.stdout.strip()

    def queued(self) -> tuple[str | None, str]:
        """The queued resource's state and its failure message; (None, "") when there is none."""
        result = gcloud("compute", "tpus", "queued-resources", "describe", self.name, *self.where,
                        "--format=json", check=False)
        if result.returncode != 0:
            return None, ""
        found = json.loads(result.stdout or "{}").get("state", {})
        message = ((found.get("failedData") or {}).get("error") or {}).get("message", "")
        return found.get("state"), message

    def delete(self) -> None:
        """Deletes the queued resource and its TPU VM (a preempted VM cannot be restarted, only
        replaced); only the VM's disk goes, which holds the code and copies of the logs."""
        if self.queued()[0] is not None:
            gcloud("compute", "tpus", "queued-resources", "delete", self.name, *self.where, "--force", "--quiet")
        elif self.state() is not None:
            gcloud("compute", "tpus", "tpu-vm", "delete", self.name, *self.where, "--quiet")

    def create(self, tpu: Slice, provisioning: str, timeout_secs: float) -> None:
        """Requests the VM through a queued resource and waits until it is ACTIVE and the VM
        READY; a stock-out (waiting for resources, or failed for capacity) waits and retries."""
        deadline = time.monotonic() + timeout_secs
        while True:
            if self.queued()[0] is None:
                flags = {"spot": ["--spot"], "best-effort": ["--best-effort"], "on-demand": []}[provisioning]
                say(f"requesting {tpu.accelerator_type} ({provisioning}) as queued resource {self.name}")
                gcloud("compute", "tpus", "queued-resources", "create", self.name, f"--node-id={self.name}",
                       *self.where, f"--accelerator-type={tpu.accelerator_type}",
                       f"--runtime-version={tpu.runtime}", *flags)
            last = None
            while True:
                state, message = self.queued()
                if state != last:
                    say(f"queued resource {self.name}: {state}" + (f" ({message})" if message else ""))
                    last = state
                if state == "ACTIVE" and self.state() == "READY":
                    return
                if state == "FAILED":
                    if not any(word in message.lower() for word in STOCKOUT_WORDS):
                        raise LaunchError(f"queued resource {self.name} failed: {message or 'no reason given'}")
                    say(f"stock-out; deleting the failed request and asking again in {self.poll_secs:g} s")
                    self.delete()
                    break
                if state in ("SUSPENDED", "SUSPENDING"):  # its spot VM was preempted
                    self.delete()
                    break
                if time.monotonic() > deadline:
                    raise LaunchError(f"queued resource {self.name} is not ACTIVE after --create-timeout="
                                      f"{timeout_secs:g} s (state {state}); it stays queued: rerun to keep waiting, "
                                      f"or delete it with `python launch/tpu.py stop --delete --name={self.name}`")
                time.sleep(self.poll_secs)
            time.sleep(self.poll_secs)

    def ensure(self, tpu: Slice, provisioning: str, timeout_secs: float) -> None:
        """A READY VM: the one there, or a new one in place of a PREEMPTED / FAILED / TERMINATED one."""
        state = self.state()
        if state == "READY":
            say(f"TPU VM {self.name} is READY")
            return
        if state in BROKEN_NODE_STATES:
            say(f"TPU VM {self.name} is {state}: deleting it and creating a new one")
            self.delete()
        self.create(tpu, provisioning, timeout_secs)

    def ssh(self, command: str, worker: str = "all", check: bool = True) -> subprocess.CompletedProcess:
        return gcloud("compute", "tpus", "tpu-vm", "ssh", self.name, *self.where, f"--worker={worker}",
                      f"--command={command}", check=check)


def preflight(args, tpu: Slice) -> None:
    """Everything that can be refused before a VM is created or deleted."""
    job_grace_period(args.job_flags, GRACE_PERIOD_SECS)  # a grace period that is not a number of seconds
    if tpu.hosts > 1 and not args.workdir.startswith("gs://"):
        raise LaunchError(f"--workdir={args.workdir}: a {tpu.accelerator_type} has {tpu.hosts} hosts, which "
                          "write checkpoints together: the workdir must be a gs:// bucket they all see")
    if not os.environ.get("SSH_AUTH_SOCK"):
        raise LaunchError("no ssh agent (SSH_AUTH_SOCK is unset): `gcloud ... ssh --worker=all` needs one; run "
                          "`eval $(ssh-agent) && ssh-add ~/.ssh/google_compute_engine`")
    try:
        agent = subprocess.run(["ssh-add", "-l"], capture_output=True, text=True)
    except FileNotFoundError:
        raise LaunchError("ssh-add is not on PATH: install OpenSSH's client") from None
    if agent.returncode != 0:
        raise LaunchError(f"the ssh agent holds no key ({_last_line(agent.stdout + agent.stderr)}): run "
                          "`ssh-add ~/.ssh/google_compute_engine`")


def job_command(job_flags: list[str], workdir: str) -> list[str]:
    """The command every worker runs: the job's flags after the pod's, --config defaulting to GPT-1's."""
    config = next((f for f in job_flags if f.startswith("--config=")), "--config=configs/gpt1.py")
    rest = [f for f in job_flags if not f.startswith("--config=")]
    return [".venv/bin/python", "-m", "gpt1_jax.cli.main", config, f"--workdir={workdir}", *JOB_FLAGS, *rest]


def job_grace_period(job_flags: list[str], default: float) -> float:
    """The grace period the job will use: the last `--config.train.grace_period_secs` among its
    flags (absl takes the last), else `default`; LaunchError for a value that is not a number."""
    value = default
    for i, flag in enumerate(job_flags):
        if flag.startswith(f"{GRACE_FLAG}="):
            value = flag.split("=", 1)[1]
        elif flag == GRACE_FLAG and i + 1 < len(job_flags):
            value = job_flags[i + 1]
    try:
        return float(value)
    except ValueError:
        raise LaunchError(f"{GRACE_FLAG}={value}: not a number of seconds") from None


def worker_script(command: list[str], workdir: str, install: bool, log_every_secs: float) -> str:
    train = " ".join(shlex.quote(word) for word in command)
    # `stop` waits for the job's commit before its SIGKILL: the job's grace period and a margin.
    stop_wait_secs = max(90, math.ceil(job_grace_period(command, GRACE_PERIOD_SECS)) + 15)
    return (f"#!/usr/bin/env bash\n# Written by launch/tpu.py.\ntrain_command=({train})\n"
            f"workdir={shlex.quote(workdir)}\ninstall={int(install)}\nlog_every_secs={log_every_secs:g}\n"
            f"stop_wait_secs={stop_wait_secs}\n" + WORKER_SCRIPT)


# The worker's half: `stop`, `setup`, `start LAUNCH`, `state`. `{worker}` in a job flag
# becomes the worker's number (TPU_WORKER_ID, else the VM's metadata).
WORKER_SCRIPT = r'''set -euo pipefail
code=~/gpt1_jax
log=~/gpt1_jax_worker.log
pidfile=~/gpt1_jax_worker.pid
exitfile=~/gpt1_jax_worker.exit

worker_id() {
    if [[ -n ${TPU_WORKER_ID:-} ]]; then echo "$TPU_WORKER_ID"; return; fi
    curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \
        http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number ||
        hostname
}

py() { PYTHONPATH=$code "$code/.venv/bin/python" "$@"; }

ship_log() {
    # The log into WORKDIR/logs/LAUNCH/, through the job's own storage layer (gs:// or a disk).
    [[ -f $log ]] || return 0
    py -c 'import sys; from gpt1_jax.storage import rundir
rundir.write_bytes(rundir.path(sys.argv[1]) / "logs" / sys.argv[2] / f"worker-{sys.argv[3]}.log",
                   open(sys.argv[4], "rb").read())' "$workdir" "$1" "$(worker_id)" "$log" 2>/dev/null || true
}

stop() {
    # SIGTERM to the whole session `start` made: the job commits a checkpoint and exits 42;
    # SIGKILL if it is still there stop_wait_secs later (at least 90 s, the job's grace + 15 s).
    if [[ -f $pidfile ]]; then
        pid=$(<"$pidfile")
        if kill -TERM -- "-$pid" 2>/dev/null; then
            for _ in $(seq "$stop_wait_secs"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    fi
    # A gpt1_jax process still holding the TPU would keep the next run from opening it.
    for fd in /proc/[0-9]*/fd/*; do
        case $(readlink "$fd" 2>/dev/null) in /dev/accel* | /dev/vfio/[0-9]*) ;; *) continue ;; esac
        pid=${fd#/proc/}; pid=${pid%%/*}
        if grep -qa gpt1_jax "/proc/$pid/cmdline" 2>/dev/null; then
            echo "$(hostname): killing stale gpt1_jax process $pid (it holds the TPU)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # libtpu's lock file outlives a killed process, and the next libtpu then refuses the TPU.
    rm -f /tmp/libtpu_lockfile 2>/dev/null || sudo rm -f /tmp/libtpu_lockfile 2>/dev/null || true
}

setup() {
    mkdir -p "$code"
    find "$code" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
    tar -C "$code" -xzf ~/gpt1_jax.tgz
    if [[ $install == 0 ]]; then return; fi  # the image brings ~/gpt1_jax/.venv
    # uv brings its own CPython 3.11 whatever the image has (3.10 on the Ubuntu 22.04
    # TPU images) and needs no apt, whose lock unattended-upgrades holds after a boot.
    export PATH=~/.local/bin:$PATH
    if ! command -v uv >/dev/null; then
        python3 -m pip install --user --quiet --upgrade uv 2>/dev/null ||
            curl -LsSf https://astral.sh/uv/install.sh | sh
    fi
    if ! "$code/.venv/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        rm -rf "$code/.venv"
        uv venv --python 3.11 "$code/.venv"
    fi
    uv pip install --quiet --python "$code/.venv/bin/python" "$code" 'jax[tpu]==0.10.2'
}

job() {
    # The session leader of one launch: runs the job, ships its log while it runs, and
    # records its exit status. A preemption's SIGTERM reaches the whole session; this shell
    # outlives it (trap) to record the status and ship the log one last time.
    launch=$1
    trap : TERM INT
    ( while sleep "$log_every_secs"; do ship_log "$launch"; done ) &
    shipper=$!
    worker=$(worker_id)
    command=("${train_command[@]//\{worker\}/$worker}")
    cd "$code"
    PYTHONPATH=$code "${command[@]}" < /dev/null &
    child=$!
    while :; do
        status=0; wait "$child" || status=$?
        kill -0 "$child" 2>/dev/null || break
    done
    kill "$shipper" 2>/dev/null || true
    echo "$(date -Is): the job exited with status $status"
    echo "$status" > "$exitfile.tmp" && mv "$exitfile.tmp" "$exitfile"
    ship_log "$launch"
}

start() {
    rm -f "$exitfile"
    if [[ -f $log ]]; then mv -f "$log" "$log.1"; fi  # the previous run's log is kept once
    echo "$(hostname) worker $(worker_id) $(date -Is): launch $1: ${train_command[*]}" > "$log"
    # Detached from the ssh session (setsid, nohup, no terminal), so it outlives it.
    setsid nohup bash ~/gpt1_jax_worker.sh job "$1" >> "$log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "gpt1_jax_worker $(worker_id): started, pid $(<"$pidfile")"
}

state() {
    # One line a worker: its job's state; worker 0 adds the run's progress.
    if [[ -f $exitfile ]]; then job_state=exited:$(<"$exitfile")
    elif [[ -f $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null; then job_state=running
    elif [[ -f $pidfile ]]; then job_state=killed
    else job_state=absent; fi
    progress=""
    if [[ ${1:-} == progress && $(worker_id) == 0 ]]; then
        progress=$(py -c 'import json, sys; from gpt1_jax.storage import rundir
d = rundir.path(sys.argv[1])
m, s = d / rundir.METRICS, d / rundir.SUMMARY
steps = [json.loads(r).get("step", 0) for r in m.read_text().split("\n")[:-1]] if m.exists() else []
finished = s.exists() and json.loads(s.read_text()).get("finished", False)
print("step=%d finished=%d" % (max(steps, default=0), finished))
' "$workdir" 2>/dev/null || echo "step=? finished=?")
    fi
    # The job's last `error:` line, else the last line of a traceback, else its last line.
    last=$(grep -aE '^error: |^[A-Za-z_.]*(Error|Exception|Interrupt)(: |$)' "$log" 2>/dev/null | tail -n 1 || true)
    if [[ -z $last && -f $log ]]; then
        last=$(grep -av -e '^ *$' -e ': the job exited with status ' "$log" | tail -n 1 || true)
    fi
    echo "gpt1_jax_worker $(worker_id): job=$job_state $progress last=${last//$'\n'/ }"
}

case ${1:-} in
    stop | setup | start | job | state) "$@" ;;
    *) echo "usage: $0 stop|setup|start LAUNCH|state" >&2; exit 2 ;;
esac
'''


@dataclass
class WorkerState:
    job: str            # running, exited:CODE, killed, absent
    last: str           # its last `error:` line, else its log's last line
    step: int | None = None
    finished: bool = False

    @property
    def exit_status(self) -> int | None:
        return int(self.job.split(":")[1]) if self.job.startswith("exited:") else None


_STATE_LINE = re.compile(r"gpt1_jax_worker (\S+): job=(\S+)\s+(?:step=(\S+) finished=(\S+)\s+)?last=(.*)")


def worker_states(node: Node, progress: bool = True) -> dict[str, WorkerState] | None:
    """Each worker's job, by worker id (with `progress`, worker 0's has the run's last logged
    step and whether it finished: a Python start on the VM); None when the workers cannot be
    reached."""
    result = node.ssh(f"bash ~/gpt1_jax_worker.sh state{' progress' if progress else ''}", check=False)
    states = {}
    for line in result.stdout.splitlines():
        match = _STATE_LINE.search(line)
        if match:
            worker, job, step, finished, last = match.groups()
            states[worker] = WorkerState(job, last.strip(), int(step) if step and step.isdigit() else None,
                                         finished == "1")
    return states if result.returncode == 0 and states else None


def launch(node: Node, args, tpu: Slice) -> int:
    """Ships the code and the worker script, stops what ran before, starts the job on every
    worker (its logs go to WORKDIR/logs/LAUNCH/); returns the last step logged before it."""
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as stage:
        archive = os.path.join(stage, "gpt1_jax.tgz")
        with tarfile.open(archive, "w:gz", compresslevel=1) as tar:  # mostly text, sent once
            tar.add(REPO, arcname=".", filter=_excluded)
        script = os.path.join(stage, "gpt1_jax_worker.sh")
        with open(script, "w") as f:
            f.write(worker_script(job_command(args.job_flags, args.workdir), args.workdir, args.install,
                                  args.log_every_secs))
        gcloud("compute", "tpus", "tpu-vm", "scp", archive, script, f"{node.name}:", *node.where, "--worker=all")
    # Every worker stopped before any starts: the new processes must not meet an old one.
    node.ssh("bash ~/gpt1_jax_worker.sh stop && bash ~/gpt1_jax_worker.sh setup")
    before = (worker_states(node) or {}).get("0")
    node.ssh(f"bash ~/gpt1_jax_worker.sh start {name}")
    say(f"launch {name} started on {tpu.hosts} worker(s); logs go to {args.workdir}/logs/{name}/")
    return before.step if before and before.step is not None else 0


def _excluded(info: tarfile.TarInfo):
    parts = info.name.split("/")
    return None if any(p in TAR_EXCLUDES or p.endswith(".egg-info") for p in parts) else info


def watch(node: Node, args, until_end: bool, logged_before: int = 0, hosts: int = 1) -> str:
    """Follows a launch until 'training' (a step logged: the last logged step moved away from
    `logged_before`; only when not `until_end`), 'finished', 'ended' (exit 0 before the last
    step) or 'resume' (preempted, stopped with its checkpoint committed, or killed).
    LaunchError for a failure a relaunch will not fix, saying whether it came before the
    first step and quoting the job's error line."""
    started = time.monotonic()
    first_step = None
    unreachable = 0
    while True:
        time.sleep(args.poll_secs)
        state = node.state()
        if state != "READY":
            say(f"TPU VM {node.name} is {state}: preempted")
            return "resume"
        states = worker_states(node, progress=first_step is None)
        if states is not None and first_step is not None and not any(s.job == "running" for s in states.values()):
            states = worker_states(node)  # the end: did the run finish?
        if states is None or len(states) < hosts:
            unreachable += 1
            if unreachable >= 5:
                raise LaunchError(f"the workers of {node.name} did not answer 5 times in a row")
            continue
        unreachable = 0
        lead = states.get("0") or next(iter(states.values()))
        if first_step is None and lead.step and lead.step != logged_before and lead.job == "running":
            first_step = lead.step
            say(f"step {lead.step} logged: the job is training")
            if not until_end:
                return "training"
        codes = {worker: s.exit_status for worker, s in states.items()}
        failed = {w: c for w, c in codes.items() if c is not None and c not in (EXIT_FINISHED, EXIT_RESUME)
                  and c < 128}
        if failed:
            worker, code = sorted(failed.items())[0]
            when = "during start-up (before its first step)" if first_step is None else "while training"
            raise LaunchError(f"the job failed {when} on worker {worker} (exit status {code}): "
                              f"{states[worker].last}")
        if any(s.job == "running" for s in states.values()):
            if first_step is None and time.monotonic() - started > args.start_timeout:
                raise LaunchError(f"no step logged within --start-timeout={args.start_timeout:g} s; see "
                                  f"`python launch/tpu.py logs --name={node.name}`")
            continue
        if all(c == EXIT_FINISHED for c in codes.values()):
            return "finished" if lead.finished else "ended"
        say("the job stopped with its checkpoint committed (or was killed): "
            + ", ".join(f"worker {w}: {s.job}" for w, s in sorted(states.items())))
        return "resume"


def settle(node: Node, notice_secs: float) -> None:
    """After a stop with the VM still READY: a preemption notice (30 s on GCE) may be running
    out, so wait that long for the VM to go before launching on it again."""
    deadline = time.monotonic() + notice_secs
    while time.monotonic() < deadline:
        if node.state() != "READY":
            return
        time.sleep(min(node.poll_secs, 5.0))


def requested_slice(args) -> Slice:
    """The slice `--type` names, with `--runtime-version` instead of its generation's image if given."""
    tpu = parse_slice(args.type)
    return replace(tpu, runtime=args.runtime_version) if args.runtime_version else tpu


def cmd_create(args) -> int:
    tpu = requested_slice(args)
    Node(args).ensure(tpu, args.provisioning, args.create_timeout)
    return 0


def cmd_run(args) -> int:
    tpu = requested_slice(args)
    preflight(args, tpu)
    node = Node(args)
    node.ensure(tpu, args.provisioning, args.create_timeout)
    outcome = watch(node, args, until_end=False, logged_before=launch(node, args, tpu), hosts=tpu.hosts)
    if outcome == "resume":
        raise LaunchError("the job stopped before its first step (preempted?); rerun, or use `supervise`")
    say(f"follow it with `python launch/tpu.py status --name={node.name}` or `... logs`")
    return 0


def cmd_supervise(args) -> int:
    tpu = requested_slice(args)
    preflight(args, tpu)
    node = Node(args)
    for attempt in range(args.max_relaunches + 1):
        if attempt:
            say(f"relaunch {attempt} of at most {args.max_relaunches}")
        node.ensure(tpu, args.provisioning, args.create_timeout)
        try:
            outcome = watch(node, args, until_end=True, logged_before=launch(node, args, tpu), hosts=tpu.hosts)
        except LaunchError as e:
            if node.state() == "READY":
                raise
            say(f"the TPU VM went away under the launch ({e})")
            continue
        if outcome == "resume":
            settle(node, args.notice_secs)
            continue
        if outcome == "finished":
            say(f"the run finished: {args.workdir}/summary.json says so")
            return 0
        if outcome == "ended":
            say("the job exited 0 before the run's last step (train.stop_at_step?): not relaunching")
            return 0
    raise LaunchError(f"still not finished after --max-relaunches={args.max_relaunches}; the last committed "
                      f"checkpoint is intact: rerun to go on")


def cmd_status(args) -> int:
    node = Node(args)
    state = node.state()
    print(f"TPU VM {node.name}: {state or 'absent'}; queued resource: {node.queued()[0] or 'absent'}")
    if state == "READY":
        for worker, s in sorted((worker_states(node) or {}).items()):
            progress = f", step {s.step}{' (finished)' if s.finished else ''}" if s.step is not None else ""
            print(f"  worker {worker}: {s.job}{progress}; {s.last}")
    return 0


def cmd_logs(args) -> int:
    result = Node(args).ssh(f"tail -n {int(args.lines)} ~/gpt1_jax_worker.log", worker=args.worker)
    print(result.stdout, end="")
    return 0


def cmd_stop(args) -> int:
    node = Node(args)
    if node.state() == "READY":
        node.ssh("bash ~/gpt1_jax_worker.sh stop", check=False)
        say("stopped the job on every worker (SIGTERM: it commits a checkpoint first)")
    if args.delete:
        node.delete()
        say(f"deleted TPU VM {node.name} and its queued resource")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    for name, run in (("create", cmd_create), ("run", cmd_run), ("supervise", cmd_supervise),
                      ("status", cmd_status), ("logs", cmd_logs), ("stop", cmd_stop)):
        sub = commands.add_parser(name)
        sub.set_defaults(run=run)
        sub.add_argument("--name", required=True, help="the TPU VM (and its queued resource)")
        sub.add_argument("--zone", default="", help="default: gcloud config get-value compute/zone")
        sub.add_argument("--project", default="", help="default: gcloud config get-value project")
        sub.add_argument("--poll-secs", type=float, default=30.0, help="seconds between looks at the VM")
        if name in ("create", "run", "supervise"):
            sub.add_argument("--type", required=True,
                             help="accelerator type: v4-32, v5litepod-16 (v5e-16), v5p-8, v6e-16")
            sub.add_argument("--runtime-version", default="",
                             help="the VM's software image (default: its generation's, e.g. v2-alpha-tpuv6e)")
            kind = sub.add_mutually_exclusive_group()
            kind.add_argument("--spot", dest="provisioning", action="store_const", const="spot")
            kind.add_argument("--best-effort", dest="provisioning", action="store_const", const="best-effort")
            sub.set_defaults(provisioning="on-demand")
            sub.add_argument("--create-timeout", type=float, default=6 * 3600,
                             help="seconds to wait for the queued resource to become ACTIVE")
        if name in ("run", "supervise"):
            sub.add_argument("--workdir", required=True, help="the run directory (gs:// for more than one host)")
            sub.add_argument("--no-install", dest="install", action="store_false",
                             help="the image already holds the environment in ~/gpt1_jax/.venv")
            sub.add_argument("--start-timeout", type=float, default=3600.0,
                             help="seconds from launch until step 1 must be logged")
            sub.add_argument("--log-every-secs", type=float, default=60.0,
                             help="how often each worker copies its log into WORKDIR/logs/")
            sub.add_argument("job_flags", nargs="*", help="after --: the job's flags (--config=..., --config.KEY=...)")
        if name == "supervise":
            sub.add_argument("--max-relaunches", type=int, default=20)
            sub.add_argument("--notice-secs", type=float, default=40.0,
                             help="after a stop on a READY VM, how long to watch it for a preemption")
        if name == "logs":
            sub.add_argument("--worker", default="all")
            sub.add_argument("--lines", type=int, default=20)
        if name == "stop":
            sub.add_argument("--delete", action="store_true", help="then delete the VM and its queued resource")
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: the job on the TPU VM goes on; `python launch/tpu.py stop` stops it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
