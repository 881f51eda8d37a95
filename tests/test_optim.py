"""The optimiser is the paper's: the lr schedule's formula and the weight-decay mask."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt1_jax import model as model_lib
from gpt1_jax import optim


def test_warmup_cosine_schedule_matches_the_formula():
    cfg = optim.OptimizerConfig(learning_rate=2.5e-4, warmup_steps=2000, total_steps=10_000)
    lr = optim.learning_rate_schedule(cfg)
    peak, w, s = 2.5e-4, 2000, 10_000
    cosine = lambda step: peak * 0.5 * (1 + math.cos(math.pi * (step - w) / (s - w)))
    expected = {0: 0.0, 1000: peak / 2, 2000: peak, 6000: cosine(6000), 10_000: 0.0,
                9_999: cosine(9_999), 500: peak * 500 / 2000}
    for step, want in expected.items():
        assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=peak * 1e-6), step
    assert float(lr(6000)) == pytest.approx(peak / 2, rel=1e-5)  # mid-decay is half the peak


def test_warmup_linear_schedule_for_fine_tuning():
    cfg = optim.OptimizerConfig(learning_rate=6.25e-5, schedule="warmup_linear",
                                warmup_steps=10, total_steps=110)
    lr = optim.learning_rate_schedule(cfg)
    assert float(lr(5)) == pytest.approx(6.25e-5 / 2)
    assert float(lr(10)) == pytest.approx(6.25e-5)
    assert float(lr(60)) == pytest.approx(6.25e-5 / 2)
    assert float(lr(110)) == 0.0


def test_decay_mask_holds_exactly_the_non_bias_non_layernorm_weights():
    cfg = model_lib.ModelConfig(vocab_size=50, n_ctx=8, n_layer=2, n_head=2, d_model=8, d_ff=16)
    params = nn.meta.unbox(jax.eval_shape(
        lambda r: model_lib.GPT1(cfg).init(r, jnp.zeros((1, 4), jnp.int32)), jax.random.key(0))["params"])
    mask = optim.decay_mask(params)
    decayed, kept = set(), set()
    for path, flag in jax.tree_util.tree_leaves_with_path(mask):
        (decayed if flag else kept).add(jax.tree_util.keystr(path))
    expected_decayed = {"['tokens_embed']['embedding']", "['positions_embed']['embedding']"}
    for i in range(2):
        for module in ("['attn']['c_attn']", "['attn']['c_proj']", "['mlp']['c_fc']", "['mlp']['c_proj']"):
            expected_decayed.add(f"['h_{i}']{module}['kernel']")
    assert decayed == expected_decayed
    assert all(k.endswith("['bias']") or k.endswith("['scale']") for k in kept)
    assert len(kept) == 2 * (4 + 4)  # per block: 4 linear biases + 2 LayerNorms x (scale, bias)


def test_weight_decay_is_decoupled_and_masked():
    """With zero gradients, only masked-in weights shrink, by lr * wd * w."""
    cfg = optim.OptimizerConfig(learning_rate=0.1, warmup_steps=0, total_steps=10,
                                schedule="warmup_constant", weight_decay=0.5, max_grad_norm=0)
    tx = optim.make_optimizer(cfg)
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    state = tx.init(params)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(new["dense"]["bias"], 1.0)


def test_gradients_are_clipped_to_global_norm_one():
    """Two steps whose gradients differ in scale: Adam's update then depends on whether
    the first gradient was clipped, so the chain must equal clip-then-AdamW."""
    cfg = optim.OptimizerConfig(learning_rate=0.1, warmup_steps=0, total_steps=10,
                                schedule="warmup_constant", weight_decay=0.0)
    params = {"w": {"kernel": jnp.zeros(4)}}
    grads = [{"w": {"kernel": jnp.array([30.0, 40.0, 0.0, 0.0])}},   # norm 50: clipped to 1
             {"w": {"kernel": jnp.array([0.0, 0.3, 0.4, 0.0])}}]    # norm 0.5: untouched
    adamw = optax.adamw(0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)

    def run(tx):
        state, p = tx.init(params), params
        for g in grads:
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
        return np.asarray(p["w"]["kernel"])

    ours = run(optim.make_optimizer(cfg))
    np.testing.assert_allclose(ours, run(optax.chain(optax.clip_by_global_norm(1.0), adamw)), rtol=1e-6)
    assert not np.allclose(ours, run(adamw), rtol=1e-3)


def test_schedule_name_is_checked():
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optim.OptimizerConfig(schedule="cosine")
