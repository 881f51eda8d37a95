"""Pretraining text: corpus → token cache on disk → shuffled windows of seq_len + 1 tokens.

The pipeline, in the order a pretraining job uses it:

    source = TextFilesCorpus(assets.book_files())            # or TfdsCorpus("lm1b")
    cache = build_or_load_token_cache(source, tokenizer, cache_dir)
    train_N, val_N = split_train_val(cache.tokens, val_fraction, seq_len, cache.description)
    ids = make_window_ids_iterator(train_N, seq_len, global_batch_size, seed)   # checkpointable
    tokens_BxT1 = gather_windows(train_N, seq_len, next(ids)[rows])  # int32 [rows, seq_len + 1]
    for ids_B in eval_window_ids(len(val_N), seq_len, global_batch_size, max_batches): ...

Every process builds the same window ids; which `rows` of each global batch it reads is decided
by the batch sharding (sharding.assemble_batch), so any mesh layout across hosts is fed
consistently. The model reads inputs `tokens_BxT1[:, :-1]` and predicts targets `tokens_BxT1[:, 1:]`.
"""
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import grain
import numpy as np

from gpt1_jax.errors import DataError
from gpt1_jax.storage import rundir

log = logging.getLogger(__name__)

# Bump when the way text becomes tokens changes (what a document is, normalisation, dtype rule):
# every existing cache then gets a new key and is rebuilt instead of silently reused.
CACHE_FORMAT_VERSION = 1

# Whole documents go to the tokenizer in calls of about this many characters: enough that the
# bundled 9.3 M-character corpus is one call (a tokenizer may start worker processes per call),
# small enough that the ids held as Python lists (~36 bytes each) stay a few hundred MB.
_ENCODE_CHUNK_CHARS = 1 << 24


# ---------------------------------------------------------------------------------------------
# Corpus sources
# ---------------------------------------------------------------------------------------------


class Tokenizer(Protocol):
    """What this module needs from a tokenizer (gpt1_jax.tokenizers provides it)."""

    vocab_size: int

    def encode_batch(self, texts: list[str], progress: bool) -> list[list[int]]: ...

    def fingerprint(self) -> str: ...


class CorpusSource(Protocol):
    """A corpus: an ordered, finite sequence of text documents."""

    def identity(self) -> dict[str, Any]:
        """JSON-able description that changes whenever the documents could change."""

    def describe(self) -> str:
        """Short human-readable name, used in logs and error messages."""

    def __len__(self) -> int:
        """Number of documents."""

    def documents(self) -> Iterator[str]:
        """The documents in order, line endings normalised to '\\n'."""


