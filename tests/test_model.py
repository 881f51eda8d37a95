"""The model is GPT-1 exactly: parameter count, causality, a block against equations."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import model as model_lib

TINY = model_lib.ModelConfig(vocab_size=97, n_ctx=16, n_layer=2, n_head=4, d_model=32, d_ff=128)


def _init(cfg, t=8, seed=0):
    model = model_lib.GPT1(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, t), jnp.int32))["params"])
    return model, params


def test_paper_config_has_the_papers_parameter_count():
    cfg = model_lib.ModelConfig()  # the defaults are the paper's model
    model = model_lib.GPT1(cfg)
    shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32)), jax.random.key(0))
    assert model_lib.count_params(shapes["params"]) == 116_534_784


def test_fine_tuning_specials_add_three_embedding_rows():
    base = model_lib.count_params(_init(TINY)[1])
    with_specials = model_lib.count_params(_init(dataclasses.replace(TINY, n_special=3))[1])
    assert with_specials - base == 3 * TINY.d_model


@pytest.mark.parametrize("attention, block", [
    pytest.param("einsum", 0, marks=pytest.mark.slow), ("einsum", 4),
    pytest.param("dot_product", 0, marks=pytest.mark.slow)])
def test_changing_a_token_never_changes_earlier_logits(attention, block):
    cfg = dataclasses.replace(TINY, attention=attention, attention_block=block)
    model, params = _init(cfg, t=12)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    logits, _ = model.apply({"params": params}, tokens)
    for t in (0, 5, 11):
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
        logits_changed, _ = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(np.asarray(logits[:, :t]), np.asarray(logits_changed[:, :t]))
        assert not np.allclose(np.asarray(logits[:, t:]), np.asarray(logits_changed[:, t:]))


@pytest.mark.slow
def test_attention_implementations_agree():
    model_e, params = _init(dataclasses.replace(TINY, attention="einsum"), t=10)
    model_d = model_lib.GPT1(dataclasses.replace(TINY, attention="dot_product"))
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, TINY.vocab_size)
    np.testing.assert_allclose(model_e.apply({"params": params}, tokens)[0],
                               model_d.apply({"params": params}, tokens)[0], atol=2e-5)


# 16 = 4 blocks of 4; blocks of 5 leave a ragged last one
@pytest.mark.slow
@pytest.mark.parametrize("block", [4, 5])
def test_block_causal_attention_equals_full_attention(block):
    model_full, params = _init(dataclasses.replace(TINY, attention_block=0), t=16)
    model_blocked = model_lib.GPT1(dataclasses.replace(TINY, attention_block=block))
    tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, TINY.vocab_size)

    def mean_logit(model, params):
        return jnp.mean(model.apply({"params": params}, tokens)[0] ** 2)
    full, grads_full = jax.jit(jax.value_and_grad(lambda p: mean_logit(model_full, p)))(params)
    blocked, grads_blocked = jax.jit(jax.value_and_grad(lambda p: mean_logit(model_blocked, p)))(params)
    forward = lambda model: jax.jit(model.apply)({"params": params}, tokens)[0]
    np.testing.assert_allclose(forward(model_blocked), forward(model_full), rtol=0, atol=1e-6)
    np.testing.assert_allclose(blocked, full, rtol=1e-6)
    for g_b, g_f in zip(jax.tree_util.tree_leaves(grads_blocked), jax.tree_util.tree_leaves(grads_full)):
        np.testing.assert_allclose(g_b, g_f, rtol=0, atol=1e-6)


def _numpy_layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)   # two-pass variance
    return (x - mean) / np.sqrt(var + eps) * g + b


def _numpy_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _numpy_block(x, p, n_head):
    """One GPT-1 block from the paper's equations: post-LN, tanh GELU, eps 1e-5."""
    t, d = x.shape
    k = d // n_head
    w_qkv = p["attn"]["c_attn"]["kernel"].reshape(d, 3 * d)
    b_qkv = p["attn"]["c_attn"]["bias"].reshape(3 * d)
    q, key, v = np.split(x @ w_qkv + b_qkv, 3, axis=-1)
    heads = []
    for h in range(n_head):
        s = slice(h * k, (h + 1) * k)
        scores = q[:, s] @ key[:, s].T / np.sqrt(k)
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        heads.append(probs @ v[:, s])
    a = np.concatenate(heads, -1) @ p["attn"]["c_proj"]["kernel"].reshape(d, d) + p["attn"]["c_proj"]["bias"]
    n = _numpy_layer_norm(x + a, p["ln_1"]["scale"], p["ln_1"]["bias"])
    m = _numpy_gelu(n @ p["mlp"]["c_fc"]["kernel"] + p["mlp"]["c_fc"]["bias"])
    m = m @ p["mlp"]["c_proj"]["kernel"] + p["mlp"]["c_proj"]["bias"]
    return _numpy_layer_norm(n + m, p["ln_2"]["scale"], p["ln_2"]["bias"])


def test_one_block_matches_a_numpy_reference():
    cfg = TINY
    block = model_lib.Block(cfg)
    # Input with a large mean: a one-pass variance or eps 1e-6 would show up here.
    x = np.asarray(jax.random.normal(jax.random.key(3), (1, 9, cfg.d_model))) * 3 + 20
    params = nn.meta.unbox(block.init(jax.random.key(4), x, True)["params"])
    # Non-trivial LayerNorm gains and biases, so their placement is checked too.
    params = jax.tree_util.tree_map(np.asarray, params)
    for ln in ("ln_1", "ln_2"):
        params[ln]["scale"] = 1 + 0.1 * np.arange(cfg.d_model, dtype=np.float32) / cfg.d_model
        params[ln]["bias"] = 0.01 * np.arange(cfg.d_model, dtype=np.float32)
    params["attn"]["c_attn"]["bias"] = 0.02 * np.ones_like(params["attn"]["c_attn"]["bias"])
    got = np.asarray(block.apply({"params": params}, jnp.asarray(x), True))[0]
    want = _numpy_block(x[0].astype(np.float64), params, cfg.n_head)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_output_head_is_tied_to_the_token_table():
    model, params = _init(TINY)
    tokens = jnp.arange(6)[None]
    logits, hidden = model.apply({"params": params}, tokens)
    table = params["tokens_embed"]["embedding"]
    np.testing.assert_allclose(logits, np.einsum("btd,vd->btv", hidden, table), atol=1e-5)
    assert "bias" not in params["tokens_embed"]


def test_dropout_is_active_only_in_training():
    model, params = _init(TINY)
    tokens = jnp.arange(8)[None]
    eval_a, _ = model.apply({"params": params}, tokens)
    eval_b, _ = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(eval_a, eval_b)
    train, _ = model.apply({"params": params}, tokens, deterministic=False,
                           rngs={"dropout": jax.random.key(5)})
    assert not np.allclose(eval_a, train)


def test_sequences_longer_than_the_context_are_rejected():
    model, params = _init(TINY)
    with pytest.raises(ValueError, match="n_ctx"):
        model.apply({"params": params}, jnp.zeros((1, TINY.n_ctx + 1), jnp.int32))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model.attention"):
        model_lib.ModelConfig(attention="flash")
    with pytest.raises(ValueError, match="model.d_model"):
        model_lib.ModelConfig(d_model=100, n_head=12)
