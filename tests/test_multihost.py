"""Multi-process training (jax.distributed on 127.0.0.1) equals single-process training.

Two processes of 2 simulated CPU devices each form the same 4-device data-parallel mesh
as one process of 4 devices. Each process feeds only its own rows of every global batch,
writes its shards of the checkpoint, and only process 0 logs; so the losses and
parameters must match the single-process run, and the checkpoint the pair writes
together must resume in a single process.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

import jobs
from gpt1_jax import loading
from gpt1_jax import model as model_lib

# Batches of 8 rows: 4 for each process, 2 for each device.
COMMON = ["--config.train.batch_size=8", "--config.train.num_steps=5", "--config.checkpoint.every_steps=3"]
TIMEOUT = 300


def _run_single(corpus, workdir, *overrides):
    """One process, 4 devices."""
    return jobs.run(jobs.pretrain_argv(corpus, workdir, *COMMON, *overrides), jobs.env(4), timeout=TIMEOUT)


def _run_two_processes(corpus, workdir, *overrides) -> list[tuple[str, str]]:
    """Two processes of 2 devices each, joined through a coordinator on 127.0.0.1;
    returns each one's (stdout, stderr)."""
    address = f"127.0.0.1:{jobs.free_port()}"
    return jobs.run_processes([jobs.pretrain_argv(corpus, workdir, *COMMON, *overrides,
                                                  *jobs.process_flags(address, 2, i)) for i in range(2)],
                              jobs.env(2), timeout=TIMEOUT)


def _abstract_params(model_config: dict):
    """Single-device restore targets for the recorded model."""
    cfg = model_lib.ModelConfig(**model_config)
    boxed = jax.eval_shape(model_lib.init_params_fn(model_lib.GPT1(cfg), cfg.n_ctx), jax.random.key(0))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                  nn.meta.unbox(boxed))


def _params(path) -> list[np.ndarray]:
    """The parameters of a training checkpoint or a params export, as numpy leaves."""
    found = loading.find(path)
    params = found.load_params(_abstract_params(found.model_config))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _assert_close(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one(corpus, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    _run_single(corpus, single)  # steps 1-5 in one process; checkpoints at 3 and 5
    outputs = _run_two_processes(corpus, multi, "--config.train.stop_at_step=3")

    # Only process 0 reports; both took part (each fed its own rows).
    assert "GPT-1:" in outputs[0][0] and "GPT-1:" not in outputs[1][0]
    a, b = jobs.losses(single), jobs.losses(multi)
    assert sorted(b) == [1, 2, 3]
    # Cross-process reductions may add in another order: equal up to float32 rounding.
    np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], rtol=0, atol=1e-5)
    # The checkpoint the two processes wrote together holds the single run's step-3 state.
    assert jobs.finished_steps(multi) == [3]
    _assert_close(_params(multi / "checkpoints" / "3"), _params(single / "checkpoints" / "3"), 1e-6)

    # A single process resumes it (on 4 devices of one process) and finishes like the single run.
    resumed = _run_single(corpus, multi)
    assert "Resuming from" in resumed.stdout + resumed.stderr
    c = jobs.losses(multi)
    np.testing.assert_allclose([c[s] for s in (4, 5)], [a[s] for s in (4, 5)], rtol=0, atol=1e-5)
    _assert_close(_params(multi / "export"), _params(single / "export"), 1e-6)
