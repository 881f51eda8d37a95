"""GPT-1 BPE ids against an independent, straightforward rendering of the original pipeline
(openai/finetune-transformer-lm text_utils.py: ftfy -> text_standardize -> spaCy English
tokenizer -> lower-case -> BPE), line by line over the bundled books; and where the
transformers 5 `OpenAIGPTTokenizer` (BERT normaliser + pre-tokenizer) parts from it.

The suite checks a fixed sample of lines. The full comparison, with the transformers 5
differences counted and sorted into causes, runs as a script:

    python tests/test_tokenizer_parity.py [--every=1]
"""
import collections
import difflib
import functools
import itertools
import json
import re
import sys
import time

import ftfy
import pytest
import spacy

from gpt1_jax import assets, tokenizers

# Characters whose runs the original clean-up sets off with spaces. Its pattern also
# names the backslash, but as "\\+" in a non-raw string, which the regex engine reads
# as one literal "+": backslashes are left alone.
_PADDED = set('-~!";?+,)(/*[]}{|_')
_REPLACED = {"—": "-", "–": "-", "―": "-", "…": "...", "´": "'"}


class OriginalPipeline:
    """TextEncoder.encode of the original, one text at a time, written out plainly."""

    def __init__(self):
        self.encoder = json.loads(assets.GPT1_ENCODER_JSON.read_text(encoding="utf-8"))
        merge_lines = assets.GPT1_MERGES_BPE.read_text(encoding="utf-8").split("\n")[1:-1]
        self.rank = {tuple(line.split()): r for r, line in enumerate(merge_lines)}
        # spacy.load("en") with every pipe disabled is the language's rule-based tokenizer.
        self.nlp = spacy.blank("en")

    @staticmethod
    def standardize(text: str) -> str:
        text = "".join(_REPLACED.get(c, c) for c in text)
        pieces = []
        for char, run in itertools.groupby(text):
            run = "".join(run)
            pieces.append(f" {run} " if char in _PADDED else run)
        text = "".join(pieces)
        text = re.sub(r"\s*\n\s*", " \n ", text)
        text = re.sub(r"[^\S\n]+", " ", text)
        return text.strip()

    def words(self, text: str) -> list[str]:
        """The lower-cased spaCy tokens that BPE sees."""
        return [token.text.lower() for token in self.nlp(self.standardize(ftfy.fix_text(text)))]

    @functools.cache  # noqa: B019 (a few instances, each kept for the whole module)
    def bpe(self, word: str) -> tuple[str, ...]:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            ranked = [(self.rank[p], p) for p in zip(symbols, symbols[1:]) if p in self.rank]
            if not ranked:
                break
            best = min(ranked)[1]
            # Merge every occurrence of the best pair, left to right, without overlaps.
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            symbols = out
        # The original joined the symbols with spaces and split them again.
        joined = " ".join(symbols)
        return tuple(("\n</w>" if joined == "\n  </w>" else joined).split(" "))

    def encode(self, text: str) -> list[int]:
        return [self.encoder.get(piece, 0) for word in self.words(text) for piece in self.bpe(word)]


def book_lines() -> list[str]:
    """Every non-blank line of the bundled books, line ends (CRLF) removed."""
    lines = []
    for path in assets.book_files():
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
        lines.extend(line for line in text.split("\n") if line.strip())
    return lines


@pytest.fixture(scope="module")
def original():
    return OriginalPipeline()


def test_bpe_tokenizer_equals_the_original_pipeline_on_sampled_book_lines(original):
    lines = book_lines()[::40]
    assert len(lines) > 3000
    ours = tokenizers.gpt1_bpe_tokenizer().encode_batch(lines, num_workers=1)
    mismatches = [(line, got) for line, got in zip(lines, ours) if got != original.encode(line)]
    assert not mismatches, mismatches[:3]


@pytest.mark.parametrize("text", [
    "A line\nand another,\n\n\nthen a paragraph…",
    "C:\\path\\to -- file!!! (really?) [sic] {x} |y| _z_ ~w~ 1+1",
    "Café déjà vu — naïve ´quote´ &amp; \u00a0nbsp",
    "Mr. Knightley didn't say 'twas 3.5 o'clock; e.g. U.S.A.",
])
def test_bpe_tokenizer_equals_the_original_pipeline_on_edge_cases(original, text):
    assert tokenizers.gpt1_bpe_tokenizer().encode(text) == original.encode(text)


# ---------------------------------------------------------------------------
# transformers 5: OpenAIGPTTokenizer = BertNormalizer(lowercase) + BertPreTokenizer + BPE
# ---------------------------------------------------------------------------

def transformers5_tokenizer():
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers < 5 has the ftfy/spaCy tokenizer")
    vocab = json.loads(assets.GPT1_ENCODER_JSON.read_text(encoding="utf-8"))
    merge_lines = assets.GPT1_MERGES_BPE.read_text(encoding="utf-8").split("\n")[1:-1]
    return transformers.OpenAIGPTTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merge_lines])


def transformers5_words(tokenizer, text: str) -> list[str]:
    backend = tokenizer.backend_tokenizer
    normalized = backend.normalizer.normalize_str(text)
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]


