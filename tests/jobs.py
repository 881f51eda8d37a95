"""Running jobs as a user would, for tests: `python -m gpt1_jax.main ...` in a fresh process,
and reading what it left in its workdir (local or gs://).

The one place tests start jobs from; test files import it as `import jobs` (tests/ is on
sys.path under pytest).
"""
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 600
# A model small enough that a step takes milliseconds; d_ff = 4 x d_model, so it also
# converts to transformers' OpenAIGPT.
TINY_MODEL = ["--config.model.n_ctx=64", "--config.model.n_layer=1", "--config.model.n_head=2",
              "--config.model.d_model=32", "--config.model.d_ff=128"]


def env(devices: int = 1, **extra) -> dict:
    """The environment of a job process: `devices` simulated CPU devices, unbuffered output
    (what a killed job printed is not lost), plus `extra`."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **extra}


def argv(config: str, workdir, *overrides, module: str = "gpt1_jax.main") -> list[str]:
    return [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}",
            "--config.train.progress=False", *overrides]


def run(args: list[str], job_env: dict | None = None, expect_ok: bool = True,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Runs a command to its end; with `expect_ok`, fails the test with its stderr if it failed."""
    result = subprocess.run(args, cwd=REPO, env=job_env or env(), capture_output=True, text=True,
                            timeout=timeout)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def start(args: list[str], job_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=job_env or env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished_steps(workdir) -> list[int]:
    """The workdir's finished checkpoints, by orbax's own test (local or gs://)."""
    from gpt1_jax import checkpoint, rundir
    return checkpoint.finished_steps(rundir.path(workdir) / rundir.CHECKPOINTS)


def metric_records(workdir) -> list[dict]:
    """The records of metrics.jsonl (local or gs://); a line still being written is left out."""
    from gpt1_jax import rundir
    path = rundir.path(workdir) / rundir.METRICS
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines]


def saved_state(workdir, step) -> dict:
    """A training checkpoint's state as {key path: numpy array}."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from gpt1_jax import rundir
    path = rundir.path(workdir) / rundir.CHECKPOINTS / str(step) / "state"
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(path)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_state(a: dict, b: dict) -> None:
    import numpy as np
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def resumed_from(output: str):
    for line in output.splitlines():
        if line.startswith("Resuming from "):
            return int(line.rsplit("/", 1)[1])
    return None


def wait_for(condition, *processes, timeout: float = 300.0, poll: float = 0.01) -> None:
    """Polls until `condition()`; fails if one of `processes` ends first."""
    deadline = time.time() + timeout
    while not condition():
        for process in processes:
            assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(poll)
