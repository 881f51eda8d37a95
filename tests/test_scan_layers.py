"""model.scan_layers: one scanned block with parameters stacked on a "layers" axis computes
the same model as the per-layer blocks, and the two layouts convert into each other.

Every computation is jitted whole: op-by-op dispatch of a scanned model's gradient costs
minutes of CPU on a busy machine, one compile seconds."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import model as model_lib
from gpt1_jax.errors import ConfigError

TINY = model_lib.ModelConfig(vocab_size=97, n_ctx=32, n_layer=3, n_head=2, d_model=16, d_ff=32,
                             attention_block=8)


def per_layer_params(cfg):
    init = jax.jit(model_lib.GPT1(cfg).init)
    return nn.meta.unbox(init(jax.random.key(0), jnp.zeros((1, cfg.n_ctx), jnp.int32))["params"])


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["none", "dots", "block"])
def test_scanned_loss_and_gradients_equal_per_layer(remat):
    cfg = dataclasses.replace(TINY, remat=remat)
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
    params = per_layer_params(cfg)
    tokens_BxT1 = jax.random.randint(jax.random.key(1), (2, cfg.n_ctx + 1), 0, cfg.vocab_size)

    def loss_and_grads(c, p):
        loss_fn = model_lib.lm_loss_fn(model_lib.GPT1(c))
        grad_fn = jax.jit(jax.value_and_grad(lambda q: loss_fn(q, tokens_BxT1, None, True), has_aux=True))
        (loss, _), grads = grad_fn(p)
        return loss, grads

    loss, grads = loss_and_grads(cfg, params)
    scanned_loss, scanned_grads = loss_and_grads(scanned_cfg, model_lib.stack_layers(params))
    np.testing.assert_allclose(scanned_loss, loss, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                           model_lib.unstack_layers(scanned_grads), grads)


def test_stack_unstack_round_trip_and_match_the_scanned_layout():
    params = per_layer_params(TINY)
    stacked = model_lib.stack_layers(params)
    scanned = per_layer_params(dataclasses.replace(TINY, scan_layers=True))
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(scanned)
    assert jax.tree_util.tree_map(jnp.shape, stacked) == jax.tree_util.tree_map(jnp.shape, scanned)
    back = model_lib.unstack_layers(stacked)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
    assert model_lib.per_layer_params(stacked).keys() == params.keys()


def test_scanned_parameters_carry_the_layers_axis_first():
    boxed = jax.eval_shape(model_lib.GPT1(dataclasses.replace(TINY, scan_layers=True)).init,
                           jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    kernel = boxed["h"]["attn"]["c_attn"]["kernel"]
    assert kernel.names == ("layers", "embed", None, "heads", "kv")
    assert kernel.value.shape == (TINY.n_layer, 16, 3, 2, 8)


@pytest.mark.slow
def test_scanned_decoding_matches_a_full_forward_pass():
    cfg = dataclasses.replace(TINY, scan_layers=True)
    params = model_lib.stack_layers(per_layer_params(TINY))
    tokens_BxT = jax.random.randint(jax.random.key(2), (2, 6), 0, cfg.vocab_size)
    model = model_lib.GPT1(cfg)
    full_BxTxV, _ = jax.jit(model.apply)({"params": params}, tokens_BxT)
    decode = jax.jit(lambda variables, tokens, positions: model.apply(
        variables, tokens, decode=True, positions_BxT=positions, mutable=["cache"]))
    cache = model_lib.init_cache(cfg, 2, 8)
    (prefill_BxTxV, _), state = decode({"params": params, "cache": cache}, tokens_BxT[:, :5],
                                       jnp.arange(5)[None])
    (last_Bx1xV, _), _ = decode({"params": params, **state}, tokens_BxT[:, 5:], jnp.full((1, 1), 5))
    np.testing.assert_allclose(prefill_BxTxV, full_BxTxV[:, :5], atol=1e-5)
    np.testing.assert_allclose(last_Bx1xV, full_BxTxV[:, 5:], atol=1e-5)


def test_float32_with_cudnn_attention_is_refused():
    with pytest.raises(ConfigError, match="attention_backend='cudnn' needs model.dtype"):
        model_lib.ModelConfig(attention="dot_product", attention_backend="cudnn", attn_pdrop=0.0)
    model_lib.ModelConfig(attention="dot_product", attention_backend="cudnn", attn_pdrop=0.0,
                          dtype="bfloat16")
