"""Tokenizers: GPT-1 BPE ids equal the original pipeline's; SentencePiece trains and round-trips."""
import json
import re

import ftfy
import pytest
import spacy

from gpt1_jax import assets, tokenizers

NEWLINE_ID = 40477


# ---------------------------------------------------------------------------
# A plain, unchunked port of TextEncoder.encode from openai/finetune-transformer-lm
# (text_utils.py): the whole text goes through ftfy, the clean-up and spaCy in one
# pass, and BPE scans pairs the way the original did. The module under test must
# agree with it however it cuts the text.
# ---------------------------------------------------------------------------

class ReferenceEncoder:
    def __init__(self):
        self.encoder = json.loads(assets.GPT1_ENCODER_JSON.read_text(encoding="utf-8"))
        lines = assets.GPT1_MERGES_BPE.read_text(encoding="utf-8").split("\n")[1:-1]
        merges = [tuple(line.split()) for line in lines]
        self.ranks = dict(zip(merges, range(len(merges))))
        self.spacy_tokenizer = spacy.blank("en").tokenizer
        self.cache = {}

    @staticmethod
    def standardize(text):
        for old, new in [("—", "-"), ("–", "-"), ("―", "-"), ("…", "..."), ("´", "'")]:
            text = text.replace(old, new)
        # The original alternation; its "\\+" alternative meant a literal "+", so
        # backslashes are not padded.
        runs = "|".join(re.escape(c) + "+" for c in '-~!";?+,)(/*[]}{|_')
        text = re.sub(f"({runs})", r" \1 ", text)
        text = re.sub(r"\s*\n\s*", " \n ", text)
        text = re.sub(r"[^\S\n]+", " ", text)
        return text.strip()

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            first, second = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if (first, second) not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                j = word.index(first, i) if first in word[i:] else len(word)
                merged.extend(word[i:j])
                i = j
                if i == len(word):
                    break
                if i + 1 < len(word) and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        out = "\n</w>" if out == "\n  </w>" else out
        self.cache[token] = out
        return out

    def tokens(self, text):
        return [t.text for t in self.spacy_tokenizer(self.standardize(ftfy.fix_text(text)))]

    def encode(self, text):
        ids = []
        for token in self.tokens(text):
            ids.extend(self.encoder.get(piece, 0) for piece in self.bpe(token.lower()).split(" "))
        return ids


@pytest.fixture(scope="module")
def gpt1():
    return tokenizers.gpt1_bpe_tokenizer()


@pytest.fixture(scope="module")
def reference():
    return ReferenceEncoder()


def read_book(name):
    return (assets.BOOKS_DIR / name).read_text(encoding="utf-8").replace("\r\n", "\n")


def book_excerpts():
    """Real pages around curly quotes, em dashes, ligatures, accents, pounds, '&', '...'."""
    picks = [("moby_dick.txt", "æ"), ("moby_dick.txt", "—"), ("great_expectations.txt", "ô"),
             ("mansfield_park.txt", "£"), ("jane_eyre.txt", "&"), ("emma.txt", "..."),
             ("the_last_of_the_mohicans.txt", "“")]
    excerpts = [read_book("bleak_house.txt")[:6000]]  # front matter: title, contents, numerals
    for name, needle in picks:
        text = read_book(name)
        at = text.index(needle)
        excerpts.append(text[max(0, at - 3000):at + 3000])
    return excerpts


TRICKY = ("Mr. O'Neil's  “best”—and   worst… ideas´s: 3.5% of U.S. $1,000,000 e.g. (really!!) --- ok\r\n"
          "\r\n  Tabs\there & &amp; &lt; entities\u2028next\x85line \\back\\slash ++ // ~~ __x__ {y} [z]\n"
          "<b>html</b> &amp; from here on no entity is unescaped\n&amp; &lt;\n"
          "ﬁne ＷＩＤＥ café naïve İstanbul ☃ 😀 \x1b[31mred\x1b[0m \x00nul\n\n\n   ")


# --------------------------------- GPT-1 BPE ---------------------------------

def test_vocab_size_and_special_ids(gpt1):
    assert gpt1.kind == "gpt1_bpe"
    assert gpt1.vocab_size == 40478
    assert gpt1.special_token_ids() == {"_start_": 40478, "_delimiter_": 40479, "_classify_": 40480}


