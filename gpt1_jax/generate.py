"""Text continuation with a key/value cache: read the prompt once, then one token a step.

    new_ids = generate(config, params, [tokenizer.encode("the house was")],
                       max_new_tokens=64, sampling=Sampling(temperature=0.8, top_k=40))

Prompts of different lengths go in one batch, right-padded: row b's prompt fills
positions 0..len_b-1 and its n-th new token is read at position len_b+n-1, so every
row sees exactly the positions it would see alone. The cache has one slot per
position (see `model.CausalSelfAttention`): a row's padding lands in slots after its
prompt, where its own new tokens overwrite it before any query can see it, so no
padding mask is needed.

The whole decode (prefill, then a `jax.lax.while_loop` of single-token steps that
ends early once every row has produced `stop_token`) is one jitted function,
compiled once per (batch, prompt length, max_new_tokens, Sampling). `use_cache=False`
runs the same loop but recomputes the whole sequence at every step: the reference
the cached decoder must agree with, and the baseline of `bench_generate.py`.
"""
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import model as model_lib
from gpt1_jax.errors import ConfigError

# Fills the token slots of `generate_tokens`'s output after each row's last new token.
PAD_ID = -1


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits.

    temperature 0 is greedy (argmax); otherwise the logits are divided by the
    temperature, cut to the `top_k` largest (0: no cut), then to the smallest set
    whose probability reaches `top_p` (1.0: no cut), and a token is drawn.
    """
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def check(self, vocab_rows: int) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if not 0 <= self.top_k <= vocab_rows:
            raise ConfigError(f"top_k={self.top_k} must be in [0, {vocab_rows}] (0: no limit)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")


GREEDY = Sampling(temperature=0.0)


def sample_next(logits_BxV: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """One token id per row, int32 [B], drawn from `logits_BxV` as `sampling` says."""
    if sampling.temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
    if sampling.top_k > 0:
        kth_largest_Bx1 = jax.lax.top_k(logits_BxV, sampling.top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
    if sampling.top_p < 1.0:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        # Keep each token while the mass of the likelier ones is still short of top_p:
        # that always keeps the likeliest and stops right after the mass reaches top_p.
        num_kept_B = jnp.sum(mass_before_BxV < sampling.top_p, axis=-1)
        smallest_kept_Bx1 = jnp.take_along_axis(sorted_BxV, num_kept_B[:, None] - 1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < smallest_kept_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def _tied_head(params, dtype):
    """The output head of `GPT1.logits` as a function of hidden states [B, D] -> logits [B, V].

    It multiplies by the token table transposed once, outside the decoding loop: on
    CPU, XLA's matrix-vector product streams a [D, V] table faster than the [V, D] one
    (a cached 256-token decode of the demo model took 1.5x less time), and with one
    token per step this product is most of a cached step.
    """
    table_DxV = params["tokens_embed"]["embedding"].T.astype(dtype)
    return lambda hidden_BxD: jnp.dot(hidden_BxD.astype(dtype), table_DxV,
                                      preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("config", "sampling", "max_new_tokens", "use_cache"))
def generate_tokens(params, prompt_BxP: jax.Array, lengths_B: jax.Array, rng: jax.Array,
                    stop_token: jax.Array, *, config: model_lib.ModelConfig, sampling: Sampling,
                    max_new_tokens: int, use_cache: bool = True):
    """Continues right-padded prompts by up to `max_new_tokens` tokens each.

    `prompt_BxP` holds row b's prompt in its first `lengths_B[b]` (>= 1) entries;
    `stop_token` (an int, -1 for none) ends a row when produced. Needs
    P + max_new_tokens <= config.n_ctx. Returns `(new_BxN, num_new_B)`: the new
    tokens (N = max_new_tokens), `num_new_B[b]` of them before the stop token, and
    PAD_ID after those.
    """
    model = model_lib.GPT1(config)
    batch, prompt_len = prompt_BxP.shape
    slots = prompt_len + max_new_tokens
    rows_B = jnp.arange(batch)
    head = _tied_head(params, jnp.dtype(config.dtype))

    def logits_at(hidden_BxTxD, position_B):
        return head(hidden_BxTxD[rows_B, position_B])

    if use_cache:
        def prefill():
            cache = model_lib.init_cache(config, batch, slots)
            (_, hidden_BxPxD), state = model.apply(
                {"params": params, "cache": cache}, prompt_BxP, with_logits=False, decode=True,
                mutable=["cache"])
            return logits_at(hidden_BxPxD, lengths_B - 1), state["cache"]

        def step(cache, token_B, position_B):
            (_, hidden_Bx1xD), state = model.apply(
                {"params": params, "cache": cache}, token_B[:, None], positions_BxT=position_B[:, None],
                with_logits=False, decode=True, mutable=["cache"])
            return head(hidden_Bx1xD[:, 0]), state["cache"]
    else:
        # The whole sequence so far sits in a fixed buffer (one compiled shape); causal
        # attention keeps the not-yet-written slots after a position from mattering.
        def prefill():
            buffer_BxS = jnp.zeros((batch, slots), jnp.int32).at[:, :prompt_len].set(prompt_BxP)
            _, hidden_BxSxD = model.apply({"params": params}, buffer_BxS, with_logits=False)
            return logits_at(hidden_BxSxD, lengths_B - 1), buffer_BxS

        def step(buffer_BxS, token_B, position_B):
            buffer_BxS = buffer_BxS.at[rows_B, position_B].set(token_B)
            _, hidden_BxSxD = model.apply({"params": params}, buffer_BxS, with_logits=False)
            return logits_at(hidden_BxSxD, position_B), buffer_BxS

    logits_BxV, state = prefill()
    rng, first_rng = jax.random.split(rng)
    first_B = sample_next(logits_BxV, first_rng, sampling)
    new_BxN = jnp.full((batch, max_new_tokens), PAD_ID, jnp.int32).at[:, 0].set(first_B)
    done_B = first_B == stop_token

    def not_finished(carry):
        i, _, done_B, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def one_token(carry):
        i, new_BxN, done_B, state, rng = carry
        logits_BxV, state = step(state, new_BxN[:, i - 1], lengths_B + i - 1)
        rng, step_rng = jax.random.split(rng)
        token_B = sample_next(logits_BxV, step_rng, sampling)
        new_BxN = new_BxN.at[:, i].set(token_B)
        return i + 1, new_BxN, done_B | (token_B == stop_token), state, rng

    steps, new_BxN, _, _, _ = jax.lax.while_loop(
        not_finished, one_token, (jnp.int32(1), new_BxN, done_B, state, rng))

    is_stop_BxN = (new_BxN == stop_token) & (jnp.arange(max_new_tokens) < steps)[None, :]
    num_new_B = jnp.where(jnp.any(is_stop_BxN, axis=-1), jnp.argmax(is_stop_BxN, axis=-1), steps)
    new_BxN = jnp.where(jnp.arange(max_new_tokens)[None, :] < num_new_B[:, None], new_BxN, PAD_ID)
    return new_BxN, num_new_B.astype(jnp.int32)


def pad_prompts(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists into (prompt_BxP int32, lengths_B int32)."""
    lengths_B = np.array([len(p) for p in prompts], np.int32)
    prompt_BxP = np.zeros((len(prompts), int(lengths_B.max())), np.int32)
    for row, prompt in enumerate(prompts):
        prompt_BxP[row, :len(prompt)] = prompt
    return prompt_BxP, lengths_B


