"""EleutherAI's lm-evaluation-harness on this project's models (`pip install ".[harness]"`).

    python -m gpt1_jax.cli.harness --init_from=runs/demo --tasks=gpt1_sst2,gpt1_story_cloze

scoring.py  bucketed, device-sharded log-likelihoods and greedy generation (no harness import)
model.py    the harness model `gpt1_jax` (`@register_model`): requests -> scoring rows
evaluate.py the harness run, its results JSON and table; the callable for pre-training
tasks/      task YAMLs shipped in the package (the paper's zero-shot tasks), data read locally

GPT-1 has no start- or end-of-text token. Both roles go to one token the model was trained
on: the GPT-1 BPE's newline token (`BPE_BOUNDARY`), which ends every paragraph of the
books it read, so it is what precedes a passage's first word (the harness's prefix for
rolling and empty-context log-likelihoods) and what ends a passage (the default stop of
generation). A sentencepiece model drops newlines, so its boundary is the piece of the
sentence-final "." instead. The HF export writes the same token as bos/eos
(gpt1_jax/convert.py), so the harness's `hf` backend reads the same requests.
"""
import importlib.resources

from gpt1_jax import tokenizers

BPE_BOUNDARY = "\n</w>"
TASKS_DIR = str(importlib.resources.files(__package__) / "tasks")


def boundary_token_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The token used as both prefix (start of text) and end of text (see the docstring)."""
    if isinstance(tokenizer, tokenizers.GPT1BPETokenizer):
        return tokenizer.encode("a\nb")[1]
    return tokenizer.encode("a.")[-1]