def normalize_newlines(text: str) -> str:
    """Windows ('\\r\\n') and old Mac ('\\r') line endings → '\\n'."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _sha256_and_size(path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def unwrap_lines(text: str) -> str:
    """Joins hard-wrapped lines within each paragraph with spaces; paragraphs (separated by
    blank lines) stay apart, one per line.

    Project Gutenberg texts wrap at ~70 columns. GPT-1's tokenizer turns every line break
    into a newline token, so unwrapped they would make ~6% of the bundled corpus's tokens
    and teach the model to predict line lengths rather than language.
    """
    paragraphs = (" ".join(line.strip() for line in block.splitlines() if line.strip())
                  for block in re.split(r"\n\s*\n", text))
    return "\n".join(p for p in paragraphs if p) + "\n"


class TextFilesCorpus:
    """Plain UTF-8 text files; each file is one document (see `unwrap_lines` for `unwrap`)."""

    def __init__(self, paths: Iterable[str | os.PathLike], unwrap: bool = False):
        self.unwrap = unwrap
        self.paths = [rundir.path(p) for p in paths]  # local or gs://
        if not self.paths:
            raise DataError("TextFilesCorpus: no files given (empty corpus)")
        for path in self.paths:
            if not path.is_file():
                raise DataError(f"TextFilesCorpus: {path} is not a file")

    def identity(self) -> dict[str, Any]:
        # The content hash (not the mtime) decides: touching a file keeps its cache, editing it
        # rebuilds. Hashing the 9 MB default corpus takes a few tens of milliseconds.
        files = []
        for p in self.paths:
            sha256, size = _sha256_and_size(p)
            files.append({"path": str(p), "size": size, "sha256": sha256})
        identity = {"kind": "text_files", "files": files}
        if self.unwrap:
            identity["unwrap_lines"] = True
        return identity

    def describe(self) -> str:
        names = ", ".join(p.name for p in self.paths[:3])
        more = f", … ({len(self.paths)} files)" if len(self.paths) > 3 else ""
        return f"text files [{names}{more}]"

    def __len__(self) -> int:
        return len(self.paths)

    def documents(self) -> Iterator[str]:
        for path in self.paths:
            text = read_text_file(path)
            yield unwrap_lines(text) if self.unwrap else text


def read_text_file(path: str | os.PathLike) -> str:
    """Reads one UTF-8 document with '\\n' line endings; ValueError naming the file if unusable."""
    raw = rundir.path(path).read_bytes()
    try:
        # utf-8-sig drops a leading byte-order mark, which is an encoding artefact, not text.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err})") from err
    if not text.strip():
        raise DataError(f"{path}: file is empty (no text to tokenize)")
    return normalize_newlines(text)


def read_documents(text_patterns: str, what: str, tfds_name: str = "", split: str = "test",
                   data_dir: str | None = None, text_key: str = "text",
                   max_documents: int = 0) -> tuple[list[str], str]:
    """Whole documents to score: text files (comma-separated paths or globs, local or
    gs://; `what` names the flag in errors) or, without them, TFDS records (at most
    `max_documents`, 0: all). Returns (documents, a description of their source)."""
    if text_patterns:
        paths = rundir.expand_patterns(text_patterns, what)
        return [read_text_file(p) for p in paths], ",".join(map(str, paths))
    source = TfdsCorpus(tfds_name, split=split, data_dir=data_dir, text_key=text_key)
    documents = []
    for document in source.documents():
        if max_documents and len(documents) >= max_documents:
            break
        documents.append(document)
    return documents, source.describe()


class TfdsCorpus:
    """A TFDS text dataset read through `tfds.data_source` (array_record, no TensorFlow needed).

    Each record is one document, taken from feature `text_key` (bytes or str); an empty record
    simply contributes no tokens.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
                 text_key: str = "text"):
        from gpt1_jax.data import tfds_source  # imports TFDS: runs on text files never do

        self.name, self.split, self.data_dir, self.text_key = name, split, data_dir, text_key
        self._source = tfds_source.open_split(name, split, data_dir, f"TFDS dataset {name!r}")
        if len(self._source) == 0:
            raise DataError(f"{self.describe()}: dataset split has no records (empty corpus)")
        first = self._source[0]
        if text_key not in first:
            raise DataError(
                f"{self.describe()}: records have no feature {text_key!r}; "
                f"available: {sorted(first)}"
            )

    def identity(self) -> dict[str, Any]:
        info = self._source.dataset_info
        return {
            "kind": "tfds",
            "name": self.name,
            "split": self.split,
            "version": str(info.version),
            "data_dir": str(info.data_dir),
            "text_key": self.text_key,
            # Guards against a dataset regenerated in place under the same version.
            "num_records": len(self._source),
        }

    def describe(self) -> str:
        return f"tfds:{self.name}/{self.split}"

    def __len__(self) -> int:
        return len(self._source)

    def documents(self) -> Iterator[str]:
        # One record per read: tokenizing a record costs far more than reading it, and TFDS's
        # mock data source (used in tests) does not support batched __getitems__.
        for index in range(len(self._source)):
            text = self._source[index][self.text_key]
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{self.describe()} record {index}: not valid UTF-8 ({err})") from err
            yield normalize_newlines(text)


# ---------------------------------------------------------------------------------------------
# Token cache
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenCache:
    """A tokenized corpus on disk.

    Attributes:
        tokens: read-only memmap, shape [num_tokens], uint16 or uint32; the documents'
            tokens back to back in corpus order, with no separator between documents.
        path: the `<key>.npy` file.
        metadata: contents of the `<key>.json` file beside it.
    """

    tokens: np.ndarray
    path: pathlib.Path
    metadata: dict[str, Any]

    @property
    def description(self) -> str:
        return self.metadata["source"]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when all ids (below `vocab_size`; GPT-1 has 40,478) fit, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cache_key(corpus_identity: dict[str, Any], tokenizer_fingerprint: str) -> str:
    """sha256 over the corpus identity, the tokenizer fingerprint and the cache format."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT_VERSION,
            "corpus": corpus_identity,
            "tokenizer": tokenizer_fingerprint,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def token_cache_key(source: CorpusSource, tokenizer: Tokenizer) -> str:
    """The key of `source`'s cache under `tokenizer`: reads (hashes) the whole corpus."""
    return cache_key(source.identity(), tokenizer.fingerprint())