def generate(config: model_lib.ModelConfig, params, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, sampling: Sampling = GREEDY, rng: jax.Array | None = None,
             stop_token: int | None = None, use_cache: bool = True) -> list[list[int]]:
    """The new token ids for each prompt (without the prompt and without `stop_token`).

    Each prompt needs at least one token (GPT-1 has no start-of-text token) and the
    longest prompt plus `max_new_tokens` must fit in the context.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > config.n_ctx:
        raise ConfigError(f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} "
                         f"exceeds the context of {config.n_ctx} tokens")
    sampling.check(config.embedding_rows)
    bad = [i for p in prompts for i in p if not 0 <= i < config.embedding_rows]
    if bad:
        raise ConfigError(f"token id {bad[0]} is outside the model's table of {config.embedding_rows}")
    prompt_BxP, lengths_B = pad_prompts(prompts)
    new_BxN, num_new_B = generate_tokens(
        params, prompt_BxP, lengths_B, jax.random.key(0) if rng is None else rng,
        jnp.int32(-1 if stop_token is None else stop_token), config=config, sampling=sampling,
        max_new_tokens=max_new_tokens, use_cache=use_cache)
    new_BxN, num_new_B = np.asarray(new_BxN), np.asarray(num_new_B)
    return [row[:n].tolist() for row, n in zip(new_BxN, num_new_B)]


def encode_prompt(tokenizer, prompt: str, n_ctx: int, name: str = "the prompt") -> list[int]:
    """The prompt's token ids under the one prompt policy: a prompt is kept whole, so it
    needs at least one token (GPT-1 has no start-of-text token) and must leave room for a
    new one in the context. Anything else is the user's to fix (`name` says which setting)."""
    if not prompt:
        raise ConfigError(f"{name} is empty; GPT-1 needs at least one token to start from")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError(f"{name} {prompt!r} has no tokens; GPT-1 needs at least one to start from")
    if len(ids) >= n_ctx:
        raise ConfigError(f"{name} has {len(ids)} tokens, leaving no room for a new one in the context "
                          f"of {n_ctx}; shorten it")
    return ids


