"""The KV-cached decoder: same logits and tokens as recomputing everything, batched rows
independent of their neighbours, sampling filters that keep what they promise; the one
prompt policy of every text it writes."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import demo_text
from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib
from gpt1_jax.errors import UserError

# A large init spread, so that greedy decoding does not just repeat one token.
CFG = model_lib.ModelConfig(vocab_size=97, n_ctx=32, n_layer=2, n_head=4, d_model=32, d_ff=128,
                            init_std=0.3)
PROMPTS = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1]]


@pytest.fixture(scope="module")
def params():
    model = model_lib.GPT1(CFG)
    return nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


@pytest.mark.slow
def test_prefill_then_single_steps_give_the_full_forward_logits(params):
    model = model_lib.GPT1(CFG)
    tokens_BxT = jax.random.randint(jax.random.key(1), (2, 12), 0, CFG.vocab_size)
    full_BxTxV, _ = model.apply({"params": params}, tokens_BxT)
    (logits_Bx5xV, _), state = model.apply(
        {"params": params, "cache": model_lib.init_cache(CFG, 2, 12)}, tokens_BxT[:, :5],
        decode=True, mutable=["cache"])
    steps = [logits_Bx5xV]
    for t in range(5, 12):
        (logits_Bx1xV, _), state = model.apply(
            {"params": params, "cache": state["cache"]}, tokens_BxT[:, t:t + 1],
            positions_BxT=jnp.full((2, 1), t), decode=True, mutable=["cache"])
        steps.append(logits_Bx1xV)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full_BxTxV, atol=1e-5)


@pytest.mark.slow
def test_cached_greedy_decoding_equals_recomputation_token_for_token(params):
    cached = generate_lib.generate(CFG, params, PROMPTS, 20)
    recomputed = generate_lib.generate(CFG, params, PROMPTS, 20, use_cache=False)
    assert cached == recomputed
    assert all(len(row) == 20 for row in cached)
    assert len({t for row in cached for t in row}) >= 3  # not a degenerate repetition


@pytest.mark.slow
def test_a_row_decodes_the_same_alone_as_in_a_padded_batch(params):
    batched = generate_lib.generate(CFG, params, PROMPTS, 20)
    alone = [generate_lib.generate(CFG, params, [p], 20)[0] for p in PROMPTS]
    assert batched == alone


@pytest.mark.slow
def test_sampling_with_cache_equals_sampling_by_recomputation(params):
    sampling = generate_lib.Sampling(temperature=0.9, top_k=20, top_p=0.9)
    rng = jax.random.key(7)
    cached = generate_lib.generate(CFG, params, PROMPTS, 16, sampling, rng)
    assert cached == generate_lib.generate(CFG, params, PROMPTS, 16, sampling, rng, use_cache=False)
    assert cached != generate_lib.generate(CFG, params, PROMPTS, 16, sampling, jax.random.key(8))


def test_stop_token_ends_a_row_and_the_others_go_on(params):
    free = generate_lib.generate(CFG, params, PROMPTS, 20)
    stop = free[0][3]
    stopped = generate_lib.generate(CFG, params, PROMPTS, 20, stop_token=stop)
    for free_row, row in zip(free, stopped):
        cut = free_row.index(stop) if stop in free_row else len(free_row)
        assert row == free_row[:cut]
    new_BxN, num_new_B = generate_lib.generate_tokens(
        params, *generate_lib.pad_prompts(PROMPTS), jax.random.key(0), jnp.int32(stop),
        config=CFG, sampling=generate_lib.GREEDY, max_new_tokens=20)
    assert np.all(np.asarray(new_BxN)[0, int(num_new_B[0]):] == generate_lib.PAD_ID)


@pytest.mark.slow
def test_compiled_once_per_shape(params):
    kwargs = dict(config=CFG, sampling=generate_lib.Sampling(temperature=0.5), max_new_tokens=6)
    before = generate_lib.generate_tokens._cache_size()
    for prompts in (PROMPTS, [[4, 4, 4, 4, 4, 4, 4, 4, 4], [1], [2]], PROMPTS):
        generate_lib.generate_tokens(params, *generate_lib.pad_prompts(prompts), jax.random.key(0),
                                     jnp.int32(-1), **kwargs)
    assert generate_lib.generate_tokens._cache_size() == before + 1
    generate_lib.generate_tokens(params, *generate_lib.pad_prompts([[1, 2]]), jax.random.key(0),
                                 jnp.int32(-1), **kwargs)
    assert generate_lib.generate_tokens._cache_size() == before + 2


def _draws(logits, sampling, n=2000):
    logits_NxV = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
    return set(np.asarray(generate_lib.sample_next(logits_NxV, jax.random.key(0), sampling)).tolist())


def test_sampling_filters():
    logits = np.log([0.05, 0.5, 0.15, 0.3])  # ranks: 1, 3, 2, 0
    assert _draws(logits, generate_lib.GREEDY) == {1}
    assert _draws(logits, generate_lib.Sampling(top_k=1)) == {1}
    assert _draws(logits, generate_lib.Sampling(top_k=2)) == {1, 3}
    assert _draws(logits, generate_lib.Sampling(top_p=0.75)) == {1, 3}      # 0.5 + 0.3 reach it
    assert _draws(logits, generate_lib.Sampling(top_p=0.85)) == {1, 3, 2}
    assert _draws(logits, generate_lib.Sampling(top_p=0.4)) == {1}
    assert _draws(logits, generate_lib.Sampling()) == {0, 1, 2, 3}
    assert _draws(logits, generate_lib.Sampling(temperature=0.05)) == {1}   # cold: nearly argmax


def test_rejects_what_does_not_fit(params):
    with pytest.raises(ValueError, match="exceeds the context"):
        generate_lib.generate(CFG, params, [[1] * 20], 13)
    with pytest.raises(ValueError, match="at least one token"):
        generate_lib.generate(CFG, params, [[1], []], 4)
    with pytest.raises(ValueError, match="top_p"):
        generate_lib.generate(CFG, params, [[1]], 4, generate_lib.Sampling(top_p=0.0))
    with pytest.raises(ValueError, match="outside"):
        generate_lib.generate(CFG, params, [[CFG.vocab_size]], 4)


class _LetterTokenizer:
    """A letter per token; spaces are no token at all."""

    def encode(self, text):
        return [ord(c) % CFG.vocab_size for c in text if not c.isspace()]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("prompt, says", [("", "is empty"), ("   ", "has no tokens"),
                                          ("x" * CFG.n_ctx, "32 tokens, leaving no room")])
def test_every_text_decoder_refuses_a_prompt_that_cannot_be_kept_whole_as_a_user_error(params, prompt, says):
    # The job's end-of-run text, the sample command's and the library's share one policy,
    # and a bad prompt is the user's to fix: one `error:` line naming the setting.
    tokenizer = _LetterTokenizer()
    loaded = types.SimpleNamespace(config=CFG, params=params, tokenizer=tokenizer)
    decoders = [lambda: generate_lib.continue_texts(CFG, params, tokenizer, [prompt], 4, name="train.sample_prompt"),
                lambda: demo_text.continuations(CFG, params, tokenizer, prompt, 4, name="train.sample_prompt"),
                lambda: generate_lib.sample_text(loaded, ["ok", prompt], 4, generate_lib.GREEDY)]
    for decode in decoders:
        with pytest.raises(UserError, match=says):
            decode()
    with pytest.raises(UserError, match="^train.sample_prompt "):
        decoders[0]()
