"""Text a trained model writes after a prompt: one greedy and one sampled continuation.

    texts = continuations(model_config, params, tokenizer, "It was a dark night, and")
    print(prompt + texts["greedy"]); print(prompt + texts["sampled"])

The pre-training job calls this at its end, prints both and stores them in summary.json,
so a run shows what its loss means in words. Both are reproducible: greedy has no
randomness and the sampled one draws from a fixed seed.
"""
from collections.abc import Sequence
from typing import Protocol

import jax

from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib

DEFAULT_PROMPT = "It was a dark and stormy night, and"
# Sharper than the raw distribution, so a small model's continuation stays readable; the
# cut to the 40 likeliest tokens drops the long tail of rare pieces it cannot place yet.
SAMPLED = generate_lib.Sampling(temperature=0.8, top_k=40)


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def continuations(config: model_lib.ModelConfig, params, tokenizer: TextTokenizer,
                  prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 96,
                  seed: int = 0) -> dict[str, str]:
    """{"greedy": text, "sampled": text}: what follows `prompt`, without the prompt.

    At most `max_new_tokens` tokens each, fewer if the prompt and they would overflow the
    context (n_ctx). "sampled" draws with `SAMPLED` from `jax.random.key(seed)`.
    """
    prompt_ids = tokenizer.encode(prompt)
    room = config.n_ctx - len(prompt_ids)
    if not prompt_ids or room < 1:
        raise ValueError(f"the prompt {prompt!r} has {len(prompt_ids)} tokens; it needs at least "
                         f"one and fewer than the context of {config.n_ctx}")
    max_new_tokens = min(max_new_tokens, room)
    greedy = generate_lib.generate(config, params, [prompt_ids], max_new_tokens,
                                   generate_lib.GREEDY)[0]
    sampled = generate_lib.generate(config, params, [prompt_ids], max_new_tokens, SAMPLED,
                                    jax.random.key(seed))[0]
    return {"greedy": continuation_text(tokenizer, prompt_ids, greedy),
            "sampled": continuation_text(tokenizer, prompt_ids, sampled)}


def continuation_text(tokenizer: TextTokenizer, prompt_ids: Sequence[int],
                      new_ids: Sequence[int]) -> str:
    """The text `new_ids` add after the prompt.

    Decoded together with the prompt and then cut, because a tokenizer may render a piece
    differently at the start of a text (sentencepiece drops a leading space).
    """
    prompt_text = tokenizer.decode(list(prompt_ids))
    full_text = tokenizer.decode(list(prompt_ids) + list(new_ids))
    if full_text.startswith(prompt_text):
        return full_text[len(prompt_text):]
    return tokenizer.decode(list(new_ids))
