"""Log-likelihoods and greedy continuations of many token sequences, batched at a few shapes.

The harness sends requests of every length; jitting each exact shape would compile once per
request. Rows are instead sorted by length, cut into batches of `batch_size` rows and padded
to the next length bucket (powers of two from `MIN_BUCKET` up to the context), so a task
compiles at most log2(n_ctx / MIN_BUCKET) + 1 programs of each kind (6 for a 512-token
context). A batch's rows are split over the local devices (a mesh whose `data` axis is
all of them); the parameters are replicated. Padding rows and positions are never scored.

No JAX code here knows about the harness: `harness/model.py` turns requests into rows.
"""
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.errors import ConfigError

MIN_BUCKET = 16
# Positions whose logits are computed at once (the last chunk of a batch is padded), by platform.
# On a CPU a chunk of 64 positions' logits (10 MB at 40k tokens) stays in cache between the
# head's matmul and the reductions that read it: evaluate_lm on a book (tiny model) took 17 s
# of CPU time at 16, 32 or 64 positions, 36 s at 256 and 37 s at 512, with the same result.
HEAD_CHUNK_TOKENS = {"cpu": 64}
DEFAULT_HEAD_CHUNK_TOKENS = 256   # accelerators: fewer, larger sequential steps (not measured)


def bucket(length: int, n_ctx: int) -> int:
    """The padded length of a row of `length` tokens: the next power of two, at most n_ctx."""
    padded = MIN_BUCKET
    while padded < length:
        padded *= 2
    return min(padded, n_ctx)


def buckets(n_ctx: int) -> list[int]:
    """Every padded length `bucket` can return for this context."""
    return sorted({bucket(n, n_ctx) for n in range(1, n_ctx + 1)})


@dataclasses.dataclass(frozen=True)
class Row:
    """`inputs` fed to the model; the last `num_scored` targets (inputs[1:] + [next]) scored.

    `targets[i]` is the token predicted after `inputs[: i + 1]`: the caller passes the
    whole sequence as `tokens` and the scored tail is the last `num_scored` of tokens[1:].
    """
    tokens: tuple[int, ...]
    num_scored: int


