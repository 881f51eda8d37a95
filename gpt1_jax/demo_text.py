"""Text a trained model writes after a prompt: one greedy and one sampled continuation.

    texts = continuations(model_config, params, tokenizer, "It was a dark night, and")
    print(prompt + texts["greedy"]); print(prompt + texts["sampled"])

The pre-training job calls this at its end, prints both and stores them in summary.json,
so a run shows what its loss means in words. Both are reproducible: greedy has no
randomness and the sampled one draws from a fixed seed. The decoding and the prompt's
checks are `generate.continue_texts`'.
"""
from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib

DEFAULT_PROMPT = "It was a dark and stormy night, and"
# Sharper than the raw distribution, so a small model's continuation stays readable; the
# cut to the 40 likeliest tokens drops the long tail of rare pieces it cannot place yet.
SAMPLED = generate_lib.Sampling(temperature=0.8, top_k=40)


def continuations(config: model_lib.ModelConfig, params, tokenizer, prompt: str = DEFAULT_PROMPT,
                  max_new_tokens: int = 96, seed: int = 0, name: str = "the prompt") -> dict[str, str]:
    """{"greedy": text, "sampled": text}: what follows `prompt`, without the prompt.

    At most `max_new_tokens` tokens each, fewer if the prompt and they would overflow the
    context (n_ctx). "sampled" draws with `SAMPLED` from `jax.random.key(seed)`. A prompt
    that does not fit is a ConfigError naming `name`.
    """
    def one(sampling):
        [text] = generate_lib.continue_texts(config, params, tokenizer, [prompt], max_new_tokens, sampling,
                                             seed, name=name)
        return text
    return {"greedy": one(generate_lib.GREEDY), "sampled": one(SAMPLED)}
