"""The Dense layers' `dot_general`: Flax's forward product, a gradient without transposes."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import dense

# (layer kwargs, input shape): the model's four projections, at small sizes.
LAYERS = {
    "mlp c_fc (Dense)": (dict(features=24), (2, 5, 8)),
    "qkv (DenseGeneral, features 3 x H x K)": (dict(features=(3, 2, 4)), (2, 5, 8)),
    "attention c_proj (DenseGeneral over H x K)": (dict(features=8, axis=(-2, -1)), (2, 5, 2, 4)),
}


def _layers(kwargs, cls):
    init = dict(kernel_init=nn.initializers.normal(0.5), bias_init=nn.initializers.normal(0.5))
    flax_layer = cls(**kwargs, **init)
    ours = cls(**kwargs, **init, dot_general=dense.dot_general)
    return flax_layer, ours


@pytest.mark.parametrize("name", list(LAYERS))
def test_same_parameters_outputs_and_gradients_as_flax(name):
    kwargs, shape = LAYERS[name]
    cls = nn.Dense if name.endswith("(Dense)") else nn.DenseGeneral
    flax_layer, ours = _layers(kwargs, cls)
    x = jax.random.normal(jax.random.key(1), shape)
    params = flax_layer.init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(ours.init(jax.random.key(0), x)) == jax.tree_util.tree_structure(params)
    np.testing.assert_array_equal(ours.apply(params, x), flax_layer.apply(params, x))

    def loss(layer):
        def weighted(p, x):
            y = layer.apply(p, x)
            # Weights on the output, so every element's gradient differs.
            return jnp.sum(jnp.sin(y) * jnp.arange(1.0, 1.0 + y.size).reshape(y.shape))
        return weighted

    want = jax.grad(loss(flax_layer), argnums=(0, 1))(params, x)
    got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_gradients():
    flax_layer, ours = _layers(dict(features=16, dtype=jnp.bfloat16), nn.Dense)
    x = jax.random.normal(jax.random.key(1), (4, 8))
    params = flax_layer.init(jax.random.key(0), x)
    y = ours.apply(params, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, flax_layer.apply(params, x))
    grads = jax.grad(lambda p: jnp.sum(ours.apply(p, x).astype(jnp.float32) ** 2))(params)
    want = jax.grad(lambda p: jnp.sum(flax_layer.apply(p, x).astype(jnp.float32) ** 2))(params)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(grads)):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2)


def test_other_products_are_plain_dot_general():
    a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(dense.dot_general(a, b, batched), jax.lax.dot_general(a, b, batched))
    jaxpr = str(jax.make_jaxpr(lambda a, b: dense.dot_general(a, b, batched))(a, b))
    assert "custom_vjp" not in jaxpr


def _copied_arrays(layer, params, x):
    """Shapes of the arrays the compiled (XLA:CPU) gradient copies or transposes."""
    def loss(p, x):
        return jnp.sum(jnp.tanh(layer.apply(p, x)))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    return re.findall(r"%(?:\w*copy\w*|\w*transpose\w*)(?:\.\d+)? = (\S+) ", hlo)


def test_weight_gradient_needs_no_transposed_copy_of_the_activations():
    """The reason for the module: XLA:CPU copies the [tokens, features] gradient into a
    transposed layout for Flax's weight gradient, and for ours copies nothing."""
    flax_layer, ours = _layers(dict(features=512), nn.Dense)
    x = jnp.ones((4, 64, 128))
    params = flax_layer.init(jax.random.key(0), x)
    assert _copied_arrays(flax_layer, params, x), "Flax's gradient no longer copies: is this module still needed?"
    assert _copied_arrays(ours, params, x) == []


@pytest.mark.parametrize("remat, custom", [("none", True), ("dots", False), ("block", False)])
def test_the_model_uses_it_unless_rematerialising(remat, custom):
    """Under remat XLA:CPU schedules larger temporaries with it (model._dot_general)."""
    from gpt1_jax import model as model_lib
    cfg = model_lib.ModelConfig(vocab_size=64, n_ctx=8, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                remat=remat)
    model = model_lib.GPT1(cfg)
    params = model_lib.init_params_fn(model, cfg.n_ctx)(jax.random.key(0))
    loss = model_lib.lm_loss_fn(model)
    tokens = jnp.zeros((2, cfg.n_ctx + 1), jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda p: loss(p, tokens, None, True)[0])(params))
    assert jaxpr.count("custom_vjp") == (4 if custom else 0)  # c_attn, attn c_proj, c_fc, mlp c_proj
