"""Compile the pre-training job's steps for a TPU slice or NVIDIA GPUs on this (CPU) machine.

    python -m gpt1_jax.cli.aot --config=configs/gpt1.py --topology=v5e-8 [--config.KEY=VALUE ...]
        [--num_slices=N] [--num_gpus=G --num_hosts=H] [--out=aot.json]

Nothing runs: the answer is the compiler's memory plan per chip, its FLOP count and the
collectives in the compiled program (gpt1_jax/tools/aot.py; docs/aot.md).

Exit status: 0 it fits; 1 it does not (one line says by how much and what to try), or the
config or a flag is wrong; 2 the target's compiler is not installed.
"""
import json
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from gpt1_jax import config_rules
from gpt1_jax.cli import common
from gpt1_jax.tools import aot

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice (v5e-8, v4-32, ...) or GPU (h100, h200, "
                                "a100-80g).", required=True)
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "TPU slices joined over the data-center network.",
                                   lower_bound=1)
_NUM_GPUS = flags.DEFINE_integer("num_gpus", 1, "GPUs per host (GPU targets).", lower_bound=1)
_NUM_HOSTS = flags.DEFINE_integer("num_hosts", 1, "Hosts (GPU targets).", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Also write the report as JSON here.")
_EFFORT = flags.DEFINE_enum("effort", "auto", [*aot.EFFORTS, "auto"],
                            "fast: the compiler's lowest effort (minutes less; its memory plan is an upper "
                            "estimate of the job's); full: the job's own compile (the exact plan); auto: "
                            "fast, and full when the fast plan does not fit.")
_EVAL_STEP = flags.DEFINE_boolean("eval_step", True, "Also compile the eval step (forward only).")
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
    config = _CONFIG.value
    config_rules.check(config)
    try:
        result = aot.run(config, _TOPOLOGY.value, _NUM_SLICES.value, _NUM_GPUS.value, _NUM_HOSTS.value,
                         argv=sys.argv[1:], effort=_EFFORT.value, eval_step=_EVAL_STEP.value)
    except aot.CompilerMissing as e:  # its own status: the config may be fine
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(aot.format_report(result), flush=True)
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")
    if not result["fits"]:
        print(aot.does_not_fit_line(result, config), file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    common.run(main)
