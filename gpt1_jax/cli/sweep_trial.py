"""Runs one sweep trial where a launcher put it: `python -m gpt1_jax.cli.sweep_trial SPEC`.

SPEC is the JSON the sweep controller wrote: the trial's job command and where its log and
exit record go. A SLURM array's batch file (`{"trials": [SPEC, ...]}`) picks the spec of
$SLURM_ARRAY_TASK_ID. SIGTERM and SIGINT are passed on to the job, which commits a
checkpoint and exits 42. At the end `<name>.exit` holds the exit status, the job's error
line and the wall time; `<name>.starts` gets one line per start (a rerun shows as two).
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from gpt1_jax.storage import rundir


def _error_line(log: pathlib.Path) -> str:
    """The job's `error: ...` line, else the last line (a bug's exception)."""
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 65536))
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1] if errors else (lines[-1] if lines else "")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(pathlib.Path(argv[1]).read_text())
    if "trials" in spec:
        spec = json.loads(pathlib.Path(spec["trials"][int(os.environ["SLURM_ARRAY_TASK_ID"])]).read_text())
    log, exit_record = pathlib.Path(spec["log"]), pathlib.Path(spec["exit"])
    with open(spec["starts"], "a") as f:
        f.write(json.dumps({"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                            "cores": sorted(os.sched_getaffinity(0)),
                            "slurm_job": os.environ.get("SLURM_JOB_ID"),
                            "jobset": os.environ.get("GPT1_JAX_JOBSET")}) + "\n")
    started = time.time()
    with open(log, "ab") as out:
        job = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.get("env", {})})
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _: job.send_signal(s))
    status = job.wait()
    record = {"status": status, "error": _error_line(log) if status else "",
              "seconds": round(time.time() - started, 1)}
    rundir.write_json(exit_record, record)  # whole or absent: the controller reads it as the trial's end
    return status if 0 <= status < 256 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
