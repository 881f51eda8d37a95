"""A pre-training job's data, made once for all its processes: the tokenizer recorded in the
workdir, and the token cache.

    tokenizer = prepare_tokenizer(workdir, source, "sentencepiece", sentencepiece_vocab_size=8192)
    cache = prepare_token_cache(source, tokenizer, cache_dir, progress=True)

Process 0 does the work (trains the tokenizer, hashes and tokenizes the corpus) while the
others wait (`distributed.main_first`); they then read what it wrote and never read the corpus
to hash it: the cache's key comes from process 0. With one process both are plain calls.
"""
import logging

import jax
import numpy as np

from gpt1_jax import checkpoint, distributed, tokenizers
from gpt1_jax.data import corpus as corpus_lib
from gpt1_jax.errors import ConfigError, DataError
from gpt1_jax.storage import rundir

log = logging.getLogger(__name__)

TOKENIZER_KINDS = ("gpt1_bpe", "sentencepiece")


def tokenizer_settings(kind: str, sentencepiece_vocab_size: int) -> dict:
    """What a tokenizer of `kind` is built from (recorded beside it; compared on resume)."""
    if kind not in TOKENIZER_KINDS:
        raise ConfigError(f"data.tokenizer={kind!r}; expected 'gpt1_bpe' or 'sentencepiece'")
    if kind == "sentencepiece":
        return {"tokenizer": kind, "sentencepiece_vocab_size": int(sentencepiece_vocab_size)}
    return {"tokenizer": kind}


def prepare_tokenizer(workdir, source, kind: str, sentencepiece_vocab_size: int) -> tokenizers.Tokenizer:
    """The job's tokenizer, recorded in `<workdir>/tokenizer` with the settings it was built
    from (`settings.json`).

    A recorded tokenizer built with these settings is kept (a resumed job). One built with
    other settings is rebuilt when the workdir holds no checkpoint (a run that failed before
    committing one left it), and refused with a ConfigError when it does: those checkpoints
    were trained with it. Process 0 builds and records; the others read what it recorded.
    """
    directory = rundir.path(workdir) / rundir.TOKENIZER
    wanted = tokenizer_settings(kind, sentencepiece_vocab_size)
    with distributed.main_first("tokenizer") as is_main:
        if not is_main:
            if not rundir.has_tokenizer(directory):
                raise ConfigError(f"{directory}: process 0 recorded no tokenizer")
            return tokenizers.load_tokenizer(directory)
        if rundir.has_tokenizer(directory):
            tokenizer = tokenizers.load_tokenizer(directory)
            recorded = _recorded_settings(directory, tokenizer)
            if recorded == wanted:
                return tokenizer
            _refuse_if_trained(workdir, directory, recorded, wanted)
            log.warning("%s holds a tokenizer built with %s by a run that committed no checkpoint; "
                        "rebuilding it with %s", directory, _describe(recorded), _describe(wanted))
            # Until the new one is whole, the folder must not look like a complete tokenizer.
            (directory / rundir.TOKENIZER_CONFIG).unlink()
        tokenizer = tokenizers.gpt1_bpe_tokenizer() if kind == "gpt1_bpe" else \
            _train_sentencepiece(source, sentencepiece_vocab_size)
        rundir.save_tokenizer(tokenizer, directory, settings=wanted)
        return tokenizer


def _recorded_settings(directory, tokenizer) -> dict:
    """The settings recorded beside the tokenizer; for a workdir written before they were
    recorded, what the tokenizer itself shows of them."""
    path = directory / rundir.TOKENIZER_SETTINGS
    if path.exists():
        return rundir.read_json(path, "the tokenizer's settings")
    return tokenizer_settings(tokenizer.kind, tokenizer.vocab_size) if tokenizer.kind in TOKENIZER_KINDS \
        else {"tokenizer": tokenizer.kind}


def _refuse_if_trained(workdir, directory, recorded: dict, wanted: dict) -> None:
    steps = checkpoint.finished_steps(rundir.path(workdir) / rundir.CHECKPOINTS)
    exported = (rundir.path(workdir) / rundir.EXPORT / rundir.EXPORT_MODEL_JSON).exists()
    if steps or exported:
        trained = f"checkpoints (steps {', '.join(map(str, steps))})" if steps else "export"
        raise ConfigError(
            f"{directory} records a tokenizer built with {_describe(recorded)}, but the config asks "
            f"for {_describe(wanted)}; the workdir's {trained} were trained with the recorded one, "
            f"so it cannot change here: use a new workdir (or the recorded settings to resume)")


def _describe(settings: dict) -> str:
    return ", ".join(f"data.{key}={value!r}" for key, value in sorted(settings.items()))


def _train_sentencepiece(source, vocab_size: int) -> tokenizers.SentencePieceTokenizer:
    # The corpus dump (as large as the corpus) lives in a scratch folder that the next job
    # removes if this one is killed while training.
    with rundir.scratch_directory("sentencepiece") as scratch:
        text_file = f"{scratch}/corpus.txt"
        with open(text_file, "w", encoding="utf-8") as f:
            for document in source.documents():
                f.write(document.rstrip("\n") + "\n")
        return tokenizers.train_sentencepiece([text_file], vocab_size, f"{scratch}/spm")


def prepare_token_cache(source, tokenizer, cache_dir, progress: bool) -> corpus_lib.TokenCache:
    """The corpus's token cache in `cache_dir`: process 0 builds or loads it (hashing the
    corpus); the others load the one it names. A process that cannot see it (a local
    cache_dir on another machine) builds its own, which must come out the same."""
    is_main = jax.process_index() == 0
    cache = None
    with distributed.main_first("token_cache"):
        if is_main:
            cache = corpus_lib.build_or_load_token_cache(source, tokenizer, cache_dir, progress=progress)
    if not distributed.is_multiprocess():
        return cache
    key = _key_of_process_0(cache.metadata["key"] if is_main else None)
    if is_main:
        return cache
    cache = corpus_lib.load_token_cache(cache_dir, key)
    if cache is not None:
        log.info("token cache: read process 0's %s, %s tokens (%s)", cache.description,
                 f"{cache.num_tokens:,}", cache_dir)
        return cache
    log.info("process 0's token cache %s is not in %s as this process sees it; building it here",
             key, cache_dir)
    cache = corpus_lib.build_or_load_token_cache(source, tokenizer, cache_dir, progress=False)
    if cache.metadata["key"] != key:
        raise DataError(f"{source.describe()}: the corpus or tokenizer differs between process 0 and "
                        f"process {jax.process_index()} (token cache keys {key} and {cache.metadata['key']})")
    return cache


def _key_of_process_0(key: str | None) -> str:
    """Process 0's cache key (a sha256 hex digest), on every process (a collective)."""
    digest_32 = np.frombuffer(bytes.fromhex(key), np.uint8) if key else np.zeros(32, np.uint8)
    return bytes(distributed.from_main(digest_32)).hex()
