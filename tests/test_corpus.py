"""Tests for gpt1_jax.data.corpus: sources, token cache, split, and the grain window pipeline."""
import json
import pathlib
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gpt1_jax.data import corpus


class FakeTokenizer:
    """UTF-8 bytes as ids. Counts calls, can fail on a marker, fingerprint is settable."""

    def __init__(self, fingerprint: str = "bytes-v1", vocab_size: int = 256,
                 fail_on: str | None = None):
        self.vocab_size = vocab_size
        self._fingerprint = fingerprint
        self.fail_on = fail_on
        self.calls = 0

    def encode_batch(self, texts: list[str], progress: bool) -> list[list[int]]:
        self.calls += 1
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError("tokenizer crashed")
        return [list(t.encode("utf-8")) for t in texts]

    def fingerprint(self) -> str:
        return self._fingerprint


def as_text(tokens_N: np.ndarray) -> str:
    return bytes(np.asarray(tokens_N).astype(np.uint8)).decode("utf-8")


@pytest.fixture
def books(tmp_path) -> list[pathlib.Path]:
    """Two small CRLF 'books' with several paragraphs each."""
    paths = []
    for name, body in [("a.txt", "Call me Ishmael.\r\n\r\nSome years ago.\r\nNever mind.\r\n"),
                       ("b.txt", "It is a truth\r\n\r\n\r\n  universally acknowledged.")]:
        path = tmp_path / "corpus" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(body.encode("utf-8"))
        paths.append(path)
    return paths


def cache_files(cache_dir) -> list[str]:
    """What `cache_dir` holds besides the builders' lock files (`.<key>.lock`, empty)."""
    return sorted(p.name for p in pathlib.Path(cache_dir).iterdir() if not p.name.endswith(".lock"))


def build(paths, tokenizer, cache_dir) -> corpus.TokenCache:
    return corpus.build_or_load_token_cache(corpus.TextFilesCorpus(paths), tokenizer, cache_dir,
                                            progress=False)


# --- sources ---------------------------------------------------------------------------------


def test_text_files_are_normalised_and_concatenated_in_order(books, tmp_path):
    cache = build(books, FakeTokenizer(), tmp_path / "cache")
    expected = ("Call me Ishmael.\n\nSome years ago.\nNever mind.\n"
                "It is a truth\n\n\n  universally acknowledged.")
    assert as_text(cache.tokens) == expected
    assert cache.tokens.dtype == np.uint16
    assert isinstance(cache.tokens, np.memmap)


def test_lone_carriage_returns_and_byte_order_mark(tmp_path):
    path = tmp_path / "mac.txt"
    path.write_bytes(b"\xef\xbb\xbfone\rtwo\r\n\rthree")
    assert corpus.read_text_file(path) == "one\ntwo\n\nthree"


def test_each_document_is_encoded_whole(books, tmp_path):
    # Like GPT-1's tokenizer, this one strips the ends of each text: encoding paragraphs
    # separately would drop the blank lines between them, encoding whole documents keeps them.
    class StrippingTokenizer(FakeTokenizer):
        def encode_batch(self, texts, progress):
            return super().encode_batch([t.strip() for t in texts], progress)

    cache = build(books, StrippingTokenizer(), tmp_path / "cache")
    expected = ("Call me Ishmael.\n\nSome years ago.\nNever mind."
                "It is a truth\n\n\n  universally acknowledged.")
    assert as_text(cache.tokens) == expected


@pytest.mark.parametrize("content, why", [(b"", "empty"), (b" \r\n\r\n ", "empty"),
                                          (b"caf\xe9 latin-1", "UTF-8")])
def test_unusable_file_raises_naming_it(books, tmp_path, content, why):
    bad = tmp_path / "corpus" / "broken_book.txt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=rf"broken_book\.txt.*{why}"):
        build(books + [bad], FakeTokenizer(), tmp_path / "cache")
    assert not cache_files(tmp_path / "cache")


