"""Tokenizers behind one small interface: the original GPT-1 BPE, or SentencePiece.

The data pipeline keys its token cache by `Tokenizer.fingerprint()`, sampling
calls `decode`, and fine-tuning appends the three `SPECIAL_TOKENS` after the
base vocabulary. A tokenizer is recorded beside a checkpoint with `save` and
rebuilt with `load_tokenizer`.

    tok = gpt1_bpe_tokenizer()                  # the released GPT-1 vocabulary
    ids = tok.encode("Hello, world!")           # [3570, 240, 1276, 267]
    tok.decode(ids)                             # "hello , world !"
    tok.save("ckpt/tokenizer"); load_tokenizer("ckpt/tokenizer").encode("Hello")

    sp = train_sentencepiece(assets.book_files(), vocab_size=8000, model_prefix="out/sp")
"""
import abc
import hashlib
import json
import math
import multiprocessing
import os
import re
import warnings
from collections.abc import Sequence

import ftfy
import sentencepiece
import spacy
import tqdm
from etils import epath

from gpt1_jax import assets
from gpt1_jax.errors import DataError

SPECIAL_TOKENS = ("_start_", "_delimiter_", "_classify_")

# Part of every fingerprint: bump it whenever a change in this file can change
# the ids produced, so that token caches built by older code are not reused.
PIPELINE_VERSION = 1

CONFIG_FILE = "tokenizer.json"

PathLike = str | os.PathLike


class Tokenizer(abc.ABC):
    """Text <-> ids. Ids >= `vocab_size` are the `SPECIAL_TOKENS`, in order."""

    kind: str
    vocab_size: int  # the base vocabulary, without the special tokens

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of one text (no special tokens are added)."""

    def encode_batch(self, texts: Sequence[str], progress: bool = False) -> list[list[int]]:
        """`[self.encode(t) for t in texts]`, possibly faster."""
        return [self.encode(text) for text in tqdm.tqdm(texts, disable=not progress)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; special ids become their names, set off by spaces."""
        parts, run = [], []
        specials = self.special_token_ids()
        names = {i: name for name, i in specials.items()}
        for i in ids:
            i = int(i)
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            if i not in names:
                raise DataError(f"id {i} is outside [0, {self.vocab_size + len(SPECIAL_TOKENS)})")
            if run:
                parts.append(self._decode_base(run))
                run = []
            parts.append(names[i])
        if run:
            parts.append(self._decode_base(run))
        return " ".join(part for part in parts if part)

    @abc.abstractmethod
    def _decode_base(self, ids: list[int]) -> str:
        """Decode ids that are all in the base vocabulary."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A sha256 hex digest of everything that decides the ids `encode` returns."""

    def special_token_ids(self) -> dict[str, int]:
        """The special tokens' ids, appended right after the base vocabulary."""
        return {name: self.vocab_size + k for k, name in enumerate(SPECIAL_TOKENS)}

    @abc.abstractmethod
    def save(self, directory: PathLike) -> None:
        """Write the files `load_tokenizer(directory)` needs to rebuild this tokenizer."""

    def _write_config(self, directory: epath.Path, **files: str) -> None:
        config = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": list(SPECIAL_TOKENS),
            "fingerprint": self.fingerprint(),
            "pipeline_version": PIPELINE_VERSION,
            **files,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so that moving bytes from one part to the next changes the digest.
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _read_bytes(path: PathLike, what: str) -> bytes:
    path = epath.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path.read_bytes()


# --------------------------------------------------------------------------
# GPT-1 BPE: ftfy -> text_standardize -> spaCy English tokenizer -> lower-case
# -> BPE over the released 40,000 merges. Reproduces the ids of
# TextEncoder.encode in openai/finetune-transformer-lm (text_utils.py).
# --------------------------------------------------------------------------