def test_known_word_ids_come_from_the_vocabulary_file(gpt1, reference):
    enc = reference.encoder
    assert gpt1.encode("the") == [enc["the</w>"]] == [481]
    assert gpt1.encode("The") == gpt1.encode("THE") == [481]  # lower-cased before BPE
    assert gpt1.encode("Hello, world!") == [enc["hello</w>"], enc[",</w>"], enc["world</w>"], enc["!</w>"]]
    # A rare word falls into several pieces that spell it back.
    ids = gpt1.encode("xylophonist")
    assert len(ids) > 1
    assert "".join({i: p for p, i in enc.items()}[i] for i in ids) == "xylophonist</w>"


def test_line_breaks_become_one_newline_token(gpt1, reference):
    one, two = reference.encoder["one</w>"], reference.encoder["two</w>"]
    assert reference.encoder["\n</w>"] == NEWLINE_ID
    assert gpt1.encode("one\ntwo") == [one, NEWLINE_ID, two]
    assert gpt1.encode("one \r\n\n  \n\ttwo") == [one, NEWLINE_ID, two]
    assert gpt1.encode("\n\n one \n\n") == [one]
    assert gpt1.encode(" \n\r\n ") == gpt1.encode("") == []


def test_unknown_characters_map_to_id_zero(gpt1, reference):
    for text in ["☃", "a ☃ b", "😀", "snow☃man"]:
        ids = gpt1.encode(text)
        assert 0 in ids
        assert ids == reference.encode(text)
    assert gpt1.encode("☃") == [0]


def test_decode_gives_back_lower_cased_standardised_text(gpt1, reference):
    text = "the cat sat on the mat , and the dog barked ! \n then it rained ."
    assert gpt1.decode(gpt1.encode(text)) == text
    assert gpt1.decode(gpt1.encode(text.upper())) == text
    # A real paragraph: decoding shows the spaCy tokens, lower-cased, one space apart.
    paragraph = " ".join(read_book("jane_eyre.txt").split("\n\n")[40:43]).replace("\n", " ")
    ids = gpt1.encode(paragraph)
    assert 0 not in ids
    assert gpt1.decode(ids) == " ".join(t.lower() for t in reference.tokens(paragraph))


def test_decode_names_special_tokens_and_rejects_unknown_ids(gpt1):
    specials = gpt1.special_token_ids()
    ids = [specials["_start_"], *gpt1.encode("hello"), specials["_delimiter_"], *gpt1.encode("world"),
           specials["_classify_"]]
    assert gpt1.decode(ids) == "_start_ hello _delimiter_ world _classify_"
    with pytest.raises(ValueError):
        gpt1.decode([40481])
    with pytest.raises(ValueError):
        gpt1.decode([-1])


@pytest.mark.parametrize("piece_chars", [200, 1 << 16])
def test_chunked_encode_equals_unchunked_original(gpt1, reference, monkeypatch, piece_chars):
    # Small pieces put cuts everywhere: mid-paragraph, at blank lines, after "<".
    monkeypatch.setattr(tokenizers, "_PIECE_CHARS", piece_chars)
    for text in book_excerpts() + [TRICKY, TRICKY * 3, "&amp; x\n" * 50 + "<p>\n" + "&amp; y\n" * 50]:
        assert gpt1.encode(text) == reference.encode(text)


@pytest.mark.slow
def test_whole_book_equals_unchunked_original(gpt1, reference):
    book = read_book("emma.txt")  # 0.9M characters: many default-sized pieces
    assert gpt1.encode(book) == reference.encode(book)


def test_paragraph_ids_joined_by_newline_give_the_document_ids(gpt1, reference):
    for text in book_excerpts()[:4]:
        paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        joined = []
        for ids in gpt1.encode_batch(paragraphs):
            joined += ([NEWLINE_ID] if joined else []) + ids
        assert joined == reference.encode(text)


@pytest.mark.slow
def test_encode_batch_on_worker_processes_equals_encode(gpt1):
    texts = book_excerpts() + [TRICKY, "", "\n"]
    assert gpt1.encode_batch(texts, num_workers=2, progress=True) == [gpt1.encode(t) for t in texts]


def test_fingerprint_is_stable_and_tracks_the_merges(gpt1, tmp_path, monkeypatch):
    fingerprint = gpt1.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert tokenizers.gpt1_bpe_tokenizer().fingerprint() == fingerprint

    lines = assets.GPT1_MERGES_BPE.read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # swap the two highest-priority merges
    merges = tmp_path / "vocab_40000.bpe"
    merges.write_text("\n".join(lines), encoding="utf-8")
    assert tokenizers.gpt1_bpe_tokenizer(merges_bpe=merges).fingerprint() != fingerprint

    monkeypatch.setattr(tokenizers, "PIPELINE_VERSION", tokenizers.PIPELINE_VERSION + 1)
    assert gpt1.fingerprint() != fingerprint