def test_empty_or_missing_corpus_raises(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        corpus.TextFilesCorpus([])
    with pytest.raises(ValueError, match="nowhere.txt"):
        corpus.TextFilesCorpus([tmp_path / "nowhere.txt"])


# --- token cache -------------------------------------------------------------------------------


def test_cache_is_reused_without_tokenizing(books, tmp_path):
    first = build(books, FakeTokenizer(), tmp_path / "cache")
    tokenizer = FakeTokenizer()
    second = build(books, tokenizer, tmp_path / "cache")
    assert tokenizer.calls == 0
    assert second.path == first.path
    np.testing.assert_array_equal(second.tokens, first.tokens)
    metadata = json.loads(first.path.with_suffix(".json").read_text())
    assert metadata["num_tokens"] == first.num_tokens
    assert metadata["tokenizer_fingerprint"] == "bytes-v1"


def test_cache_rebuilt_when_file_content_changes_at_same_size(books, tmp_path):
    first = build(books, FakeTokenizer(), tmp_path / "cache")
    books[0].write_bytes(books[0].read_bytes().replace(b"Ishmael", b"Ahab!!!"))
    tokenizer = FakeTokenizer()
    second = build(books, tokenizer, tmp_path / "cache")
    assert tokenizer.calls > 0
    assert second.path != first.path
    assert as_text(second.tokens).startswith("Call me Ahab!!!.")


def test_cache_rebuilt_when_tokenizer_fingerprint_changes(books, tmp_path):
    first = build(books, FakeTokenizer("bytes-v1"), tmp_path / "cache")
    tokenizer = FakeTokenizer("bytes-v2")
    second = build(books, tokenizer, tmp_path / "cache")
    assert tokenizer.calls > 0
    assert second.path != first.path
    assert second.metadata["tokenizer_fingerprint"] == "bytes-v2"


def test_crash_mid_tokenization_leaves_no_files(books, tmp_path, monkeypatch):
    # One document per call, so the first one is on disk when the tokenizer fails on the second.
    monkeypatch.setattr(corpus, "_ENCODE_CHUNK_CHARS", 8)
    failing = FakeTokenizer(fail_on="universally")
    with pytest.raises(RuntimeError, match="crashed"):
        build(books, failing, tmp_path / "cache")
    assert failing.calls == 2
    assert not cache_files(tmp_path / "cache")
    tokenizer = FakeTokenizer()
    build(books, tokenizer, tmp_path / "cache")
    assert tokenizer.calls > 0


@pytest.mark.parametrize("damage", ["delete_json", "truncate_npy"])
def test_incomplete_cache_is_rebuilt(books, tmp_path, damage):
    first = build(books, FakeTokenizer(), tmp_path / "cache")
    expected = np.array(first.tokens)
    if damage == "delete_json":
        first.path.with_suffix(".json").unlink()
    else:
        first.path.write_bytes(first.path.read_bytes()[:-5])
    tokenizer = FakeTokenizer()
    second = build(books, tokenizer, tmp_path / "cache")
    assert tokenizer.calls > 0
    np.testing.assert_array_equal(second.tokens, expected)


def test_wide_vocabulary_uses_uint32(books, tmp_path):
    cache = build(books, FakeTokenizer(vocab_size=70_000), tmp_path / "cache")
    assert cache.tokens.dtype == np.uint32
    assert corpus.token_dtype(40_478 + 3) == np.uint16


# --- TFDS source -------------------------------------------------------------------------------


class TinyTextCorpus(tfds.core.GeneratorBasedBuilder):
    """A three-record text dataset written locally as array_record."""

    VERSION = tfds.core.Version("1.0.0")
    RECORDS = ["first doc\r\nline two", "", "dernière page"]

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"body": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, text in enumerate(self.RECORDS):
            yield i, {"body": text}


def test_tfds_local_array_record_dataset_without_tensorflow(tmp_path):
    data_dir = str(tmp_path / "tfds")
    TinyTextCorpus(data_dir=data_dir, file_format="array_record").download_and_prepare()
    source = corpus.TfdsCorpus("tiny_text_corpus", split="train", data_dir=data_dir,
                               text_key="body")
    cache = corpus.build_or_load_token_cache(source, FakeTokenizer(), tmp_path / "cache",
                                             progress=False)
    # Records come back in written order; the empty one adds nothing.
    assert as_text(cache.tokens) == "first doc\nline twodernière page"
    assert cache.metadata["num_documents"] == 3
    assert cache.metadata["corpus"]["version"] == "1.0.0"
    assert "tensorflow" not in sys.modules

    tokenizer = FakeTokenizer()
    corpus.build_or_load_token_cache(source, tokenizer, tmp_path / "cache", progress=False)
    assert tokenizer.calls == 0

    with pytest.raises(ValueError, match="'text'.*body"):
        corpus.TfdsCorpus("tiny_text_corpus", split="train", data_dir=data_dir)


def test_tfds_mock_data_source(tmp_path):
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        source = corpus.TfdsCorpus("lm1b", split="train")
        records = [r["text"] for r in tfds.data_source("lm1b", split="train")]
        cache = corpus.build_or_load_token_cache(source, FakeTokenizer(), tmp_path / "cache",
                                                 progress=False)
    expected = "".join(r.decode() if isinstance(r, bytes) else r for r in records)
    assert len(records) == 4
    assert as_text(cache.tokens) == expected
    assert "tensorflow" not in sys.modules


# --- split -------------------------------------------------------------------------------------


def test_split_is_contiguous_with_validation_last():
    tokens_N = np.arange(1000)
    train_N, val_N = corpus.split_train_val(tokens_N, 0.1, seq_len=16)
    assert len(val_N) == 100
    np.testing.assert_array_equal(np.concatenate([train_N, val_N]), tokens_N)


def test_split_errors_when_a_part_is_shorter_than_a_window():
    with pytest.raises(ValueError, match=r"my books.*1,000 tokens.*900 train.*100 valid.*129"):
        corpus.split_train_val(np.arange(1000), 0.1, seq_len=128, corpus_name="my books")
    with pytest.raises(ValueError, match="my books"):
        corpus.split_train_val(np.arange(20), 0.5, seq_len=16, corpus_name="my books")


# --- training windows --------------------------------------------------------------------------

SEQ_LEN = 8


@pytest.fixture
def stream_N() -> np.ndarray:
    """Distinct token values, so a value tells its position: 301 tokens → 37 windows of 9."""
    return np.random.default_rng(0).permutation(301).astype(np.uint16)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def batches(stream_N, global_batch_size, seed, window_ids_iterator=None):
    """The training batches as the pre-training job reads them: the shuffled window ids, each
    gathered into `tokens_BxT1` windows of the stream (on one process, every row)."""
    ids = window_ids_iterator or corpus.make_window_ids_iterator(stream_N, SEQ_LEN, global_batch_size, seed)
    return (corpus.gather_windows(stream_N, SEQ_LEN, ids_B) for ids_B in ids)


def window_ids(batch_BxT1, stream_N):
    """The window index of each row, checking the row is exactly that slice of the stream."""
    position_of = np.argsort(stream_N)
    ids = []
    for row in batch_BxT1:
        start = int(position_of[row[0]])
        assert start % SEQ_LEN == 0
        np.testing.assert_array_equal(row, stream_N[start:start + SEQ_LEN + 1])
        ids.append(start // SEQ_LEN)
    return ids


def test_window_count():
    assert corpus.num_train_windows(301, 8) == 37
    assert corpus.num_train_windows(9, 8) == 1
    assert corpus.num_train_windows(8, 8) == 0
    assert corpus.steps_per_epoch(301, 8, 4) == 9


def test_windows_are_stream_slices_with_targets_one_ahead(stream_N):
    batch_BxT1 = next(batches(stream_N, 4, seed=0))
    assert batch_BxT1.shape == (4, SEQ_LEN + 1) and batch_BxT1.dtype == np.int32
    inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
    position_of = np.argsort(stream_N)
    np.testing.assert_array_equal(position_of[targets_BxT], position_of[inputs_BxT] + 1)
    window_ids(batch_BxT1, stream_N)


def test_every_window_once_per_epoch_and_epochs_reshuffled(stream_N):
    # 37 windows, batch 4: batches straddle epoch boundaries, nothing is dropped.
    ids = [i for batch in take(batches(stream_N, 4, seed=3), 19) for i in window_ids(batch, stream_N)]
    first, second = ids[:37], ids[37:74]
    assert sorted(first) == list(range(37))
    assert sorted(second) == list(range(37))
    assert first != second


def test_same_seed_same_batches_different_seed_different(stream_N):
    a = take(batches(stream_N, 4, seed=1), 6)
    b = take(batches(stream_N, 4, seed=1), 6)
    c = take(batches(stream_N, 4, seed=2), 6)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))