_DASHES_AND_MARKS = {"—": "-", "–": "-", "―": "-", "…": "...", "´": "'"}
# Runs of these characters get a space on each side. The original pattern also
# lists `\\+` but, written in a non-raw string, that alternative means a literal
# "+" (already covered), so a backslash is NOT padded. We keep that behaviour.
_PADDED_RUN = re.compile(r'([-~!";?+,()/*\[\]{}|_])\1*')
_NEWLINE_WITH_SPACE = re.compile(r"\s*\n\s*")
_OTHER_SPACE = re.compile(r"[^\S\n]+")
# In ASCII text ftfy only touches HTML entities and control characters (\r included).
_FTFY_MAY_CHANGE_ASCII = re.compile(r"[&\x00-\x08\x0b-\x1f\x7f]")

# encode() works on pieces of about this many characters, cut at line ends:
# small enough to spread over worker processes, far below spaCy's 1M limit.
_PIECE_CHARS = 1 << 16
# Starting a worker (spawn, import spaCy, load the vocabulary) takes about 2.5 s
# on a laptop-class core, while one core encodes about 1.2M characters a second;
# so by default each worker gets at least this much text to be worth it.
_CHARS_PER_WORKER = 8_000_000


def text_standardize(text: str) -> str:
    """The original GPT-1 text clean-up, run after ftfy and before spaCy.

    Unicode dashes become "-", an ellipsis "...", "´" an apostrophe; runs of
    punctuation such as "--" or "!!" are set off by spaces; every whitespace run
    holding a line break becomes " \\n ", any other whitespace run one space.
    """
    for old, new in _DASHES_AND_MARKS.items():
        text = text.replace(old, new)
    text = _PADDED_RUN.sub(r" \g<0> ", text)
    text = _NEWLINE_WITH_SPACE.sub(" \n ", text)
    text = _OTHER_SPACE.sub(" ", text)
    return text.strip()


def _fix_text_by_lines(text: str, may_unescape_html: bool) -> str:
    """`ftfy.fix_text(text)`, but only calling ftfy on the lines it may change.

    ftfy fixes a text line by line anyway. In printable ASCII without "&" it
    finds no mojibake, entity, control character or odd line break to fix, so
    skipping such lines (most of an English book) halves its cost.
    """
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start) + 1 or len(text)
        line, start = text[start:end], end
        if line.isascii() and not _FTFY_MAY_CHANGE_ASCII.search(line):
            out.append(line)
        else:
            out.append(ftfy.fix_text(line, unescape_html="auto" if may_unescape_html else False))
        # Like fix_text on the whole text: no more HTML unescaping after a "<".
        may_unescape_html = may_unescape_html and "<" not in line
    return "".join(out)


def _line_pieces(text: str, max_chars: int) -> list[tuple[str, bool]]:
    """Cut `text` after line breaks into pieces of about `max_chars` characters.

    Each piece comes with whether ftfy may unescape HTML entities in it: on a
    whole text ftfy stops doing so for good at the first line holding a "<"
    (it takes the text for HTML), so a piece after such a line must not either.
    A line longer than `max_chars` is kept whole.
    """
    pieces, start = [], 0
    seen_angle = False
    while start < len(text):
        end = text.find("\n", min(start + max_chars, len(text)) - 1) + 1 or len(text)
        pieces.append((text[start:end], not seen_angle))
        seen_angle = seen_angle or "<" in text[start:end]
        start = end
    return pieces