def continue_texts(config: model_lib.ModelConfig, params, tokenizer, prompts: Sequence[str],
                   max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0, num_samples: int = 1,
                   stop_token: int | None = None, name: str = "the prompt") -> list[str]:
    """The text that follows each prompt, without the prompt: `num_samples` continuations of
    each, in prompt-major order, drawn from `jax.random.key(seed)`. At most `max_new_tokens`
    tokens each, fewer where the longest prompt leaves less room in the context."""
    prompts_ids = [encode_prompt(tokenizer, prompt, config.n_ctx, name) for prompt in prompts]
    room = config.n_ctx - max(len(ids) for ids in prompts_ids)
    rows = [ids for ids in prompts_ids for _ in range(num_samples)]
    new_ids = generate(config, params, rows, min(max_new_tokens, room), sampling, jax.random.key(seed),
                       stop_token=stop_token)
    return [continuation_text(tokenizer, ids, new) for ids, new in zip(rows, new_ids)]


def continuation_text(tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text `new_ids` add after the prompt.

    Decoded together with the prompt and then cut, because a tokenizer may render a piece
    differently at the start of a text (sentencepiece drops a leading space).
    """
    prompt_text = tokenizer.decode(list(prompt_ids))
    full_text = tokenizer.decode(list(prompt_ids) + list(new_ids))
    if full_text.startswith(prompt_text):
        return full_text[len(prompt_text):]
    return tokenizer.decode(list(new_ids))


def sample_text(loaded, prompts: Sequence[str], max_new_tokens: int, sampling: Sampling, seed: int = 0,
                num_samples: int = 1, stop_token: int = -1) -> list[str]:
    """`continue_texts` by `loaded` (a loading.LoadedModel), each after its prompt as the
    tokenizer writes it (the GPT-1 BPE lower-cases). `stop_token` -1: none."""
    if loaded.tokenizer is None:
        raise ConfigError("the model records no tokenizer: cannot read the prompt")
    texts = continue_texts(loaded.config, loaded.params, loaded.tokenizer, prompts, max_new_tokens, sampling,
                           seed, num_samples, None if stop_token < 0 else stop_token)
    tokenizer = loaded.tokenizer
    return [tokenizer.decode(tokenizer.encode(prompts[i // num_samples])) + text for i, text in enumerate(texts)]
