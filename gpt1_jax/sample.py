"""Continue a prompt with a trained model.

    python -m gpt1_jax.sample --workdir=runs/demo --prompt="it was a dark and stormy night" \
        [--max_new_tokens=64 --temperature=0.8 --top_k=40 --top_p=1.0 --num_samples=2 --seed=0]

`--workdir` is anything `init_from` takes: a pretraining workdir (its export when the run
finished, else its latest checkpoint), a training checkpoint, or a params export
(such as `convert` writes). Decoding is KV-cached (`generate.py`); the GPT-1 BPE
decodes to its lower-cased, space-separated pieces ("hello , world !").
"""
import sys
from typing import Sequence

import jax
from absl import app, flags
from absl import logging as absl_logging

from gpt1_jax import convert
from gpt1_jax import generate as generate_lib


def sample(loaded: convert.LoadedModel, prompts: Sequence[str], max_new_tokens: int,
           sampling: generate_lib.Sampling, seed: int = 0, num_samples: int = 1,
           stop_token: int = -1) -> list[str]:
    """`num_samples` continuations of each prompt, as decoded text (prompt included), in
    prompt-major order. A prompt too long for the context loses its first tokens."""
    cfg, tokenizer = loaded.config, loaded.tokenizer
    if tokenizer is None:
        raise ValueError("the model records no tokenizer: cannot read the prompt")
    max_new_tokens = min(max_new_tokens, cfg.n_ctx - 1)
    room = cfg.n_ctx - max_new_tokens
    prompts_ids = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        if not ids:
            raise ValueError(f"prompt {prompt!r} has no tokens; GPT-1 needs at least one to start from")
        if len(ids) > room:
            print(f"prompt of {len(ids)} tokens cut to its last {room} to leave room for "
                  f"{max_new_tokens} new ones in the context of {cfg.n_ctx}", file=sys.stderr)
            ids = ids[-room:]
        prompts_ids.extend([ids] * num_samples)
    new_ids = generate_lib.generate(cfg, loaded.params, prompts_ids, max_new_tokens, sampling,
                                    jax.random.key(seed), stop_token=None if stop_token < 0 else stop_token)
    return [tokenizer.decode(list(prompt) + new) for prompt, new in zip(prompts_ids, new_ids)]


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    args = flags.FLAGS
    sampling = generate_lib.Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    texts = sample(convert.read_orbax(args.workdir), args.prompt, args.max_new_tokens, sampling,
                   args.seed, args.num_samples, args.stop_token)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)


def _define_flags() -> None:
    # Defined only when run as a script, so importing `sample` defines no global flags.
    flags.DEFINE_string("workdir", None, "Pretraining workdir, training checkpoint or params export.",
                        required=True)
    flags.DEFINE_multi_string("prompt", None, "Text to continue; repeat the flag for a batch.", required=True)
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens to add (at most the context minus the prompt).")
    flags.DEFINE_float("temperature", 1.0, "0 for greedy decoding.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).")
    flags.DEFINE_float("top_p", 1.0, "Sample among the likeliest tokens holding this much probability.")
    flags.DEFINE_integer("num_samples", 1, "Continuations per prompt.")
    flags.DEFINE_integer("seed", 0, "Random seed of the sampling.")
    flags.DEFINE_integer("stop_token", -1, "Token id that ends a continuation, e.g. 40477 (a line "
                         "break in the GPT-1 BPE); -1: none.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
