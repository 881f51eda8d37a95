"""Paths of the data files that ship inside the package."""
import pathlib

ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"
BOOKS_DIR = ASSETS_DIR / "books"
GPT1_BPE_DIR = ASSETS_DIR / "gpt1_bpe"
GPT1_ENCODER_JSON = GPT1_BPE_DIR / "encoder_bpe_40000.json"
GPT1_MERGES_BPE = GPT1_BPE_DIR / "vocab_40000.bpe"


def book_files() -> list[pathlib.Path]:
    """The bundled public-domain novels, sorted by name (the default corpus)."""
    return sorted(BOOKS_DIR.glob("*.txt"))
