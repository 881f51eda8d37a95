"""Train-step features that must not change results (gradient accumulation, remat, bf16), and
the one run setup: the plan of every job and of aot, then the state placed where it says."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import model as model_lib
from gpt1_jax import optim
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.train import run_setup, train_state

CFG = model_lib.ModelConfig(vocab_size=64, n_ctx=16, n_layer=2, n_head=2, d_model=32, d_ff=64,
                            embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def _step_fn(cfg, microbatches=1):
    mesh = sharding_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rules = sharding_lib.DEFAULT_RULES
    model = model_lib.GPT1(cfg)
    ocfg = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=0, total_steps=10)
    tx = optim.make_optimizer(ocfg)
    init = model_lib.init_params_fn(model, cfg.n_ctx)
    _, shardings = train_state.state_shardings(init, tx, jax.random.key(0), mesh, rules)
    state = train_state.create_train_state(init, tx, jax.random.key(0), shardings)
    step = train_state.make_train_step(model_lib.lm_loss_fn(model), tx, optim.learning_rate_schedule(ocfg),
                                       shardings, sharding_lib.batch_sharding(mesh, rules), microbatches)
    return state, step


def _batch(b=8, seed=0):
    return np.random.RandomState(seed).randint(0, CFG.vocab_size, (b, CFG.n_ctx + 1)).astype(np.int32)


def _run(cfg, microbatches=1, steps=2):
    state, step = _step_fn(cfg, microbatches)
    losses = []
    for s in range(steps):
        state, metrics = step(state, jnp.asarray(_batch(seed=s)))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


def _max_diff(a, b):
    return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.mark.slow
def test_four_microbatches_equal_one_step_on_the_whole_batch():
    losses_1, params_1 = _run(CFG, microbatches=1)
    losses_4, params_4 = _run(CFG, microbatches=4)
    np.testing.assert_allclose(losses_4, losses_1, atol=1e-5)
    assert _max_diff(params_1, params_4) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["dots", "block"])
def test_remat_does_not_change_results(remat):
    losses, params = _run(CFG)
    losses_r, params_r = _run(dataclasses.replace(CFG, remat=remat))
    np.testing.assert_allclose(losses_r, losses, atol=1e-6)
    assert _max_diff(params, params_r) <= 1e-6


@pytest.mark.slow  # three compilations and their memory analyses
def test_remat_lowers_the_memory_of_the_train_step():
    # Activations must dominate for remat to show: long windows, a small vocabulary.
    cfg = model_lib.ModelConfig(vocab_size=512, n_ctx=256, n_layer=4, n_head=4, d_model=128, d_ff=512)
    mesh = sharding_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rules = sharding_lib.DEFAULT_RULES
    ocfg = optim.OptimizerConfig(total_steps=10)
    tx = optim.make_optimizer(ocfg)
    batch = jax.ShapeDtypeStruct((16, cfg.n_ctx + 1), jnp.int32,
                                 sharding=sharding_lib.batch_sharding(mesh, rules))

    def temp_bytes(remat):
        model = model_lib.GPT1(dataclasses.replace(cfg, remat=remat))
        init = model_lib.init_params_fn(model, cfg.n_ctx)
        abstract, shardings = train_state.state_shardings(init, tx, jax.random.key(0), mesh, rules)
        step = train_state.make_train_step(model_lib.lm_loss_fn(model), tx, optim.learning_rate_schedule(ocfg),
                                           shardings, batch.sharding)
        compiled = step.lower(train_state.with_shardings(abstract, shardings), batch).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    none, dots, block = temp_bytes("none"), temp_bytes("dots"), temp_bytes("block")
    # "dots" keeps the matmul outputs but recomputes the attention probabilities and the
    # elementwise ops; "block" keeps only each block's input. Measured: 293, 282 and
    # 226 MiB (before dropout's bits were one fused pass, "none" took 353 MiB).
    assert block < dots < none, (none, dots, block)
    assert block < 0.85 * none, (none, dots, block)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_and_a_float32_loss():
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    state, step = _step_fn(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))
    model = model_lib.GPT1(cfg)
    logits, hidden = model.apply({"params": state.params}, jnp.asarray(_batch()[:, :-1]))
    assert hidden.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    state, metrics = step(state, jnp.asarray(_batch()))
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert moments and all(x.dtype == jnp.float32 for x in moments)
    # bf16 compute stays close to the fp32 loss.
    losses_32, _ = _run(CFG, steps=1)
    assert abs(float(metrics["loss"]) - losses_32[0]) < 0.05


def test_a_non_finite_step_is_skipped_and_counted():
    state, step = _step_fn(CFG)
    before = jax.device_get(state.params)
    # A NaN parameter poisons the loss; the guard must leave params and Adam state alone.
    bad_params = jax.tree_util.tree_map(lambda x: x, before)
    bad_params["h_0"]["mlp"]["c_fc"]["bias"] = bad_params["h_0"]["mlp"]["c_fc"]["bias"] * np.nan
    poisoned = state.replace(params=jax.device_put(bad_params))
    new_state, metrics = step(poisoned, jnp.asarray(_batch()))
    assert int(metrics["nonfinite"]) == 1 and int(new_state.step) == 1
    after = jax.device_get(new_state.params)
    np.testing.assert_array_equal(after["h_1"]["mlp"]["c_fc"]["kernel"], before["h_1"]["mlp"]["c_fc"]["kernel"])
    assert float(jax.device_get(new_state.opt_state[1][0].count)) == 0


def _plan_inputs():
    model = model_lib.GPT1(CFG)
    ocfg = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=0, total_steps=10)
    return (model_lib.init_params_fn(model, CFG.n_ctx), model_lib.lm_loss_fn(model), optim.make_optimizer(ocfg),
            optim.learning_rate_schedule(ocfg))


def test_setup_run_is_the_plan_with_its_state_created_where_the_plan_puts_it():
    settings = run_setup.RunSetup(mesh={"data": 2, "fsdp": 2, "tensor": 2}, rules=sharding_lib.DEFAULT_RULES,
                                  batch_size=8)
    plan = run_setup.plan_run(settings, *_plan_inputs())
    seen = []

    def initial_params(plan):  # e.g. pretrained weights, loaded onto the plan's mesh with its rules
        seen.append((dict(plan.mesh.shape), plan.rules))
        return jax.jit(lambda: jax.tree_util.tree_map(jnp.ones_like, plan.abstract.params),
                       out_shardings=plan.shardings.params)()

    run = run_setup.setup_run(settings, *_plan_inputs(), initial_params=initial_params)
    assert seen == [({"data": 2, "fsdp": 2, "tensor": 2}, sharding_lib.DEFAULT_RULES)]
    assert run.checkpointer is None and run.resumed_from is None and int(run.state.step) == 0
    placed = jax.tree_util.tree_leaves(run.state)
    abstract = jax.tree_util.tree_leaves(plan.abstract)
    assert [(x.shape, x.dtype) for x in placed] == [(a.shape, a.dtype) for a in abstract]
    assert [x.sharding for x in placed] == jax.tree_util.tree_leaves(plan.shardings)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in placed)
    assert all(np.all(np.asarray(x) == 1) for x in jax.tree_util.tree_leaves(run.state.params))
    _, metrics = run.train_step(run.state, jnp.asarray(_batch()))
    assert np.isfinite(float(metrics["loss"]))


def test_a_batch_that_does_not_split_over_the_data_parallel_devices_is_refused_by_the_plan():
    settings = run_setup.RunSetup(mesh={"data": 4, "fsdp": 2, "tensor": 1}, rules=sharding_lib.DEFAULT_RULES,
                                  batch_size=12, microbatches=2)
    with pytest.raises(ConfigError, match=r"train.batch_size=12 .* data-parallel devices \(8\) times "
                                          r"train.microbatches \(2\)"):
        run_setup.plan_run(settings, *_plan_inputs())
