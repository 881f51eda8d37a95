"""Generation speed: the KV-cached decoder against recomputing the whole sequence per token.

    python -m gpt1_jax.cli.bench_generate --init_from=runs/demo [--new_tokens=256 --prompt_tokens=16 --batch_size=1]

Both run greedy decoding of the same prompt (taken from a bundled book) as one jitted
loop; each is compiled and run once first, then timed over --repeats runs (best
kept). The recompute baseline reads the whole fixed-size buffer at every step but
sends only the needed position through the output head. Prints one JSON object.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import assets, loading
from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib
from gpt1_jax.errors import ConfigError


def _timed(fn, repeats: int) -> tuple[float, float, np.ndarray]:
    """(first call's seconds, compile included; best of `repeats` later calls; the output)."""
    started = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - started
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - started)
    return first, best, np.asarray(out[0])


def benchmark(loaded: loading.LoadedModel, batch_size: int, prompt_tokens: int, new_tokens: int,
              repeats: int) -> dict:
    """Times cached and recomputed greedy decoding of `new_tokens` tokens."""
    cfg = loaded.config
    if min(batch_size, prompt_tokens, new_tokens, repeats) < 1:
        raise ConfigError(f"batch_size, prompt_tokens, new_tokens and repeats must be positive, got "
                          f"{batch_size}, {prompt_tokens}, {new_tokens} and {repeats}")
    if prompt_tokens + new_tokens > cfg.n_ctx:
        raise ConfigError(f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the model's "
                          f"context of {cfg.n_ctx}; lower --prompt_tokens or --new_tokens")
    if loaded.tokenizer is not None:
        ids = loaded.tokenizer.encode(assets.book_files()[0].read_text(encoding="utf-8")[20_000:30_000])
    else:
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, prompt_tokens + batch_size).tolist()
    prompt_BxP = np.array([ids[b:b + prompt_tokens] for b in range(batch_size)], np.int32)
    lengths_B = np.full((batch_size,), prompt_tokens, np.int32)

    def run(use_cache):
        return lambda: generate_lib.generate_tokens(
            loaded.params, prompt_BxP, lengths_B, jax.random.key(0), jnp.int32(-1), config=cfg,
            sampling=generate_lib.GREEDY, max_new_tokens=new_tokens, use_cache=use_cache)

    cached_first, cached, cached_tokens = _timed(run(True), repeats)
    recompute_first, recompute, recompute_tokens = _timed(run(False), repeats)
    generated = batch_size * new_tokens
    return {
        "device": jax.devices()[0].device_kind,
        "model": {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_head": cfg.n_head, "n_ctx": cfg.n_ctx,
                  "vocab": cfg.embedding_rows, "params": model_lib.count_params(loaded.params)},
        "batch_size": batch_size,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "cached_s": round(cached, 4),
        "recompute_s": round(recompute, 4),
        "speedup": round(recompute / cached, 2),
        "cached_tokens_per_s": round(generated / cached, 1),
        "recompute_tokens_per_s": round(generated / recompute, 1),
        "cached_first_call_s": round(cached_first, 2),
        "recompute_first_call_s": round(recompute_first, 2),
        "same_tokens": bool(np.array_equal(cached_tokens, recompute_tokens)),
    }