def build_or_load_token_cache(source: CorpusSource, tokenizer: Tokenizer,
                              cache_dir: str | os.PathLike, progress: bool = True) -> TokenCache:
    """Tokenizes `source` once into `cache_dir/<key>.npy` (+ `<key>.json`) and memmaps it.

    The key changes with the corpus content and the tokenizer fingerprint, so a stale cache is
    never reused; a matching one is loaded without calling the tokenizer at all. The `.json` is
    written last and only after the `.npy` is complete, both whole (`rundir.atomic_local_file`):
    a crash leaves no cache that looks complete. Builders of one key take turns through the
    lock file `.<key>.lock` beside it (several hosts on one shared file system build it once),
    and the one holding it removes the temporary files a killed builder left. A `gs://`
    cache_dir is built in a local mirror and uploaded (`.npy`, then `.json`); a later job
    downloads it into its mirror once.
    """
    corpus_identity, fingerprint = source.identity(), tokenizer.fingerprint()
    key = cache_key(corpus_identity, fingerprint)
    if not rundir.is_remote(cache_dir):
        return _local_token_cache(source, tokenizer, pathlib.Path(os.fspath(rundir.path(cache_dir))),
                                  key, corpus_identity, fingerprint, progress)
    remote_dir = rundir.path(cache_dir)
    cache = load_token_cache(remote_dir, key)
    if cache is not None:
        log.info("token cache hit: %s (%s)", source.describe(), remote_dir / f"{key}.npy")
        return cache
    cache = _local_token_cache(source, tokenizer, _mirror_of(remote_dir), key, corpus_identity,
                               fingerprint, progress)
    rundir.upload_file(cache.path, remote_dir / f"{key}.npy")
    rundir.upload_file(cache.path.with_suffix(".json"), remote_dir / f"{key}.json")  # last: it vouches
    return cache


def load_token_cache(cache_dir: str | os.PathLike, key: str) -> TokenCache | None:
    """The complete cache `key` in `cache_dir` (a gs:// one through the local mirror), or None
    when there is none; reads neither the corpus nor a tokenizer."""
    if not rundir.is_remote(cache_dir):
        directory = pathlib.Path(os.fspath(rundir.path(cache_dir)))
        return _load_cache(directory / f"{key}.npy", directory / f"{key}.json", key)
    remote_dir = rundir.path(cache_dir)
    mirror = _mirror_of(remote_dir)
    local_npy, local_json = mirror / f"{key}.npy", mirror / f"{key}.json"
    cache = _load_cache(local_npy, local_json, key)
    if cache is None and (remote_dir / f"{key}.json").exists():
        local_json.unlink(missing_ok=True)
        rundir.download_file(remote_dir / f"{key}.npy", local_npy)
        rundir.download_file(remote_dir / f"{key}.json", local_json)
        cache = _load_cache(local_npy, local_json, key)
    return cache


def _mirror_of(remote_dir) -> pathlib.Path:
    """The local folder that holds copies of a gs:// cache directory (memmaps need local files)."""
    name = hashlib.sha256(str(remote_dir).encode()).hexdigest()[:16]
    mirror = pathlib.Path(os.fspath(rundir.cache_root() / "remote" / name))
    mirror.mkdir(parents=True, exist_ok=True)
    return mirror


def _local_token_cache(source, tokenizer, cache_dir: pathlib.Path, key: str, corpus_identity,
                       fingerprint: str, progress: bool) -> TokenCache:
    npy_path, json_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cache = _load_cache(npy_path, json_path, key)  # a hit needs no lock (nor a writable folder)
    if cache is None:
        with rundir.file_lock(cache_dir / f".{key}.lock") as locked:
            # Looked up again: another builder may have finished while this one waited.
            cache = _load_cache(npy_path, json_path, key)
            if cache is None:
                if locked:  # every builder of this key takes the lock: leftovers are a killed one's
                    removed = rundir.remove_temp_files(npy_path) + rundir.remove_temp_files(json_path)
                    if removed:
                        log.info("removed %d temporary file(s) of an interrupted build of %s",
                                 removed, npy_path)
                return _build(source, tokenizer, npy_path, json_path, key, corpus_identity,
                              fingerprint, progress)
    log.info("token cache hit: %s, %s tokens (%s)", source.describe(), f"{cache.num_tokens:,}",
             npy_path)
    return cache


