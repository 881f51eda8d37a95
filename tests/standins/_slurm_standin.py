"""SLURM stand-ins for tests: `sbatch --array`, `squeue`, `scancel` that run array tasks as local
processes. State (one JSON per array task) lives in $SLURM_STANDIN_DIR; a detached supervisor per
submitted array starts its tasks, at most %K at once, and records how each ended."""
import fcntl
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

STATE = pathlib.Path(os.environ.get("SLURM_STANDIN_DIR", "/tmp/slurm_standin"))
LIVE = ("PENDING", "RUNNING", "COMPLETING")


class _Lock:
    def __enter__(self):
        STATE.mkdir(parents=True, exist_ok=True)
        self.f = open(STATE / ".lock", "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.f.close()


def _read(task: str) -> dict:
    return json.loads((STATE / f"{task}.json").read_text())


def _write(task: str, record: dict) -> None:
    partial = STATE / f"{task}.json.partial"
    partial.write_text(json.dumps(record))
    os.replace(partial, STATE / f"{task}.json")


def _tasks(job: str | None = None) -> list[str]:
    names = sorted(p.name[:-5] for p in STATE.glob("*_*.json"))
    return [n for n in names if job is None or n.split("_")[0] == job or n == job]


def sbatch(argv: list[str]) -> int:
    options = dict(re.match(r"--([^=]+)=?(.*)", a).groups() for a in argv if a.startswith("--"))
    low, high, limit = re.fullmatch(r"(\d+)-(\d+)(?:%(\d+))?", options["array"]).groups()
    with _Lock():
        counter = STATE / ".next_id"
        job = int(counter.read_text()) if counter.exists() else 1000
        counter.write_text(str(job + 1))
        for i in range(int(low), int(high) + 1):
            output = options.get("output", "slurm-%A_%a.out").replace("%A", str(job)).replace("%a", str(i))
            _write(f"{job}_{i}", {"state": "PENDING", "wrap": options["wrap"], "output": output, "pid": None})
    subprocess.Popen([sys.executable, __file__, "supervise", str(job), limit or "1000"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job)
    return 0


def supervise(job: str, limit: int) -> None:
    running: dict[str, subprocess.Popen] = {}
    while True:
        for task, process in list(running.items()):
            if process.poll() is not None:
                with _Lock():
                    record = _read(task)
                    cancelled = record["state"] == "COMPLETING"
                    record["state"] = "CANCELLED" if cancelled else "COMPLETED" if process.returncode == 0 else "FAILED"
                    record["exit_code"] = process.returncode
                    _write(task, record)
                del running[task]
        with _Lock():
            pending = [t for t in _tasks(job) if _read(t)["state"] == "PENDING"]
            while pending and len(running) < limit:
                task = pending.pop(0)
                record = _read(task)
                index = task.split("_")[1]
                env = {**os.environ, "SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": index, "SLURM_JOB_ID": task}
                with open(record["output"], "ab") as out:
                    running[task] = subprocess.Popen(["bash", "-c", record["wrap"]], env=env, stdout=out,
                                                     stderr=subprocess.STDOUT, start_new_session=True)
                record.update(state="RUNNING", pid=running[task].pid)
                _write(task, record)
        if not running and not pending:
            return
        time.sleep(0.2)


def squeue(argv: list[str]) -> int:
    jobs = argv[argv.index("-j") + 1].split(",") if "-j" in argv else [None]
    with _Lock():
        for job in jobs:
            for task in _tasks(job):
                state = _read(task)["state"]
                if state in LIVE:
                    print(f"{task} {state}")
    return 0


def scancel(argv: list[str]) -> int:
    with _Lock():
        for job in (a for a in argv if not a.startswith("-")):
            for task in _tasks(job):
                record = _read(task)
                if record["state"] == "PENDING":
                    record["state"] = "CANCELLED"
                elif record["state"] == "RUNNING":
                    record["state"] = "COMPLETING"  # SIGTERM now; the supervisor records CANCELLED at its end
                    os.killpg(record["pid"], signal.SIGTERM)
                _write(task, record)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "supervise":
        supervise(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit({"sbatch": sbatch, "squeue": squeue, "scancel": scancel}[sys.argv[1]](sys.argv[2:]))
