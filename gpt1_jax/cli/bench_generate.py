"""Generation speed: the KV-cached decoder against recomputing the whole sequence per token.

    python -m gpt1_jax.cli.bench_generate --init_from=runs/demo [--new_tokens=256 --prompt_tokens=16 --batch_size=1]

`--init_from` is anything `init_from` takes (local or gs://). Both decoders run greedy
decoding of the same prompt as one jitted loop, compiled and run once first, then timed over
--repeats runs (best kept); prompt and new tokens together fit the model's context. Prints
one JSON object. How: gpt1_jax/tools/bench_generate.py.
"""
import json

from absl import flags

from gpt1_jax import loading
from gpt1_jax.cli import common
from gpt1_jax.tools import bench_generate

_INIT_FROM = flags.DEFINE_string("init_from", None, "Pretraining workdir, training checkpoint or params "
                                 "export (local or gs://).", required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Prompts decoded together.", lower_bound=1)
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 16, "Tokens per prompt.", lower_bound=1)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "Tokens generated per prompt.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs after the first (the best is reported).",
                                lower_bound=1)


def main(argv) -> None:
    result = bench_generate.benchmark(loading.load(_INIT_FROM.value), _BATCH_SIZE.value,
                                      _PROMPT_TOKENS.value, _NEW_TOKENS.value, _REPEATS.value)
    result["init_from"] = str(_INIT_FROM.value)
    print(json.dumps(result))


if __name__ == "__main__":
    common.run(main, "bench_generate")