def test_resume_from_saved_state_continues_exactly(stream_N):
    ids = corpus.make_window_ids_iterator(stream_N, SEQ_LEN, 4, seed=5)
    take(ids, 5)
    state = json.loads(json.dumps(ids.get_state()))  # as a checkpoint keeps it
    expected = take(batches(stream_N, 4, 5, ids), 3)
    resumed = corpus.make_window_ids_iterator(stream_N, SEQ_LEN, 4, seed=5)
    resumed.set_state(state)
    np.testing.assert_array_equal(np.stack(take(batches(stream_N, 4, 5, resumed), 3)), np.stack(expected))


def test_a_seed_out_of_range_is_a_data_error(stream_N):
    with pytest.raises(ValueError, match="seed must be in"):
        corpus.make_window_ids_iterator(stream_N, SEQ_LEN, 4, seed=-1)


# --- validation batches ------------------------------------------------------------------------


def test_eval_windows_in_order_and_last_partial_batch_dropped(stream_N):
    found = list(corpus.eval_window_ids(len(stream_N), SEQ_LEN, 8))
    assert len(found) == 4  # 37 windows → 4 full batches of 8, 5 windows dropped
    ids = [i for ids_B in found for i in window_ids(corpus.gather_windows(stream_N, SEQ_LEN, ids_B), stream_N)]
    assert ids == list(range(32))
    assert len(list(corpus.eval_window_ids(len(stream_N), SEQ_LEN, 8, max_batches=2))) == 2
    assert corpus.num_eval_batches(len(stream_N), SEQ_LEN, 8) == 4