class Scorer:
    """Sums of log-probabilities of scored tokens, and whether greedy decoding picks them all."""

    def __init__(self, config: model_lib.ModelConfig, params, batch_size: int = 32,
                 devices: Sequence[jax.Device] | None = None, progress: bool = True):
        self.config = config
        self.n_ctx = config.n_ctx
        devices = list(devices or jax.local_devices())
        self.mesh = sharding_lib.make_mesh({"data": -1}, devices)
        head_chunk = HEAD_CHUNK_TOKENS.get(devices[0].platform, DEFAULT_HEAD_CHUNK_TOKENS)
        # Every device gets the same number of rows.
        self.batch_size = -(-max(1, batch_size) // len(devices)) * len(devices)
        self._rows_sharding = NamedSharding(self.mesh, PartitionSpec("data", None))
        self._vector_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.set_params(params)
        self.progress = progress
        model = model_lib.GPT1(config)

        @jax.jit
        def target_logprobs(params, tokens_BxT):
            # T - 1 <= n_ctx inputs; the last token is only a target.
            _, hidden_BxTxD = model.apply({"params": params}, tokens_BxT[:, :-1], with_logits=False)
            batch, length, width = hidden_BxTxD.shape
            table_VxD = params["tokens_embed"]["embedding"].astype(hidden_BxTxD.dtype)
            positions = batch * length
            padding = -positions % head_chunk
            hidden_CxNxD = jnp.pad(hidden_BxTxD.reshape(positions, width), ((0, padding), (0, 0))
                                   ).reshape(-1, head_chunk, width)
            targets_CxN = jnp.pad(tokens_BxT[:, 1:].reshape(positions), (0, padding)).reshape(-1, head_chunk)

            # The tied head a chunk of positions at a time: the [B, T, V] logits of a whole
            # batch (330 MB at 32 x 64 x 40k) written and read back cost more than the
            # model, and their fresh pages were most of evaluate_lm's system time.
            def head(chunk):
                hidden_NxD, targets_N = chunk
                logits_NxV = jnp.dot(hidden_NxD, table_VxD.T, preferred_element_type=jnp.float32)
                target_N = jnp.take_along_axis(logits_NxV, targets_N[:, None], axis=-1)[:, 0]
                # A tie with another token counts as greedy (argmax would pick the lower id).
                return (target_N - jax.nn.logsumexp(logits_NxV, axis=-1),
                        target_N >= jnp.max(logits_NxV, axis=-1))
            logp_CxN, greedy_CxN = jax.lax.map(head, (hidden_CxNxD, targets_CxN))
            return (logp_CxN.reshape(-1)[:positions].reshape(batch, length),
                    greedy_CxN.reshape(-1)[:positions].reshape(batch, length))

        self._target_logprobs = target_logprobs
        self.shapes_run: set[tuple] = set()   # the padded shapes run, for inspection

    def set_params(self, params) -> None:
        """Scores with `params` from now on (the same shapes: no new compilation)."""
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))

    def compiled_programs(self) -> int:
        """Programs compiled so far for scoring (the jit's cache entries)."""
        return self._target_logprobs._cache_size()

    def score(self, rows: Sequence[Row], desc: str = "scoring") -> list[tuple[float, bool]]:
        """(sum of the scored tokens' log-probabilities, all of them the argmax) per row."""
        for row in rows:
            if len(row.tokens) > self.n_ctx + 1:
                raise ConfigError(f"a row of {len(row.tokens)} tokens exceeds the context of "
                                  f"{self.n_ctx} (+1 predicted) tokens")
            if not 1 <= row.num_scored <= len(row.tokens) - 1:
                raise ConfigError(f"a row of {len(row.tokens)} tokens cannot score {row.num_scored}")
        # Longest first: a batch's rows have similar lengths, so little padding is computed,
        # and the first batch is the largest (memory trouble shows at once).
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        for first in tqdm.trange(0, len(order), self.batch_size, desc=desc, disable=not self.progress):
            chunk = [rows[i] for i in order[first:first + self.batch_size]]
            # The model reads tokens[:-1]: an (n_ctx + 1)-token row fills the context exactly.
            length = bucket(max(len(r.tokens) for r in chunk) - 1, self.n_ctx) + 1
            tokens_BxT = np.zeros((self.batch_size, length), np.int32)
            for b, row in enumerate(chunk):
                tokens_BxT[b, :len(row.tokens)] = row.tokens
            self.shapes_run.add(tokens_BxT.shape)
            logp_BxT, greedy_BxT = self._target_logprobs(
                self.params, jax.device_put(tokens_BxT, self._rows_sharding))
            logp_BxT, greedy_BxT = np.asarray(logp_BxT, np.float64), np.asarray(greedy_BxT)
            for b, (index, row) in enumerate(zip(order[first:], chunk)):
                # Target j (predicting tokens[j + 1]) sits at column j.
                end = len(row.tokens) - 1
                scored = slice(end - row.num_scored, end)
                results[index] = (float(logp_BxT[b, scored].sum()), bool(greedy_BxT[b, scored].all()))
        return results

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_token: int | None,
                 sampling: generate_lib.Sampling = generate_lib.GREEDY, seed: int = 0,
                 desc: str = "generating") -> list[list[int]]:
        """New tokens per prompt (without `stop_token`): the KV-cached decoder, batched and
        padded to buckets like `score`. Prompts are left-truncated to n_ctx - max_new_tokens."""
        room = self.n_ctx - max_new_tokens
        if room < 1:
            raise ConfigError(f"max_gen_toks={max_new_tokens} leaves no room for a prompt in the "
                              f"context of {self.n_ctx} tokens")
        prompts = [list(p)[-room:] for p in prompts]
        if any(not p for p in prompts):
            raise ConfigError("every prompt needs at least one token (GPT-1 has no start token)")
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[list[int] | None] = [None] * len(prompts)
        rng = jax.random.key(seed)
        for first in tqdm.trange(0, len(order), self.batch_size, desc=desc, disable=not self.progress):
            chunk = [prompts[i] for i in order[first:first + self.batch_size]]
            prompt_len = min(bucket(max(len(p) for p in chunk), self.n_ctx), room)
            prompt_BxP = np.zeros((self.batch_size, prompt_len), np.int32)
            lengths_B = np.ones((self.batch_size,), np.int32)   # padding rows: one token, ignored
            for b, prompt in enumerate(chunk):
                prompt_BxP[b, :len(prompt)], lengths_B[b] = prompt, len(prompt)
            self.shapes_run.add(("generate", *prompt_BxP.shape, max_new_tokens))
            rng, step_rng = jax.random.split(rng)
            new_BxN, num_new_B = generate_lib.generate_tokens(
                self.params, jax.device_put(prompt_BxP, self._rows_sharding),
                jax.device_put(lengths_B, self._vector_sharding), step_rng,
                jnp.int32(-1 if stop_token is None else stop_token), config=self.config,
                sampling=sampling, max_new_tokens=max_new_tokens)
            new_BxN, num_new_B = np.asarray(new_BxN), np.asarray(num_new_B)
            for b, index in enumerate(order[first:first + len(chunk)]):
                results[index] = new_BxN[b, :num_new_B[b]].tolist()
        return results