# Why the two split a text differently, tested in this order on each differing stretch.
CAUSES = {
    "ftfy": "ftfy straightens curly quotes (“ ” ‘ ’ -> \" ') before anything else; "
            "transformers 5 has no ftfy step",
    "unicode mapping": "text_standardize maps dashes, the ellipsis and ´ to ASCII before "
                       "tokenizing; BERT keeps the character",
    "apostrophe": "spaCy splits English clitics off (do|n't, emma|'s); BERT splits at every "
                  "apostrophe (don|'|t, emma|'|s)",
    "spaCy word split": "spaCy's exceptions split some words without an apostrophe "
                        "(cannot -> can|not, wont -> wo|nt); BERT keeps them whole",
    "punctuation run": "the original sets a run of one punctuation mark off as one token "
                       "('--', '!!', '...'); BERT makes each character a token",
    "period in a word": "spaCy keeps the periods of abbreviations, initials and names "
                        "(mr., u.s.a., p107.jpg); BERT splits every period off",
    "accent": "the BERT normaliser strips accents (rôle -> role); the original keeps them",
    "other": "anything else (see the examples)",
}


def classify(ours: list[str], theirs: list[str]) -> str:
    """The cause of one differing stretch of words (ours: the original's words)."""
    joined_ours, joined_theirs = "".join(ours), "".join(theirs)
    if any(c in joined_theirs for c in "“”‘’"):
        return "ftfy"
    if any(c in joined_theirs for c in _REPLACED):
        return "unicode mapping"
    if any("'" in w and w != "'" for w in ours):
        return "apostrophe"
    if len(ours) > 1 and all(w.isalnum() for w in ours) and joined_ours in theirs:
        return "spaCy word split"
    if any(len(w) > 1 and len(set(w)) == 1 and not w.isalnum() for w in ours):
        return "punctuation run"
    if any(len(w) > 1 and "." in w and any(c.isalnum() for c in w) for w in ours):
        return "period in a word"
    if not joined_ours.isascii() and joined_theirs.isascii():
        return "accent"
    return "other"


def test_transformers5_differences_are_the_documented_ones(original):
    tokenizer = transformers5_tokenizer()
    examples = {
        "ftfy": "“Yes,” she said",
        "unicode mapping": "a…",
        "apostrophe": "I don't know",
        "spaCy word split": "I cannot",
        "punctuation run": "Wait -- what",
        "period in a word": "Mr. Knightley",
        "accent": "a naïve café",
    }
    for cause, text in examples.items():
        ours, theirs = original.words(text), transformers5_words(tokenizer, text)
        assert ours != theirs, text
        stretches = [(ours[i1:i2], theirs[j1:j2]) for op, i1, i2, j1, j2
                     in difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False).get_opcodes() if op != "equal"]
        assert classify(*stretches[0]) == cause, (text, stretches)
        assert tokenizer.encode(text, add_special_tokens=False) != original.encode(text)
    plain = "it was a bright cold day in april , and the clocks were striking thirteen"
    assert tokenizer.encode(plain, add_special_tokens=False) == original.encode(plain)


def _full_run(every: int) -> dict:
    lines = book_lines()[::every]
    original = OriginalPipeline()
    started = time.time()
    expected = [original.encode(line) for line in lines]
    ours = tokenizers.gpt1_bpe_tokenizer().encode_batch(lines)
    report = {"lines": len(lines), "seconds_original": round(time.time() - started, 1),
              "ftfy": ftfy.__version__, "spacy": spacy.__version__,
              "gpt1_jax_mismatches": sum(a != b for a, b in zip(ours, expected)),
              "gpt1_jax_mismatch_examples": [l for l, a, b in zip(lines, ours, expected) if a != b][:5]}
    try:
        tokenizer = transformers5_tokenizer()
    except pytest.skip.Exception as e:
        report["transformers5"] = f"skipped: {e}"
        return report
    theirs = tokenizer(lines, add_special_tokens=False)["input_ids"]
    differing = [i for i, (a, b) in enumerate(zip(theirs, expected)) if a != b]
    lines_by_cause = collections.Counter()
    examples = collections.defaultdict(list)
    for i in differing:
        ours_words, their_words = original.words(lines[i]), transformers5_words(tokenizer, lines[i])
        causes = set()
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ours_words, b=their_words,
                                                          autojunk=False).get_opcodes():
            if op != "equal":
                cause = classify(ours_words[i1:i2], their_words[j1:j2])
                causes.add(cause)
                example = f"{' '.join(ours_words[i1:i2])} | {' '.join(their_words[j1:j2])}"
                if len(examples[cause]) < 5 and example not in examples[cause]:
                    examples[cause].append(example)
        if not causes:
            causes.add("same words, different ids")
        lines_by_cause.update(causes)
    import transformers
    report["transformers5"] = {
        "version": transformers.__version__,
        "differing_lines": len(differing),
        "differing_fraction": round(len(differing) / len(lines), 4),
        "lines_by_cause": dict(lines_by_cause.most_common()),
        "examples": dict(examples),
        "causes": CAUSES,
    }
    return report


if __name__ == "__main__":
    every = int(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--every=")), "1"))
    print(json.dumps(_full_run(every), indent=2, ensure_ascii=False))
