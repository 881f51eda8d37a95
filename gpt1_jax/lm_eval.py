"""Language-model evaluation: the mean next-token negative log-likelihood of documents.

Each document is read in windows of n_ctx tokens. Every token but a document's first is
predicted exactly once: with a stride of n_ctx the windows do not overlap (as in
pre-training), so a window's first targets see little context; a smaller stride re-reads
the last n_ctx - stride tokens of the previous window as context and scores only the new
ones. The command line is gpt1_jax/cli/evaluate_lm.py.
"""
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import optax

from gpt1_jax import model as model_lib
from gpt1_jax.errors import ConfigError


def windows(tokens: Sequence[int], n_ctx: int, stride: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(inputs_T, targets_T, scored_T) windows of at most n_ctx inputs covering a document.

    Target j (the token at index j, j >= 1) is predicted from the inputs before it and
    scored in exactly one window; `scored_T` marks the targets that window scores.
    """
    if not 1 <= stride <= n_ctx:
        raise ConfigError(f"stride={stride} must be in [1, n_ctx={n_ctx}]")
    tokens = np.asarray(tokens, np.int32)
    last_target = len(tokens) - 1
    scored_until, start = 0, 0
    while scored_until < last_target:
        end = min(start + n_ctx, last_target)
        target_index_T = np.arange(start + 1, end + 1)
        yield tokens[start:end], tokens[start + 1:end + 1], target_index_T > scored_until
        scored_until, start = end, start + stride


def _batches(documents: Sequence[Sequence[int]], n_ctx: int, stride: int, batch_size: int):
    """Windows padded to [batch_size, n_ctx] arrays (one compiled shape); padding has weight 0."""
    rows = [w for doc in documents for w in windows(doc, n_ctx, stride)]
    for first in range(0, len(rows), batch_size):
        inputs_BxT = np.zeros((batch_size, n_ctx), np.int32)
        targets_BxT = np.zeros((batch_size, n_ctx), np.int32)
        weights_BxT = np.zeros((batch_size, n_ctx), np.float32)
        for row, (inputs, targets, scored) in enumerate(rows[first:first + batch_size]):
            inputs_BxT[row, :len(inputs)] = inputs
            targets_BxT[row, :len(targets)] = targets
            weights_BxT[row, :len(scored)] = scored
        yield inputs_BxT, targets_BxT, weights_BxT


def score(config: model_lib.ModelConfig, params, documents: Sequence[Sequence[int]],
          batch_size: int = 4, stride: int = 0) -> dict:
    """Token count, mean NLL (nats) and perplexity of the documents' tokens (stride 0: n_ctx)."""
    model = model_lib.GPT1(config)
    n_ctx = config.n_ctx
    stride = stride or n_ctx

    @jax.jit
    def losses(params, inputs_BxT, targets_BxT):
        logits_BxTxV, _ = model.apply({"params": params}, inputs_BxT)
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)

    total, count, num_windows = 0.0, 0, 0
    for inputs_BxT, targets_BxT, weights_BxT in _batches(documents, n_ctx, stride, batch_size):
        losses_BxT = np.asarray(losses(params, inputs_BxT, targets_BxT), np.float64)
        # Summed in float64 on the host: a book is millions of tokens.
        total += float(np.sum(losses_BxT * weights_BxT))
        count += int(weights_BxT.sum())
        num_windows += int((weights_BxT.sum(axis=1) > 0).sum())
    if count == 0:
        raise ConfigError("no token to score: every document has fewer than 2 tokens")
    nll = total / count
    return {"tokens": count, "nll": nll, "perplexity": math.exp(min(nll, 700.0)),
            "windows": num_windows, "n_ctx": n_ctx, "stride": stride}