class GPT1BPETokenizer(Tokenizer):
    """The GPT-1 tokenizer; build it with `gpt1_bpe_tokenizer()`.

    `encode(text)` equals the original `TextEncoder.encode([text])[0]` (up to
    differences between our ftfy/spaCy versions and those of 2018), including
    the quirks: every whitespace run holding a line break becomes one "\\n</w>"
    id (40477), and pieces missing from the vocabulary become id 0 (<unk>).
    So for texts `a` and `b` that each hold a word (ftfy's HTML guess aside),
    `encode(a + "\\n\\n" + b) == encode(a) + [40477] + encode(b)`: a caller that
    encodes a book paragraph by paragraph gets the whole book's ids back by
    joining the paragraphs' ids with 40477.

    Texts are encoded in line-aligned pieces of about 64K characters (so no
    spaCy call nears its 1M-character limit, and pieces can be spread over
    processes in `encode_batch`); see `_join_pieces` for why that gives the
    same ids as one whole-text pass.
    """

    kind = "gpt1_bpe"
    ENCODER_FILE = "encoder_bpe_40000.json"
    MERGES_FILE = "vocab_40000.bpe"

    def __init__(self, encoder_json: bytes, merges_bpe: bytes, *, encoder_name: str = ENCODER_FILE,
                 merges_name: str = MERGES_FILE):
        self._encoder_json, self._merges_bpe = encoder_json, merges_bpe
        self._encoder = _parse_encoder(encoder_json, encoder_name)
        merges = _parse_merges(merges_bpe, merges_name)
        # A merge listed twice keeps its later rank, as dict(zip(...)) did in the original.
        self._merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._canonical = (
            json.dumps(sorted(self._encoder.items()), ensure_ascii=False)
            + "\n" + "\n".join(" ".join(pair) for pair in merges)
        ).encode("utf-8")
        self.vocab_size = max(self._encoder.values()) + 1
        self._decoder = {i: piece for piece, i in self._encoder.items()}
        # The rule-based English tokenizer that spacy.load("en") used: no model needed.
        self._spacy_tokenizer = spacy.blank("en").tokenizer
        self._word_ids: dict[str, tuple[int, ...]] = {}
        self._ids_by_orth: dict[int, tuple[int, ...]] = {}  # keyed by spaCy's hash of the token text
        self._newline_ids = self._piece_ids("a \n a")[1:-1]

    def __getstate__(self):
        # Sent to worker processes: the two files rebuild everything else.
        return {"encoder_json": self._encoder_json, "merges_bpe": self._merges_bpe}

    def __setstate__(self, state):
        self.__init__(state["encoder_json"], state["merges_bpe"])

    def _bpe(self, word: str) -> list[str]:
        """Split a lower-cased word into vocabulary pieces, the last one ending in </w>."""
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:])
            best = min(pairs, key=lambda pair: self._merge_ranks.get(pair, math.inf))
            if best not in self._merge_ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_to_ids(self, word: str) -> tuple[int, ...]:
        ids = self._word_ids.get(word)
        if ids is None:
            # The original joined the pieces with spaces and split them again, so a
            # spaCy whitespace token such as "\n " yields its pieces that way, and
            # "\n" + " </w>" was patched to the "\n</w>" piece. Same here.
            joined = " ".join(self._bpe(word))
            if joined == "\n  </w>":
                joined = "\n</w>"
            ids = tuple(self._encoder.get(piece, 0) for piece in joined.split(" "))
            self._word_ids[word] = ids
        return ids

    def _piece_ids(self, standardized: str) -> list[int]:
        # Reading the tokens' string hashes as one array skips building a spaCy
        # Token object per word, which was a fifth of the encoding time.
        doc = self._spacy_tokenizer(standardized)
        ids = []
        for orth in doc.to_array("ORTH").tolist():
            word_ids = self._ids_by_orth.get(orth)
            if word_ids is None:
                word_ids = self._word_to_ids(doc.vocab.strings[orth].lower())
                self._ids_by_orth[orth] = word_ids
            ids.extend(word_ids)
        return ids

    def _encode_piece(self, piece: str, may_unescape_html: bool) -> list[int]:
        fixed = _fix_text_by_lines(piece, may_unescape_html)
        standardized = text_standardize(fixed)
        return self._piece_ids(standardized) if standardized else []

    def _join_pieces(self, pieces_ids: Sequence[list[int]]) -> list[int]:
        """Ids of a text from the ids of its line-aligned pieces.

        Why this equals encoding the whole text: ftfy fixes a text line by line
        (we pass on its HTML switch, see `_line_pieces`); text_standardize only
        looks across a piece boundary through the whitespace run there, which
        holds the boundary's line break and so becomes " \\n " (the ends of a
        piece are stripped instead); spaCy never makes a token across a space.
        So the whole text's ids are the non-empty pieces' ids with the newline
        token's ids between them. tests/test_tokenizers.py checks this against
        an unchunked port of the original.
        """
        ids: list[int] = []
        for piece_ids in pieces_ids:
            if piece_ids:
                if ids:
                    ids.extend(self._newline_ids)
                ids.extend(piece_ids)
        return ids

    def encode(self, text: str) -> list[int]:
        """Encode like the original GPT-1 pipeline; see the class docstring."""
        pieces = _line_pieces(text, _PIECE_CHARS)
        return self._join_pieces([self._encode_piece(*piece) for piece in pieces])

    def encode_batch(self, texts: Sequence[str], progress: bool = False,
                     num_workers: int | None = None) -> list[list[int]]:
        """Encode many texts, as `[self.encode(t) for t in texts]` would.

        `num_workers` > 1 encodes on that many worker processes. The default
        picks one worker per `_CHARS_PER_WORKER` characters of text, at most
        one per CPU and 8, so small batches stay in this process. Workers are
        spawned (safe after JAX started its threads), so a script that calls
        this must guard its entry point with `if __name__ == "__main__":`.
        """
        per_text = [_line_pieces(text, _PIECE_CHARS) for text in texts]
        flat = [piece for pieces in per_text for piece in pieces]
        batches = _batches_of_chars(flat, _PIECE_CHARS)
        total_chars = sum(len(piece) for piece, _ in flat)
        if num_workers is None:
            num_workers = min(os.cpu_count() or 1, 8, total_chars // _CHARS_PER_WORKER)
        bar = tqdm.tqdm(total=total_chars, unit="char", unit_scale=True, disable=not progress)
        flat_ids = []
        with bar:
            if num_workers <= 1:
                results = map(self._encode_pieces, batches)
                for batch, batch_ids in zip(batches, results):
                    flat_ids.extend(batch_ids)
                    bar.update(sum(len(piece) for piece, _ in batch))
            else:
                context = multiprocessing.get_context("spawn")
                with context.Pool(num_workers, initializer=_init_worker, initargs=(self,)) as pool:
                    for batch, batch_ids in zip(batches, pool.imap(_encode_in_worker, batches)):
                        flat_ids.extend(batch_ids)
                        bar.update(sum(len(piece) for piece, _ in batch))
        out, start = [], 0
        for pieces in per_text:
            out.append(self._join_pieces(flat_ids[start:start + len(pieces)]))
            start += len(pieces)
        return out

    def _encode_pieces(self, pieces: Sequence[tuple[str, bool]]) -> list[list[int]]:
        return [self._encode_piece(*piece) for piece in pieces]

    def _decode_base(self, ids: list[int]) -> str:
        text = "".join(self._decoder.get(i, "<unk>") for i in ids)
        return text.replace("</w>", " ").strip()

    def fingerprint(self) -> str:
        """Covers the vocabulary, the merges, and the ftfy/spaCy versions (they shape the ids too)."""
        header = json.dumps({"kind": self.kind, "pipeline_version": PIPELINE_VERSION,
                             "ftfy": ftfy.__version__, "spacy": spacy.__version__})
        return _sha256(header.encode("utf-8"), self._canonical)

    def save(self, directory: PathLike) -> None:
        """Write the two vocabulary files, byte for byte, and tokenizer.json."""
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.ENCODER_FILE).write_bytes(self._encoder_json)
        (directory / self.MERGES_FILE).write_bytes(self._merges_bpe)
        self._write_config(directory, encoder_file=self.ENCODER_FILE, merges_file=self.MERGES_FILE)


