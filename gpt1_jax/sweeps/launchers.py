"""Where trials run. A launcher starts trial specs (JSON files the controller writes), says
whether a started one is still alive, and stops one so that it exits cleanly.

Every trial runs under `python -m gpt1_jax.cli.sweep_trial SPEC`, which runs the trial's job
command, passes SIGTERM on to it (the job commits a checkpoint and exits 42) and writes the
exit status and the error line beside the spec. A job id is a string the controller keeps
in the study, so a restarted controller finds the trials its predecessor started.
"""
import json
import os
import pathlib
import re
import secrets
import signal
import subprocess
import sys

RUNNER = "gpt1_jax.cli.sweep_trial"


class LocalLauncher:
    """N trials at once on this machine, each in its own session (a controller killed outright
    leaves them running, for the next one to adopt) and on its own share of the CPU cores."""

    name = "local"

    def __init__(self, parallel: int, python: str = ""):
        self.parallel = parallel
        self.python = python or sys.executable
        self.cores = sorted(os.sched_getaffinity(0))
        self._children: dict[str, tuple[subprocess.Popen, int]] = {}  # job id -> (process, slot)

    def _cores(self, slot: int) -> set[int]:
        per = max(1, len(self.cores) // self.parallel)
        start = (slot * per) % len(self.cores)
        return set(self.cores[start:start + per])

    def submit(self, specs: list[pathlib.Path]) -> list[str]:
        ids = []
        for spec in specs:
            used = {slot for job, (p, slot) in self._children.items() if p.poll() is None}
            slot = min(set(range(self.parallel + len(used))) - used)
            cores = self._cores(slot)
            with open(spec.with_suffix(".log"), "ab") as log:
                process = subprocess.Popen([self.python, "-m", RUNNER, str(spec)], stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores))
            job = f"pid:{process.pid}"
            self._children[job] = (process, slot)
            ids.append(job)
        return ids

    def alive(self, job: str) -> bool:
        if job in self._children:
            return self._children[job][0].poll() is None
        # Started by an earlier controller: no longer our child, so look at the process itself.
        pid = int(job.split(":", 1)[1])
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z" and RUNNER.encode() in cmdline

    def stop(self, job: str) -> None:
        try:
            os.kill(int(job.split(":", 1)[1]), signal.SIGTERM)
        except ProcessLookupError:
            pass


class SlurmLauncher:
    """One `sbatch --array=0-N%K` per batch of asked trials: array task i runs the batch's
    i-th spec. Pruning is `scancel`, whose SIGTERM the job answers with a checkpoint and exit 42.
    `sbatch_args` (partition, GPUs, time, `--signal=TERM@120`) are passed through."""

    name = "slurm"

    def __init__(self, parallel: int, state_dir: pathlib.Path, sbatch_args=(), python: str = ""):
        self.parallel = parallel
        self.state_dir = pathlib.Path(state_dir)
        self.sbatch_args = list(sbatch_args)
        self.python = python or sys.executable

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except FileNotFoundError as e:
            raise OSError(f"{argv[0]}: not found on PATH (the SLURM launcher needs sbatch, squeue, scancel)") from e

    def submit(self, specs: list[pathlib.Path]) -> list[str]:
        batch = self.state_dir / f"batch_{len(list(self.state_dir.glob('batch_*.json'))):04d}.json"
        batch.write_text('{"trials": [' + ", ".join(f'"{s}"' for s in specs) + "]}\n")
        result = self._run(["sbatch", "--parsable", f"--array=0-{len(specs) - 1}%{self.parallel}",
                            f"--job-name=sweep-{self.state_dir.parent.name}",
                            f"--output={self.state_dir}/slurm-%A_%a.out", *self.sbatch_args,
                            f"--wrap=exec {self.python} -m {RUNNER} {batch}"])
        if result.returncode != 0:
            raise OSError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        array_id = result.stdout.strip().split(";")[0]
        return [f"{array_id}_{i}" for i in range(len(specs))]

    def alive(self, job: str) -> bool:
        result = self._run(["squeue", "-h", "-r", "-o", "%i %T", "-j", job.split("_")[0]])
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:  # long finished: SLURM forgot it
                return False
            raise OSError(f"squeue failed ({result.returncode}): {result.stderr.strip()}")
        return any(line.split()[0] == job for line in result.stdout.splitlines() if line.strip())

    def stop(self, job: str) -> None:
        self._run(["scancel", job])


