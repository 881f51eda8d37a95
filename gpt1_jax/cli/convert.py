"""Converts GPT-1 weights between the original release, HF `openai-gpt` and orbax exports.

    python -m gpt1_jax.cli.convert --from=openai --to=orbax path/to/model runs/gpt1_openai
    python -m gpt1_jax.cli.convert --from=hf --to=orbax path/to/openai-gpt runs/gpt1_hf
    python -m gpt1_jax.cli.convert --from=orbax --to=hf gs://bucket/runs/gpt1 exported_hf

SRC and DST may be local or gs:// (see gpt1_jax/convert.py for the formats).
"""
from absl import app, flags

from gpt1_jax import convert
from gpt1_jax import model as model_lib
from gpt1_jax.cli import common

_FROM = flags.DEFINE_enum("from", None, sorted(convert.READERS), "Format of SRC.", required=True)
_TO = flags.DEFINE_enum("to", None, sorted(convert.WRITERS), "Format to write DST in.", required=True)
_N_HEAD = flags.DEFINE_integer("n_head", 12, "Attention heads (--from=openai only: the release "
                               "does not record them).", lower_bound=1)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Write into a non-empty DST.")


def main(argv) -> None:
    if len(argv) != 3:
        raise app.UsageError("usage: python -m gpt1_jax.cli.convert --from={openai,hf,orbax} "
                             "--to={orbax,hf} SRC DST")
    loaded = convert.convert(_FROM.value, _TO.value, argv[1], argv[2], _N_HEAD.value, _OVERWRITE.value)
    cfg = loaded.config
    print(f"{argv[1]} ({_FROM.value}) -> {argv[2]} ({_TO.value}): "
          f"{model_lib.count_params(loaded.params):,} parameters, {cfg.n_layer} layers, "
          f"width {cfg.d_model}, {cfg.n_head} heads, context {cfg.n_ctx}, "
          f"{cfg.vocab_size} + {cfg.n_special} token rows")


if __name__ == "__main__":
    common.run(main, "convert")