def _parse_encoder(data: bytes, name: str) -> dict[str, int]:
    try:
        encoder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{name}: not a JSON file: {e}") from e
    if not isinstance(encoder, dict) or not encoder:
        raise DataError(f"{name}: expected a non-empty JSON object of piece -> id")
    ids = list(encoder.values())
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise DataError(f"{name}: every id must be a non-negative integer")
    if len(set(ids)) != len(ids):
        raise DataError(f"{name}: two pieces share an id")
    return encoder


def _parse_merges(data: bytes, name: str) -> list[tuple[str, str]]:
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 text: {e}") from e
    # The original kept lines[1:-1]: it skips the "#version" header and the empty
    # string after the final newline. Insist on both so that no merge is lost.
    if not lines[0].startswith("#version") or lines[-1] != "":
        raise DataError(f"{name}: expected a '#version' first line and a final newline")
    merges = []
    for number, line in enumerate(lines[1:-1], start=2):
        pair = tuple(line.split())
        if len(pair) != 2:
            raise DataError(f"{name}, line {number}: expected two symbols, got {line!r}")
        merges.append(pair)
    return merges


# Each worker process holds its own copy of the tokenizer, set once by the
# pool initializer; a module global is how multiprocessing hands it over.
_worker_tokenizer: GPT1BPETokenizer | None = None