def _build(source, tokenizer, npy_path: pathlib.Path, json_path: pathlib.Path, key: str,
           corpus_identity, fingerprint: str, progress: bool) -> TokenCache:
    # A leftover .json of an earlier, damaged build must not vouch for the .npy written next.
    json_path.unlink(missing_ok=True)
    start = time.perf_counter()
    dtype = token_dtype(tokenizer.vocab_size)
    with rundir.atomic_local_file(npy_path) as f:
        num_tokens, num_documents = _tokenize_into(f, npy_path.parent, source, tokenizer, dtype,
                                                   progress)
    seconds = time.perf_counter() - start
    metadata = {
        "key": key,
        "format": CACHE_FORMAT_VERSION,
        "source": source.describe(),
        "corpus": corpus_identity,
        "tokenizer_fingerprint": fingerprint,
        "vocab_size": int(tokenizer.vocab_size),
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "num_documents": num_documents,
        "build_seconds": round(seconds, 3),
    }
    with rundir.atomic_local_file(json_path) as f:
        f.write(json.dumps(metadata, indent=2).encode())
    log.info("tokenized %s: %s documents → %s tokens in %.1f s (%s)", source.describe(),
             f"{num_documents:,}", f"{num_tokens:,}", seconds, npy_path)
    return TokenCache(np.load(npy_path, mmap_mode="r"), npy_path, metadata)


def _load_cache(npy_path: pathlib.Path, json_path: pathlib.Path, key: str) -> TokenCache | None:
    """The cache at these paths if it is complete and consistent, else None (→ rebuild)."""
    if not (npy_path.exists() and json_path.exists()):
        return None
    try:
        metadata = json.loads(json_path.read_text())
        tokens = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable token cache %s: %s", npy_path, err)
        return None
    if (metadata.get("key") != key or tokens.ndim != 1
            or tokens.shape[0] != metadata.get("num_tokens")
            or tokens.dtype.name != metadata.get("dtype")):
        log.warning("ignoring inconsistent token cache %s", npy_path)
        return None
    return TokenCache(tokens, npy_path, metadata)


def _tokenize_into(npy_file, scratch_dir: pathlib.Path, source: CorpusSource,
                   tokenizer: Tokenizer, dtype: np.dtype, progress: bool) -> tuple[int, int]:
    """Writes the corpus as one .npy array into `npy_file`; returns (num_tokens, num_documents).

    The total length is unknown until the end, so raw ids go to a scratch file first and are
    copied behind the .npy header once it can be written.
    """
    num_tokens = num_documents = 0
    with tempfile.TemporaryFile(dir=scratch_dir) as raw:
        pending: list[str] = []
        pending_chars = 0

        def flush():
            nonlocal num_tokens, pending, pending_chars
            if not pending:
                return
            for ids in tokenizer.encode_batch(pending, progress=progress):
                ids_N = np.asarray(ids, dtype=np.int64)
                if ids_N.size and (ids_N.min() < 0 or ids_N.max() >= tokenizer.vocab_size):
                    raise DataError(
                        f"tokenizer returned ids outside [0, {tokenizer.vocab_size}) "
                        f"for {source.describe()}")
                raw.write(ids_N.astype(dtype).tobytes())
                num_tokens += ids_N.size
            log.info("tokenized %s documents of %s, %s tokens so far", f"{num_documents:,}",
                     source.describe(), f"{num_tokens:,}")
            pending, pending_chars = [], 0

        # Each document is encoded whole, never cut into paragraphs: GPT-1's tokenizer strips the
        # ends of every text it is given, so encoding paragraphs separately would lose the
        # newline token at each paragraph break. Long documents are the tokenizer's concern.
        for document in source.documents():
            num_documents += 1
            pending.append(document)
            pending_chars += len(document)
            if pending_chars >= _ENCODE_CHUNK_CHARS:
                flush()
        flush()
        if num_tokens == 0:
            raise DataError(f"{source.describe()}: corpus produced no tokens (empty corpus)")

        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": (num_tokens,)}
        np.lib.format.write_array_header_1_0(npy_file, header)
        raw.seek(0)
        shutil.copyfileobj(raw, npy_file, length=1 << 22)
    return num_tokens, num_documents


# ---------------------------------------------------------------------------------------------
# Train / validation split
# ---------------------------------------------------------------------------------------------


