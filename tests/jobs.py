"""Running jobs as a user would, for tests: `python -m gpt1_jax.cli.main ...` in a fresh process,
and reading what it left in its workdir (local or gs://).

The one place tests start jobs from; test files import it as `import jobs` (tests/ is on
sys.path under pytest). A job that fails, or outlives its timeout, fails the test with the
end of its stdout and stderr.
"""
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 600
# A model small enough that a step takes milliseconds; d_ff = 4 x d_model, so it also
# converts to transformers' OpenAIGPT.
TINY_MODEL = ["--config.model.n_ctx=64", "--config.model.n_layer=1", "--config.model.n_head=2",
              "--config.model.d_model=32", "--config.model.d_ff=128"]
# configs/tiny.py at 16-token windows, so the `corpus` fixture's 40,000 characters give a
# validation split of whole batches; a metrics record every step, no evaluation but the
# final one.
SMALL_JOB = ["--config.model.n_ctx=16", "--config.model.n_layer=2", "--config.model.n_head=2",
             "--config.model.d_model=32", "--config.model.d_ff=64",
             "--config.train.batch_size=4", "--config.train.log_every_steps=1",
             "--config.train.eval_batches=2", "--config.train.eval_every_steps=0",
             "--config.optimizer.warmup_steps=2", "--config.data.val_fraction=0.05"]


# The test session's persistent XLA cache (set by conftest.py): the suite starts a few hundred
# jobs of a handful of shapes, and a job whose programs are cached starts in about half the time.
SESSION_CACHE = "GPT1_JAX_TEST_XLA_CACHE"


def env(devices: int = 1, **extra) -> dict:
    """The environment of a job process: `devices` simulated CPU devices, unbuffered output
    (what a killed job printed is not lost), the session's compilation cache, plus `extra`."""
    cache = compilation_cache(os.environ[SESSION_CACHE]) if os.environ.get(SESSION_CACHE) else {}
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **cache, **extra}


def compilation_cache(directory) -> dict:
    """Environment entries that make jobs share a persistent XLA compilation cache in
    `directory`, every program included: only the first job of a shape compiles."""
    return {"JAX_COMPILATION_CACHE_DIR": str(directory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def argv(config: str, workdir, *overrides, module: str = "gpt1_jax.cli.main") -> list[str]:
    return [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}",
            "--config.train.progress=False", *overrides]


def pretrain_argv(corpus, workdir, *overrides, cache_dir=None) -> list[str]:
    """A SMALL_JOB pretraining on the `corpus` fixture's book (token cache in corpus/cache)."""
    corpus = pathlib.Path(corpus)
    return argv("configs/tiny.py", workdir, *SMALL_JOB, f"--config.data.text_files={corpus / 'book.txt'}",
                f"--config.data.cache_dir={cache_dir or corpus / 'cache'}", *overrides)


def output(result) -> str:
    """The exit status and the end of both streams of a finished process, for a failure message."""
    stdout, stderr = result.stdout or "", result.stderr or ""
    return (f"exit status {result.returncode}\n--- stdout (end) ---\n{stdout[-2000:]}"
            f"\n--- stderr (end) ---\n{stderr[-4000:]}")


def run(args: list[str], job_env: dict | None = None, expect_ok: bool = True,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Runs a command to its end; with `expect_ok`, fails the test with its output if it failed."""
    try:
        result = subprocess.run(args, cwd=REPO, env=job_env or env(), capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as e:  # its output so far, not just "timed out"
        as_text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else b
        raise AssertionError(f"{shlex.join(map(str, args))[:500]} did not end within {timeout} s\n" + output(
            subprocess.CompletedProcess(args, None, as_text(e.stdout), as_text(e.stderr)))) from None
    if expect_ok:
        assert result.returncode == 0, f"{shlex.join(map(str, args))[:500]}\n" + output(result)
    return result


def main(*args, expect_ok: bool = True, devices: int = 1) -> subprocess.CompletedProcess:
    """`python -m gpt1_jax.cli.main ARGS --config.train.progress=False` to its end."""
    return run([sys.executable, "-m", "gpt1_jax.cli.main", *args, "--config.train.progress=False"],
               env(devices), expect_ok=expect_ok)


def start(args: list[str], job_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=job_env or env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished_steps(workdir) -> list[int]:
    """The workdir's finished checkpoints, by orbax's own test (local or gs://)."""
    from gpt1_jax import checkpoint
    from gpt1_jax.storage import rundir
    return checkpoint.finished_steps(rundir.path(workdir) / rundir.CHECKPOINTS)


def in_flight(workdir) -> list[str]:
    """Checkpoint writes begun but not finished: orbax's temporary folders (local workdirs)."""
    directory = pathlib.Path(workdir) / "checkpoints"
    return [p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name] if directory.is_dir() else []


def metric_records(workdir) -> list[dict]:
    """The records of metrics.jsonl (local or gs://); a line still being written is left out."""
    from gpt1_jax.storage import rundir
    path = rundir.path(workdir) / rundir.METRICS
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines]


def losses(workdir) -> dict[int, float]:
    """{step: train loss} of the workdir's metrics."""
    return {r["step"]: r["loss"] for r in metric_records(workdir) if "loss" in r}


def saved_state(workdir, step) -> dict:
    """A training checkpoint's state as {key path: numpy array}."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from gpt1_jax.storage import rundir
    path = rundir.path(workdir) / rundir.CHECKPOINTS / str(step) / "state"
    # Onto one device of this process, whatever mesh and processes wrote it.
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        found = checkpointer.metadata(path).item_metadata
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), found)
        tree = checkpointer.restore(path, target)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_state(a: dict, b: dict) -> None:
    import numpy as np
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def resumed_from(stdout: str):
    """The step a job's output says it resumed from; None when it started afresh."""
    for line in stdout.splitlines():
        if line.startswith("Resuming from "):
            return int(line.rsplit("/", 1)[1])
    return None


def wait_for(condition, *processes, timeout: float = 300.0, poll: float = 0.01) -> None:
    """Polls until `condition()`; fails, with the process's output, if one of `processes`
    ends first."""
    deadline = time.time() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                stdout, stderr = process.communicate()
                raise AssertionError("the job ended first: " + output(
                    subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)))
        assert time.time() < deadline, "timed out"
        time.sleep(poll)


def process_flags(address: str, count: int, index: int) -> list[str]:
    """The flags that make a job process `index` of `count` joined through `address`."""
    return ["--config.distributed.initialize=True", f"--config.distributed.coordinator_address={address}",
            f"--config.distributed.num_processes={count}", f"--config.distributed.process_id={index}"]


def run_processes(argvs: list[list[str]], job_env: dict, timeout: float = TIMEOUT) -> list[tuple[str, str]]:
    """Runs the processes of one multi-process job to their end, each expected to exit 0;
    returns each one's (stdout, stderr). A failed peer must not leave the others waiting."""
    processes = [start(args, job_env) for args in argvs]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for i, (process, (stdout, stderr)) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i}: " + output(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return outputs
