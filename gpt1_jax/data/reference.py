"""Reference levels a language model must beat: unigram and count-bigram cross-entropy.

Both are fitted on the training tokens and scored on the validation tokens, in nats per
token, over the same targets the model predicts (every validation token after the first):

- unigram: add-one smoothed counts, p(w) = (c(w) + 1) / (N + V), so a token never seen in
  training still gets a finite loss. A model at this level has learnt word frequencies only.
- bigram: absolute discounting (Ney, Essen & Kneser 1994) with D = 0.75, interpolated with
  that unigram:

      p(w | v) = max(c(v, w) - D, 0) / c(v)  +  D * n(v) / c(v) * p_unigram(w)

  where c(v) counts v as a context and n(v) the distinct tokens seen after it; a context
  never seen in training falls back to p_unigram(w). A fixed, standard rule, with nothing
  tuned on the validation tokens. A model below this level uses more than the previous token.

    levels = reference_levels(train_N, val_N, vocab_size, cache_file=reference_cache_file(cache.path, train_N, val_N))
    levels["unigram_loss"], levels["bigram_loss"]

Counting pairs is a sort of int64 pair ids (prev * V + next): a few tenths of a second for
the bundled ~2.5 M tokens.
"""
import json
import logging
import pathlib

import numpy as np

from gpt1_jax.storage import rundir

log = logging.getLogger(__name__)

UNIGRAM_ALPHA = 1.0     # add-one smoothing of the unigram
BIGRAM_DISCOUNT = 0.75  # absolute discount subtracted from every seen pair's count
METHOD = (f"unigram: add-{UNIGRAM_ALPHA:g} smoothing; bigram: absolute discounting "
          f"D={BIGRAM_DISCOUNT:g} interpolated with that unigram; fitted on train, scored on "
          f"validation targets (all validation tokens but the first), nats per token")


def unigram_probs(train_N: np.ndarray, vocab_size: int) -> np.ndarray:
    """float64 [V]: add-alpha smoothed unigram probabilities of the training tokens."""
    counts_V = np.bincount(np.asarray(train_N, np.int64), minlength=vocab_size).astype(np.float64)
    return (counts_V + UNIGRAM_ALPHA) / (counts_V.sum() + UNIGRAM_ALPHA * vocab_size)


def unigram_loss(train_N: np.ndarray, val_N: np.ndarray, vocab_size: int) -> float:
    """Mean -log p_unigram(w) over the validation targets val_N[1:]."""
    probs_V = unigram_probs(train_N, vocab_size)
    return float(-np.mean(np.log(probs_V[np.asarray(val_N[1:], np.int64)])))


def bigram_loss(train_N: np.ndarray, val_N: np.ndarray, vocab_size: int) -> float:
    """Mean -log p_bigram(next | prev) over the validation pairs (see the module docstring)."""
    train_N = np.asarray(train_N, np.int64)
    val_N = np.asarray(val_N, np.int64)
    unigram_V = unigram_probs(train_N, vocab_size)

    pair_ids, pair_counts = np.unique(train_N[:-1] * vocab_size + train_N[1:], return_counts=True)
    context_counts_V = np.bincount(train_N[:-1], minlength=vocab_size).astype(np.float64)
    distinct_next_V = np.bincount(pair_ids // vocab_size, minlength=vocab_size).astype(np.float64)

    prev_M, next_M = val_N[:-1], val_N[1:]
    query_ids = prev_M * vocab_size + next_M
    at = np.minimum(np.searchsorted(pair_ids, query_ids), len(pair_ids) - 1)
    seen_M = pair_ids[at] == query_ids
    pair_count_M = np.where(seen_M, pair_counts[at], 0).astype(np.float64)

    context_M = context_counts_V[prev_M]
    has_context_M = context_M > 0
    safe_context_M = np.where(has_context_M, context_M, 1.0)
    discounted_M = np.maximum(pair_count_M - BIGRAM_DISCOUNT, 0.0) / safe_context_M
    backoff_weight_M = BIGRAM_DISCOUNT * distinct_next_V[prev_M] / safe_context_M
    probs_M = np.where(has_context_M, discounted_M + backoff_weight_M * unigram_V[next_M],
                       unigram_V[next_M])
    return float(-np.mean(np.log(probs_M)))


def reference_cache_file(token_cache_path, train_N: np.ndarray, val_N: np.ndarray) -> pathlib.Path:
    """Where the levels of this split of a token cache are kept: beside `<key>.npy`.

    The split is contiguous (corpus.split_train_val), so its two lengths identify it.
    """
    path = pathlib.Path(token_cache_path)
    return path.with_name(f"{path.stem}.reference.{len(train_N)}-{len(val_N)}.json")


def reference_levels(train_N: np.ndarray, val_N: np.ndarray, vocab_size: int,
                     cache_file=None) -> dict[str, float]:
    """{"unigram_loss", "bigram_loss"} of this train/validation split, in nats per token.

    With `cache_file` (see `reference_cache_file`) the levels are read from it when it
    describes the same split and method, else computed and written there atomically.
    """
    if len(train_N) < 2 or len(val_N) < 2:
        raise ValueError(f"reference levels need at least 2 train and 2 validation tokens, got "
                         f"{len(train_N)} and {len(val_N)}")
    identity = {"method": METHOD, "vocab_size": int(vocab_size),
                "num_train_tokens": int(len(train_N)), "num_val_tokens": int(len(val_N))}
    if cache_file is not None:
        cached = _read_cached(pathlib.Path(cache_file), identity)
        if cached is not None:
            return cached
    levels = {"unigram_loss": unigram_loss(train_N, val_N, vocab_size),
              "bigram_loss": bigram_loss(train_N, val_N, vocab_size)}
    if cache_file is not None:
        rundir.write_json(cache_file, {**identity, **levels})
    return levels


def _read_cached(path: pathlib.Path, identity: dict) -> dict[str, float] | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        if all(stored.get(k) == v for k, v in identity.items()):
            return {"unigram_loss": float(stored["unigram_loss"]),
                    "bigram_loss": float(stored["bigram_loss"])}
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    log.info("reference levels in %s describe another split or method; recomputing", path)
    return None