def split_train_val(tokens_N: np.ndarray, val_fraction: float, seq_len: int,
                    corpus_name: str = "corpus") -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the last `val_fraction` of the token stream is validation.

    Contiguous (not per-window random) so no validation window shares text with a training one.
    Both parts stay memmap views. ValueError if either is shorter than one window.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_tokens = int(tokens_N.shape[0])
    num_val = int(num_tokens * val_fraction)
    num_train = num_tokens - num_val
    window = seq_len + 1
    if num_train < window or num_val < window:
        raise DataError(
            f"{corpus_name}: {num_tokens:,} tokens split into {num_train:,} train and "
            f"{num_val:,} validation tokens (val_fraction={val_fraction}); each part needs at "
            f"least one window of seq_len + 1 = {window} tokens")
    return tokens_N[:num_train], tokens_N[num_train:]


# ---------------------------------------------------------------------------------------------
# Windows and batches
# ---------------------------------------------------------------------------------------------


def num_train_windows(n_tokens: int, seq_len: int) -> int:
    """Windows i = 0, 1, … covering tokens [i*seq_len, i*seq_len + seq_len + 1).

    Consecutive windows share one token (the last target of one is the first input of the next),
    so every token after the first is a target exactly once per epoch.
    """
    return max(0, (n_tokens - 1) // seq_len)


def steps_per_epoch(n_tokens: int, seq_len: int, global_batch_size: int) -> int:
    """Full global batches in one pass over the windows (rounded down).

    The training stream runs on across epochs without dropping anything, so when the window
    count is not a multiple of the batch size a batch may hold the end of one epoch and the
    start of the next.
    """
    return num_train_windows(n_tokens, seq_len) // global_batch_size


def gather_windows(tokens_N: np.ndarray, seq_len: int, window_ids_B: np.ndarray) -> np.ndarray:
    """[B] window indices → int32 [B, seq_len + 1] token windows."""
    rows = [tokens_N[i * seq_len : i * seq_len + seq_len + 1] for i in window_ids_B.tolist()]
    return np.stack(rows).astype(np.int32)


def endless_epochs(num_items: int) -> int:
    """Epochs enough to never run out, yet a finite dataset length.

    grain's `repeat()` without a count has length sys.maxsize, which a later batch of size 1
    or a prefetch step cannot take `len()` of; 2**40 items is beyond any training run.
    """
    return max(1, (1 << 40) // max(num_items, 1))


def make_window_ids_iterator(train_tokens: np.ndarray, seq_len: int, global_batch_size: int,
                             seed: int) -> grain.DatasetIterator:
    """Endless iterator of the global batches' window indices, int64 [global_batch_size].

    Window indices are shuffled with `seed` and reshuffled each epoch; every process builds
    the same sequence, so which rows a process reads (`gather_windows`) is decided by where
    the batch sharding puts them, not here. `get_state()` is `{"next_index": <batches
    already returned>}`; `set_state` on a fresh iterator continues with the same batches.
    """
    if not 0 <= seed < 2**32:
        raise DataError(f"seed must be in [0, 2**32), got {seed}")
    num_windows = num_train_windows(int(train_tokens.shape[0]), seq_len)
    if num_windows == 0:
        raise DataError(f"{train_tokens.shape[0]} training tokens hold no window of "
                        f"seq_len + 1 = {seq_len + 1} tokens")
    window_ids = grain.MapDataset.range(num_windows).shuffle(seed=seed).repeat(endless_epochs(num_windows))
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return iter(window_ids.batch(global_batch_size).to_iter_dataset(read_options))


def num_eval_batches(n_tokens: int, seq_len: int, global_batch_size: int,
                     max_batches: int | None = None) -> int:
    """How many batches `eval_window_ids` yields for these arguments."""
    count = num_train_windows(n_tokens, seq_len) // global_batch_size
    return count if max_batches is None else min(count, max_batches)


def eval_window_ids(n_tokens: int, seq_len: int, global_batch_size: int,
                    max_batches: int | None = None) -> Iterator[np.ndarray]:
    """The validation batches' window indices in order, int64 [global_batch_size] each: the
    windows in stream order, no shuffle; the last partial batch is dropped so every evaluation
    step has one shape (no recompilation), skipping at most global_batch_size - 1 windows."""
    count = num_eval_batches(n_tokens, seq_len, global_batch_size, max_batches)
    if count == 0 and max_batches != 0:
        raise DataError(
            f"{n_tokens:,} validation tokens hold {num_train_windows(n_tokens, seq_len)} windows "
            f"of {seq_len + 1} tokens, fewer than one global batch of {global_batch_size}")
    for step in range(count):
        yield np.arange(step * global_batch_size, (step + 1) * global_batch_size)
