"""Perplexity of documents: the mean next-token negative log-likelihood under a language model.

Each document is read in windows of n_ctx tokens. Every token but a document's first is
predicted exactly once: with a stride of n_ctx the windows do not overlap (as in
pre-training), so a window's first targets see little context; a smaller stride re-reads
the last n_ctx - stride tokens of the previous window as context and scores only the new
ones. The windows are scored by gpt1_jax/evaluation/harness/scoring.py, as the harness's requests are:
batched, padded to a few length buckets, split over the local devices. The command line is
gpt1_jax/cli/evaluate_lm.py.
"""
import math
from collections.abc import Iterator, Sequence

import numpy as np

from gpt1_jax import model as model_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.evaluation.harness import scoring


def windows(tokens: Sequence[int], n_ctx: int, stride: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(inputs_T, targets_T, scored_T) windows of at most n_ctx inputs covering a document.

    Target j (the token at index j, j >= 1) is predicted from the inputs before it and
    scored in exactly one window; `scored_T` marks the targets that window scores (always
    a suffix of the window).
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


def score(config: model_lib.ModelConfig, params, documents: Sequence[Sequence[int]],
          batch_size: int = 32, stride: int = 0, progress: bool = False) -> dict:
    """Token count, mean NLL (nats) and perplexity of the documents' tokens (stride 0: n_ctx)."""
    n_ctx = config.n_ctx
    stride = stride or n_ctx
    rows = []
    for document in documents:
        for inputs, targets, scored in windows(document, n_ctx, stride):
            rows.append(scoring.Row(tuple(inputs.tolist()) + (int(targets[-1]),), int(scored.sum())))
    if not rows:
        raise ConfigError("no token to score: every document has fewer than 2 tokens")
    scorer = scoring.Scorer(config, params, batch_size, progress=progress)
    # Summed in float64 on the host: a book is millions of tokens.
    total = -math.fsum(logprob for logprob, _ in scorer.score(rows, desc="windows"))
    count = sum(row.num_scored for row in rows)
    nll = total / count
    return {"tokens": count, "nll": nll, "perplexity": math.exp(min(nll, 700.0)),
            "windows": len(rows), "n_ctx": n_ctx, "stride": stride}