def _init_worker(tokenizer: GPT1BPETokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(pieces: list[tuple[str, bool]]) -> list[list[int]]:
    return _worker_tokenizer._encode_pieces(pieces)


def _batches_of_chars(pieces: list[tuple[str, bool]], max_chars: int) -> list[list[tuple[str, bool]]]:
    """Group consecutive pieces into batches of about `max_chars` characters (fewer round trips)."""
    batches, batch, size = [], [], 0
    for piece in pieces:
        if batch and size + len(piece[0]) > max_chars:
            batches.append(batch)
            batch, size = [], 0
        batch.append(piece)
        size += len(piece[0])
    if batch:
        batches.append(batch)
    return batches


def gpt1_bpe_tokenizer(encoder_json: PathLike | None = None,
                       merges_bpe: PathLike | None = None) -> GPT1BPETokenizer:
    """The GPT-1 BPE tokenizer; by default with the vocabulary bundled in gpt1_jax/assets."""
    encoder_path = epath.Path(encoder_json or assets.GPT1_ENCODER_JSON)
    merges_path = epath.Path(merges_bpe or assets.GPT1_MERGES_BPE)
    return GPT1BPETokenizer(
        _read_bytes(encoder_path, "GPT-1 encoder JSON"), _read_bytes(merges_path, "GPT-1 BPE merges"),
        encoder_name=str(encoder_path), merges_name=str(merges_path))


# --------------------------------------------------------------------------
# SentencePiece: a BPE model trained on the user's corpus.
# --------------------------------------------------------------------------

class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; build it with `train_sentencepiece` or `sentencepiece_tokenizer`.

    SentencePiece's default normalisation (NFKC, runs of whitespace -> one
    space) applies, so line breaks do not survive a round trip.
    """

    kind = "sentencepiece"
    MODEL_FILE = "sentencepiece.model"

    def __init__(self, model_proto: bytes, *, name: str = MODEL_FILE):
        self._model_proto = model_proto
        self._processor = sentencepiece.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as e:
            raise DataError(f"{name}: not a SentencePiece model: {e}") from e
        self.vocab_size = self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """The model's ids for `text` (CRLF is read as LF)."""
        return self._processor.encode(text.replace("\r\n", "\n"))

    def encode_batch(self, texts: Sequence[str], progress: bool = False) -> list[list[int]]:
        """Encode many texts; SentencePiece's C++ side is fast enough without a pool."""
        out = []
        for start in tqdm.trange(0, len(texts), 1024, disable=not progress):
            out.extend(self._processor.encode([t.replace("\r\n", "\n") for t in texts[start:start + 1024]]))
        return out

    def _decode_base(self, ids: list[int]) -> str:
        return self._processor.decode(ids)

    def fingerprint(self) -> str:
        """Covers the model file and the sentencepiece version."""
        header = json.dumps({"kind": self.kind, "pipeline_version": PIPELINE_VERSION,
                             "sentencepiece": sentencepiece.__version__})
        return _sha256(header.encode("utf-8"), self._model_proto)

    def save(self, directory: PathLike) -> None:
        """Write the model file and tokenizer.json."""
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.MODEL_FILE).write_bytes(self._model_proto)
        self._write_config(directory, model_file=self.MODEL_FILE)


