"""Language-model evaluation of a text: mean next-token NLL and perplexity (gpt1_jax/evaluation/perplexity.py).

    python -m gpt1_jax.cli.evaluate_lm --init_from=runs/demo --text=book.txt
    python -m gpt1_jax.cli.evaluate_lm --init_from=gs://bucket/runs/gpt1 --tfds=lm1b --tfds_split=test

Each document (a text file, or a TFDS record) is tokenized as a whole, with no added
tokens. The last line printed is one JSON object:
{"tokens": scored tokens, "nll": mean NLL in nats, "perplexity": exp(nll), ...}.
"""
import json
import sys
import time

from absl import app, flags

from gpt1_jax import loading
from gpt1_jax.cli import common
from gpt1_jax.data import corpus as corpus_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.evaluation import perplexity

_INIT_FROM = flags.DEFINE_string("init_from", None, "A params export, workdir or training checkpoint "
                                 "(local or gs://).", required=True)
_TEXT = flags.DEFINE_string("text", "", "Text files (comma-separated paths or globs), each one document.")
_TFDS = flags.DEFINE_string("tfds", "", "A TFDS text dataset instead of --text, e.g. lm1b.")
_TFDS_SPLIT = flags.DEFINE_string("tfds_split", "test", "TFDS split.")
_TFDS_TEXT_KEY = flags.DEFINE_string("tfds_text_key", "text", "TFDS feature holding the text.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", "", "TFDS data directory ('' = TFDS default).")
_MAX_DOCUMENTS = flags.DEFINE_integer("max_documents", 0, "Read at most this many TFDS records (0: all).",
                                      lower_bound=0)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Windows per forward pass (rounded up to a "
                                   "multiple of the local devices, which share them).", lower_bound=1)
_STRIDE = flags.DEFINE_integer("stride", 0, "Tokens between window starts (0: n_ctx, no overlap).",
                               lower_bound=0)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if bool(_TEXT.value) == bool(_TFDS.value):
        raise app.UsageError("give exactly one of --text and --tfds")
    # The text first: a missing file is said before the model is loaded.
    texts, source = corpus_lib.read_documents(
        _TEXT.value, "--text", _TFDS.value, _TFDS_SPLIT.value, _TFDS_DATA_DIR.value or None,
        _TFDS_TEXT_KEY.value, _MAX_DOCUMENTS.value)
    loaded = loading.load(_INIT_FROM.value)
    if loaded.tokenizer is None:
        raise ConfigError(f"{_INIT_FROM.value} records no tokenizer to read the text with")
    print(f"Tokenizing {len(texts):,} documents from {source} ...", file=sys.stderr)
    start = time.perf_counter()
    documents = loaded.tokenizer.encode_batch(texts)
    tokenized = time.perf_counter()
    result = perplexity.score(loaded.config, loaded.params, documents, _BATCH_SIZE.value, _STRIDE.value,
                              progress=True)
    result.update(documents=len(documents), source=source, init_from=str(_INIT_FROM.value),
                  tokenize_secs=round(tokenized - start, 2), score_secs=round(time.perf_counter() - tokenized, 2))
    print(json.dumps(result))


if __name__ == "__main__":
    common.run(main, "evaluate_lm")