def test_eval_windows_error_when_no_full_batch(stream_N):
    with pytest.raises(ValueError, match="fewer than one global batch of 64"):
        list(corpus.eval_window_ids(len(stream_N), SEQ_LEN, 64))


def test_unwrap_lines_joins_wrapped_lines_and_keeps_paragraphs():
    text = "It was the best\nof times.\n\n\n  It was the worst  \nof times.\n"
    assert corpus.unwrap_lines(text) == "It was the best of times.\nIt was the worst of times.\n"


def test_unwrapping_is_part_of_the_cache_identity(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\n\nthree\n")
    wrapped = corpus.TextFilesCorpus([path])
    unwrapped = corpus.TextFilesCorpus([path], unwrap=True)
    assert wrapped.identity() != unwrapped.identity()
    assert list(unwrapped.documents()) == ["one two\nthree\n"]


def test_a_batch_of_one_window_works():
    """grain's endless repeat() has length sys.maxsize; batches of one must still iterate."""
    tokens = np.arange(200, dtype=np.uint16)
    ids = corpus.make_window_ids_iterator(tokens, seq_len=8, global_batch_size=1, seed=0)
    first = corpus.gather_windows(tokens, 8, next(ids))
    assert first.shape == (1, 9)
    np.testing.assert_array_equal(first[0, 1:], first[0, :-1] + 1)
