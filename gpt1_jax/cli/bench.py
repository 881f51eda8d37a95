r"""Training throughput against the HF PyTorch reference, at the same shape, in one run.

    python -m gpt1_jax.cli.bench --shape=small --reference=hf --out=bench_small.json
    python -m gpt1_jax.cli.bench --shape=gpt1 --reference=hf --out=bench_gpt1.json \
        [--dtype=bfloat16 --attention=dot_product --dropout=0 --profile=DIR]

Each side trains in its own fresh process with the same threads, random tokens and
optimiser, and the two take turns; the reported step times are medians, `ratio` is the
project's tokens/s over the reference's. How and why: gpt1_jax/tools/bench.py.
`--reference=hf` needs PyTorch and transformers: pip install ".[bench]".
"""
import importlib.util
import json
import sys

from absl import flags

from gpt1_jax.cli import common
from gpt1_jax.errors import UserError
from gpt1_jax.tools import bench

_DEFAULTS = bench.Options()
_SHAPE = flags.DEFINE_enum("shape", _DEFAULTS.shape, list(bench.SHAPES), "Model and batch shape.")
_REFERENCE = flags.DEFINE_enum("reference", _DEFAULTS.reference, ["hf", "none"], "What to compare against.")
_OUT = flags.DEFINE_string("out", None, "Write the results here as JSON (also printed).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "0: the shape's batch for this backend.", lower_bound=0)
_DTYPE = flags.DEFINE_enum("dtype", _DEFAULTS.dtype, ["float32", "bfloat16"], "Compute dtype.")
# Checked in main against the model's own list: importing the model to define the flag
# would load JAX into the reference's worker process as well.
_ATTENTION = flags.DEFINE_string("attention", _DEFAULTS.attention, "The project's model.attention, one of "
                                 "model.ATTENTION_IMPLEMENTATIONS (dot_product needs --dropout=0).")
_BACKEND = flags.DEFINE_enum("attention_backend", None, ["xla", "cudnn"], "dot_product: xla or cudnn "
                             "(unset: XLA picks).")
_REMAT = flags.DEFINE_enum("remat", _DEFAULTS.remat, ["none", "dots", "block"], "The project's model.remat.")
_BLOCK = flags.DEFINE_integer("attention_block", _DEFAULTS.attention_block,
                              "The project's model.attention_block (0: one block).", lower_bound=0)
_DROPOUT = flags.DEFINE_float("dropout", _DEFAULTS.dropout, "All dropout rates, both sides, in [0, 1).",
                              lower_bound=0.0, upper_bound=0.999)
_WARMUP = flags.DEFINE_integer("warmup", _DEFAULTS.warmup, "Untimed steps first (compilation, allocator "
                               "warm-up).", lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", _DEFAULTS.steps, "Timed steps of each side, in all.", lower_bound=1)
_TURN_STEPS = flags.DEFINE_integer("turn_steps", _DEFAULTS.turn_steps, "Timed steps of a side per turn "
                                   "(after one untimed).", lower_bound=1)
_PROFILE = flags.DEFINE_string(
    "profile", None, "Also trace 2 more steps of each side into this directory and print where the time "
    "goes (profiling.py); written to DIR/profile.json and DIR/profile_hf.json.")
_WORKER = flags.DEFINE_enum("worker", None, ["project", "hf"], "Internal: run one side here.")


def options() -> bench.Options:
    return bench.Options(
        shape=_SHAPE.value, reference=_REFERENCE.value, batch_size=_BATCH.value, dtype=_DTYPE.value,
        attention=_ATTENTION.value, attention_backend=_BACKEND.value, remat=_REMAT.value,
        attention_block=_BLOCK.value, dropout=_DROPOUT.value, warmup=_WARMUP.value, steps=_STEPS.value,
        turn_steps=_TURN_STEPS.value, profile=_PROFILE.value)


def main(argv) -> None:
    opts = options()
    if _WORKER.value:
        # Nothing of the other side is imported here: its memory would count as ours.
        bench.serve((bench.project_session if _WORKER.value == "project" else bench.hf_session)(opts))
        return
    if opts.reference == "hf":
        absent = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
        if absent:
            raise UserError(f"--reference=hf needs {' and '.join(absent)}: pip install \".[bench]\" "
                            "(or --reference=none to time the project alone)")
    from gpt1_jax import model as model_lib  # here, in the parent, whose memory no side counts
    if opts.attention not in model_lib.ATTENTION_IMPLEMENTATIONS:
        raise UserError(f"--attention={opts.attention!r}; expected one of {model_lib.ATTENTION_IMPLEMENTATIONS}")
    if opts.attention == "dot_product" and opts.dropout > 0:
        raise UserError(f"--attention=dot_product needs --dropout=0, got {opts.dropout}")
    result = bench.run(opts)
    text = json.dumps(result, indent=2)
    print(text)
    print(bench.headline(result), file=sys.stderr)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    common.run(main, "bench")
