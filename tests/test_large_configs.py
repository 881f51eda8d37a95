"""The GPT-2-medium and -large width configs lay their state out as the sharding rules say.

Abstract only (jax.eval_shape): nothing of the 350M / 760M parameters is allocated.
"""
import math
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gpt1_jax import config_files, optim, settings
from gpt1_jax import model as model_lib
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.train import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
# Logical axes of each parameter (model.py) and the mesh axes the default rules give them
# when every dimension divides: fsdp shards "embed", tensor shards heads/mlp/vocab.
EXPECTED_SPECS = {
    "tokens_embed/embedding": P("tensor", "fsdp"),             # vocab, embed
    "positions_embed/embedding": P(None, "fsdp"),              # -, embed
    "attn/c_attn/kernel": P("fsdp", None, "tensor", None),     # embed, -, heads, kv
    "attn/c_attn/bias": P(None, "tensor", None),               # -, heads, kv
    "attn/c_proj/kernel": P("tensor", None, "fsdp"),           # heads, kv, embed
    "attn/c_proj/bias": P("fsdp"),                             # embed
    "mlp/c_fc/kernel": P("fsdp", "tensor"),                    # embed, mlp
    "mlp/c_fc/bias": P("tensor"),                              # mlp
    "mlp/c_proj/kernel": P("tensor", "fsdp"),                  # mlp, embed
    "mlp/c_proj/bias": P("fsdp"),                              # embed
    "ln_1/scale": P(), "ln_1/bias": P(), "ln_2/scale": P(), "ln_2/bias": P(),  # norm
}


def _config(name):
    return config_files.load(REPO / "configs" / f"{name}.py")


def _normal(spec: P) -> tuple:
    """P(None,) and P() both mean replicated: drop trailing Nones."""
    axes = list(spec)
    while axes and axes[-1] is None:
        axes.pop()
    return tuple(axes)


def _path(key_path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in key_path)


@pytest.mark.parametrize("name, n_layer, d_model, n_head, approx_params", [
    ("gpt2_medium", 24, 1024, 16, 345e6),
    pytest.param("gpt2_large", 36, 1280, 20, 762e6, marks=pytest.mark.slow),
])
def test_state_shards_over_data_fsdp_tensor_as_the_rules_say(name, n_layer, d_model, n_head, approx_params):
    config = _config(name)
    mcfg = settings.model_config(config, config.model.vocab_size)
    assert (mcfg.n_layer, mcfg.d_model, mcfg.n_head, mcfg.d_ff) == (n_layer, d_model, n_head, 4 * d_model)
    model = model_lib.GPT1(mcfg)
    tx = optim.make_optimizer(settings.optimizer_config(config, total_steps=1000))
    mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    abstract, shardings = train_state.state_shardings(model_lib.init_params_fn(model, mcfg.n_ctx), tx,
                                                      jax.random.key(0), mesh, settings.sharding_rules(config))

    num_params = model_lib.count_params(abstract.params)
    assert abs(num_params / approx_params - 1) < 0.01, num_params

    seen = set()
    for key_path, sharding in jax.tree_util.tree_leaves_with_path(shardings.params):
        path = _path(key_path)
        suffix = next(s for s in EXPECTED_SPECS if path.endswith(s))
        spec = sharding.spec
        if path.startswith(f"{model_lib.STACKED_BLOCKS}/"):
            # Scanned layers (both configs): the stacked "layers" axis first, never split.
            assert mcfg.scan_layers and spec[0] is None, (path, spec)
            spec = P(*spec[1:])
        assert _normal(spec) == _normal(EXPECTED_SPECS[suffix]), (path, sharding.spec)
        seen.add(suffix)
    assert seen == set(EXPECTED_SPECS)

    # Adam's moments follow their parameters; the step counters are replicated.
    adam = shardings.opt_state[1][0]
    assert jax.tree_util.tree_map(lambda s: s.spec, adam.mu) == jax.tree_util.tree_map(
        lambda s: s.spec, shardings.params)
    assert adam.nu == adam.mu and adam.count.spec == P()

    # Each device holds a quarter of the weights and moments (fsdp x tensor), replicated
    # only over the data axis: the per-device state shrinks with the model-parallel axes.
    def per_device_bytes(tree_abstract, tree_shardings):
        return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in zip(
            jax.tree_util.tree_leaves(tree_abstract), jax.tree_util.tree_leaves(tree_shardings)))
    total = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(abstract.params))
    local = per_device_bytes(abstract.params, shardings.params)
    assert 0.25 <= local / total < 0.251, local / total
    assert np.isclose(per_device_bytes(abstract.opt_state, shardings.opt_state), 2 * local, rtol=1e-3)