def sentencepiece_tokenizer(model_file: PathLike) -> SentencePieceTokenizer:
    """Load a trained SentencePiece model (a `.model` file)."""
    return SentencePieceTokenizer(_read_bytes(model_file, "SentencePiece model"), name=str(model_file))


def train_sentencepiece(text_files: Sequence[PathLike], vocab_size: int, model_prefix: PathLike,
                        *, input_sentence_size: int = 2_000_000) -> SentencePieceTokenizer:
    """Train a BPE SentencePiece model on the lines of `text_files`.

    Writes `model_prefix`.model and `model_prefix`.vocab. The result is
    deterministic: one training thread and a fixed seed for the sentence
    sampling that kicks in beyond `input_sentence_size` lines. `vocab_size`
    counts every piece, <unk> (id 0) included; no <s>/</s> pieces are made,
    since fine-tuning brings its own `SPECIAL_TOKENS`.
    """
    paths = [epath.Path(p) for p in text_files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"training text not found: {path}")

    def lines():
        for path in paths:
            with open(path, encoding="utf-8", newline=None) as f:  # newline=None reads CRLF as LF
                for line in f:
                    if line.strip():
                        yield line.rstrip("\n")

    model_prefix = epath.Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    sentencepiece.set_random_generator_seed(0)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_prefix=str(model_prefix), vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, num_threads=1,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        max_sentence_length=1 << 16, bos_id=-1, eos_id=-1, minloglevel=2)
    # The trained model records its output path (a temporary one in the jobs); cleared, the
    # same corpus and settings give the same bytes, fingerprint and token cache every time.
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(_read_bytes(f"{model_prefix}.model", "SentencePiece model"))
    proto.trainer_spec.model_prefix = ""
    return SentencePieceTokenizer(proto.SerializeToString(), name=f"{model_prefix}.model")


# --------------------------------------------------------------------------
# Saved tokenizers.
# --------------------------------------------------------------------------

def load_tokenizer(directory: PathLike) -> Tokenizer:
    """Rebuild the tokenizer that `Tokenizer.save(directory)` wrote."""
    directory = epath.Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"tokenizer config not found: {config_path}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        kind = config["kind"]
        if kind == GPT1BPETokenizer.kind:
            files = [directory / config["encoder_file"], directory / config["merges_file"]]
            build = gpt1_bpe_tokenizer
        elif kind == SentencePieceTokenizer.kind:
            files = [directory / config["model_file"]]
            build = sentencepiece_tokenizer
        else:
            raise DataError(f"unknown tokenizer kind {kind!r}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{config_path}: malformed tokenizer config: {e!r}") from e
    tokenizer = build(*files)
    if config.get("vocab_size") != tokenizer.vocab_size:
        raise DataError(f"{config_path}: vocab_size {config.get('vocab_size')} but the files hold "
                         f"{tokenizer.vocab_size}")
    if config.get("fingerprint") != tokenizer.fingerprint():
        warnings.warn(f"{config_path}: the fingerprint differs from the saved one; the files or the "
                      "ftfy/spaCy/sentencepiece versions changed, so ids may differ from the saved run's",
                      stacklevel=2)
    return tokenizer
