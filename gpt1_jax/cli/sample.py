r"""Continue a prompt with a trained model.

    python -m gpt1_jax.cli.sample --init_from=runs/demo --prompt="it was a dark and stormy night" \
        [--max_new_tokens=64 --temperature=0.8 --top_k=40 --top_p=1.0 --num_samples=2 --seed=0]

`--init_from` is anything the config's `init_from` takes (local or gs://): a pretraining workdir (its
export when the run finished, else its latest checkpoint), a training checkpoint, or a
params export (such as `convert` writes). Decoding is KV-cached (`generate.py`); the
GPT-1 BPE decodes to its lower-cased, space-separated pieces ("hello , world !").
"""
from absl import app, flags

from gpt1_jax import generate as generate_lib
from gpt1_jax import loading
from gpt1_jax.cli import common

_INIT_FROM = flags.DEFINE_string("init_from", None, "Pretraining workdir, training checkpoint or params "
                                 "export (local or gs://).", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Text to continue; repeat the flag for a batch.",
                                    required=True)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to add (at most the context minus the prompt).",
                                lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 for greedy decoding.", lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).", lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample among the likeliest tokens holding this much probability "
                            "(0 < p <= 1).", upper_bound=1.0)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Continuations per prompt.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the sampling.", lower_bound=0)
flags.register_validator("top_p", lambda p: 0 < p <= 1, "--top_p must be in (0, 1]")
_STOP_TOKEN = flags.DEFINE_integer("stop_token", -1, "Token id that ends a continuation, e.g. 40477 "
                                   "(a line break in the GPT-1 BPE); -1: none.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sampling = generate_lib.Sampling(temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value)
    texts = generate_lib.sample_text(loading.load(_INIT_FROM.value), _PROMPT.value, _MAX_NEW.value,
                                     sampling, _SEED.value, _NUM_SAMPLES.value, _STOP_TOKEN.value)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)


if __name__ == "__main__":
    common.run(main, "sample")