def test_gpt1_save_and_load_round_trip(gpt1, tmp_path):
    gpt1.save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert config["kind"] == "gpt1_bpe" and config["vocab_size"] == 40478
    assert (tmp_path / "tok" / "vocab_40000.bpe").read_bytes() == assets.GPT1_MERGES_BPE.read_bytes()
    loaded = tokenizers.load_tokenizer(tmp_path / "tok")
    assert loaded.kind == "gpt1_bpe"
    assert loaded.fingerprint() == gpt1.fingerprint()
    assert loaded.encode(TRICKY) == gpt1.encode(TRICKY)


def test_bad_vocabulary_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        tokenizers.gpt1_bpe_tokenizer(encoder_json=tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        tokenizers.gpt1_bpe_tokenizer(encoder_json=broken)
    headless = tmp_path / "headless.bpe"
    headless.write_text("t h\ni n\n")
    with pytest.raises(ValueError, match="headless.bpe"):
        tokenizers.gpt1_bpe_tokenizer(merges_bpe=headless)


def test_load_tokenizer_errors_name_the_file(gpt1, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        tokenizers.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("[]")
    with pytest.raises(ValueError, match="tokenizer.json"):
        tokenizers.load_tokenizer(tmp_path)
    gpt1.save(tmp_path / "saved")
    (tmp_path / "saved" / "encoder_bpe_40000.json").unlink()
    with pytest.raises(FileNotFoundError, match="encoder_bpe_40000.json"):
        tokenizers.load_tokenizer(tmp_path / "saved")


# -------------------------------- SentencePiece -------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # A slice of a real book, CRLF line endings and curly quotes kept.
    path = tmp_path_factory.mktemp("corpus") / "emma_slice.txt"
    path.write_bytes((assets.BOOKS_DIR / "emma.txt").read_bytes()[:200_000])
    return path


@pytest.fixture(scope="module")
def sp(corpus, tmp_path_factory):
    return tokenizers.train_sentencepiece([corpus], 500, tmp_path_factory.mktemp("sp") / "model")


def test_sentencepiece_vocab_and_round_trip(sp, corpus):
    assert sp.kind == "sentencepiece"
    assert sp.vocab_size == 500
    line = "“Emma could not but feel some mortification at the idea,” said Mr. Knightley."
    ids = sp.encode(line)
    assert all(0 <= i < 500 for i in ids)
    assert sp.decode(ids) == line
    assert sp.encode("one\r\ntwo") == sp.encode("one\ntwo")
    start = sp.special_token_ids()["_start_"]
    assert start == 500
    assert sp.decode([start] + ids) == "_start_ " + line
    assert sp.encode_batch([line, "two"], progress=True) == [ids, sp.encode("two")]


def test_sentencepiece_training_is_deterministic(corpus, tmp_path):
    first = tokenizers.train_sentencepiece([corpus], 500, tmp_path / "model")
    model_bytes = (tmp_path / "model.model").read_bytes()
    second = tokenizers.train_sentencepiece([corpus], 500, tmp_path / "model")
    assert (tmp_path / "model.model").read_bytes() == model_bytes
    assert first.fingerprint() == second.fingerprint()
    # Where the model was written does not matter either (jobs train into temporary folders).
    elsewhere = tokenizers.train_sentencepiece([corpus], 500, tmp_path / "elsewhere" / "other")
    assert elsewhere.fingerprint() == first.fingerprint()


def test_sentencepiece_save_load_and_fingerprint(sp, gpt1, tmp_path):
    assert sp.fingerprint() != gpt1.fingerprint()
    sp.save(tmp_path / "tok")
    loaded = tokenizers.load_tokenizer(tmp_path / "tok")
    assert loaded.kind == "sentencepiece"
    assert loaded.fingerprint() == sp.fingerprint()
    text = read_book("emma.txt")[5000:8000]
    assert loaded.encode(text) == sp.encode(text)


def test_sentencepiece_errors_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.model"):
        tokenizers.sentencepiece_tokenizer(garbage)
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        tokenizers.train_sentencepiece([tmp_path / "nowhere.txt"], 500, tmp_path / "m")
