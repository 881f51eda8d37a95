"""Sharded training equals single-device training; layouts follow the logical rules."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gpt1_jax import model as model_lib
from gpt1_jax import optim
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.train import train_state

CFG = model_lib.ModelConfig(vocab_size=98, n_ctx=16, n_layer=2, n_head=4, d_model=32, d_ff=64)


def test_mesh_size_minus_one_takes_the_remaining_devices():
    assert sharding_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding_lib.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="need 12 devices"):
        sharding_lib.mesh_shape({"data": 3, "fsdp": 2, "tensor": 2}, 8)
    with pytest.raises(ValueError, match="only one axis"):
        sharding_lib.mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_logical_axes_map_onto_the_mesh_and_skip_axes_that_do_not_divide():
    mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = sharding_lib.DEFAULT_RULES
    assert sharding_lib.logical_to_mesh_spec(P("vocab", "embed"), (98, 32), mesh, rules) == P("tensor", "fsdp")
    # GPT-1's 40,478-row table does not split 4 ways: that dimension is replicated.
    mesh4 = sharding_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    assert sharding_lib.logical_to_mesh_spec(P("vocab", "embed"), (40478, 768), mesh4, rules) == P(None, "fsdp")
    assert sharding_lib.logical_to_mesh_spec(P("embed", None, "heads", "kv"), (32, 3, 4, 8), mesh, rules) \
        == P("fsdp", None, "tensor", None)
    assert sharding_lib.batch_sharding(mesh, rules).spec == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="no rule"):
        sharding_lib.logical_to_mesh_spec(P("experts"), (4,), mesh, rules)


def _train(devices, mesh_sizes, steps=3):
    mesh = sharding_lib.make_mesh(mesh_sizes, devices)
    rules = sharding_lib.DEFAULT_RULES
    model = model_lib.GPT1(CFG)
    ocfg = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10)
    tx = optim.make_optimizer(ocfg)
    init = model_lib.init_params_fn(model, CFG.n_ctx)
    rng = jax.random.key(0)
    _, shardings = train_state.state_shardings(init, tx, rng, mesh, rules)
    state = train_state.create_train_state(init, tx, rng, shardings)
    batch_shard = sharding_lib.batch_sharding(mesh, rules)
    step = train_state.make_train_step(model_lib.lm_loss_fn(model), tx, optim.learning_rate_schedule(ocfg),
                                       shardings, batch_shard)
    data = np.random.RandomState(0).randint(0, CFG.vocab_size, (steps, 8, CFG.n_ctx + 1)).astype(np.int32)
    losses = []
    for s in range(steps):
        state, metrics = step(state, jax.device_put(data[s], batch_shard))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), state


@pytest.mark.slow
def test_data_fsdp_tensor_mesh_trains_like_one_device():
    assert jax.device_count() >= 8, "conftest.py sets 8 simulated CPU devices"
    losses_1, params_1, _ = _train(jax.devices()[:1], {"data": 1, "fsdp": 1, "tensor": 1})
    losses_8, params_8, state_8 = _train(jax.devices()[:8], {"data": 2, "fsdp": 2, "tensor": 2})
    np.testing.assert_allclose(losses_8, losses_1, atol=1e-5)
    diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), params_1, params_8)
    assert max(jax.tree_util.tree_leaves(diffs)) <= 1e-5
    # The parameters really were sharded: the QKV kernel splits embed over fsdp, heads over tensor.
    qkv = state_8.params["h_0"]["attn"]["c_attn"]["kernel"]
    assert qkv.sharding.spec == P("fsdp", None, "tensor", None)
    assert qkv.addressable_shards[0].data.shape == (16, 3, 2, 8)
    # Adam's moments follow their parameter's layout.
    mu = state_8.opt_state[1][0].mu["h_0"]["attn"]["c_attn"]["kernel"]
    assert mu.sharding.spec == qkv.sharding.spec