class GkeLauncher:
    """One JobSet per trial, rendered by `launch/gke.py trial` (one pod running the trial runner,
    never restarted by the JobSet: the controller requeues) and applied with `kubectl apply -f`.
    A trial is alive while its JobSet exists and has neither completed nor failed; pruning is
    `kubectl delete jobset`, whose SIGTERM to the pod the job answers with a checkpoint and exit 42.

    The pods must see the state folder at its own path (`volume_claim`: a ReadWriteMany claim,
    e.g. Filestore, mounted there; the trial runner writes the exit records into it) and the
    trials' workdirs (a gs:// root, or the same volume). `settings` are the study's `launcher`
    section: image (required), namespace, tpu or gpus (+ gpu_type), volume_claim, mount_path,
    service_account, python (the image's, default `python`), grace_period_secs, renderer."""

    name = "gke"
    RENDER_FLAGS = ("image", "tpu", "gpus", "gpu_type", "volume_claim", "mount_path", "service_account",
                    "grace_period_secs")

    def __init__(self, state_dir: pathlib.Path, settings: dict):
        self.state_dir = pathlib.Path(state_dir)
        self.settings = dict(settings)
        self.python = self.settings.get("python") or "python"
        self.renderer = self.settings.get("renderer") or "launch/gke.py"
        namespace = self.settings.get("namespace")
        self.kubectl = ["kubectl", *(["--namespace", namespace] if namespace else [])]

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except FileNotFoundError as e:
            raise OSError(f"{argv[0]}: not found on PATH (the GKE launcher needs kubectl)") from e
        if result.returncode != 0 and what:
            raise OSError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def jobset_name(self, trial: str) -> str:
        """The sweep's and the trial's names as a DNS label, with a random tail: a requeued trial's
        JobSet is a new one beside its predecessor's."""
        base = re.sub(r"[^a-z0-9]+", "-", f"{self.state_dir.parent.name}-{trial}".lower()).strip("-")
        return f"{base[:34].rstrip('-') or 'trial'}-{secrets.token_hex(2)}"

    def submit(self, specs: list[pathlib.Path]) -> list[str]:
        ids = []
        for spec in specs:
            trial = json.loads(spec.read_text())
            trial["argv"][0] = self.python  # the job runs in the image, under its Python
            spec.write_text(json.dumps(trial, indent=1))
            name = self.jobset_name(trial["name"])
            flags = [f"--{k.replace('_', '-')}={self.settings[k]}" for k in self.RENDER_FLAGS if self.settings.get(k)]
            rendered = self._run([sys.executable, self.renderer, "trial", f"--name={name}", f"--python={self.python}",
                                  *flags, str(spec)], "launch/gke.py trial")
            manifest = spec.with_suffix(".jobset.json")
            manifest.write_text(rendered.stdout)
            self._run([*self.kubectl, "apply", "-f", str(manifest)], "kubectl apply")
            ids.append(name)
        return ids

    def alive(self, job: str) -> bool:
        result = self._run([*self.kubectl, "get", "jobset", job, "-o", "json"], "")
        if result.returncode != 0:
            if "NotFound" in result.stderr:  # deleted (pruned), or removed by hand
                return False
            raise OSError(f"kubectl get jobset {job} failed ({result.returncode}): {result.stderr.strip()}")
        conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
        return not any(c.get("type") in ("Completed", "Failed") and c.get("status") == "True" for c in conditions)

    def stop(self, job: str) -> None:
        # Foreground: the JobSet stays visible (alive) until its pod has exited and written its record.
        self._run([*self.kubectl, "delete", "jobset", job, "--ignore-not-found", "--wait=false",
                   "--cascade=foreground"], "kubectl delete")


def make(launcher: dict, parallel: int, state_dir: pathlib.Path):
    """The launcher a study's `launcher` section names."""
    from gpt1_jax.errors import ConfigError
    name = launcher.get("name", "local")
    if name == "local":
        return LocalLauncher(parallel, python=launcher.get("python", ""))
    if name == "slurm":
        return SlurmLauncher(parallel, state_dir, launcher.get("sbatch_args", ()), python=launcher.get("python", ""))
    if name == "gke":
        if not launcher.get("image"):
            raise ConfigError("launcher.image: the GKE launcher needs the job's image (built from the Dockerfile)")
        renderer = launcher.get("renderer") or "launch/gke.py"
        if not pathlib.Path(renderer).is_file():
            raise ConfigError(f"launcher.renderer: no file {renderer!r} (run the sweep from the repository root)")
        return GkeLauncher(state_dir, launcher)
    raise ConfigError(f"launcher.name={name!r}: expected local, slurm or gke")
