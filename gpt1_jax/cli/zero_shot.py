r"""Zero-shot curves over a pre-training run's checkpoints (GPT-1 §5, Figure 2 right).

    python -m gpt1_jax.cli.zero_shot --workdir=runs/demo --glue_dir=... --story_cloze_dir=... \
        [--race_dir=... --dprd_file=... --max_examples=500]

Writes `<workdir>/zero_shot.json` and `<workdir>/zero_shot.png` (the workdir may be gs://);
the evaluators are in gpt1_jax/evaluation/zero_shot.py.
"""
import json

from absl import app, flags

from gpt1_jax.cli import common
from gpt1_jax.errors import ConfigError
from gpt1_jax.evaluation import zero_shot
from gpt1_jax.storage import rundir

_WORKDIR = flags.DEFINE_string("workdir", None, "A pre-training workdir with checkpoints.", required=True)
_GLUE_DIR = flags.DEFINE_string("glue_dir", None, "GLUE data (CoLA, SST-2).")
_STORY_CLOZE_DIR = flags.DEFINE_string("story_cloze_dir", None, "Story Cloze data.")
_RACE_DIR = flags.DEFINE_string("race_dir", None, "RACE data.")
_DPRD_FILE = flags.DEFINE_string("dprd_file", None, "DPRD (Rahman & Ng) file.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "Per task, a seeded subset (0: all).",
                                    lower_bound=0)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Sequences per forward pass.", lower_bound=1)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    data = zero_shot.load_zero_shot_data(_GLUE_DIR.value, _STORY_CLOZE_DIR.value, _RACE_DIR.value,
                                         _DPRD_FILE.value, _MAX_EXAMPLES.value)
    if not data.tasks():  # before anything is loaded; the earlier results stay as they are
        raise ConfigError("nothing to evaluate: give at least one of --glue_dir, --story_cloze_dir, "
                          "--race_dir, --dprd_file")
    results = zero_shot.evaluate_run(_WORKDIR.value, data, _BATCH_SIZE.value)
    workdir = rundir.path(_WORKDIR.value)
    png = zero_shot.plot(results)  # drawn first: a failure leaves the earlier pair whole
    rundir.write_json(workdir / rundir.ZERO_SHOT_JSON, results)
    rundir.write_bytes(workdir / rundir.ZERO_SHOT_PNG, png)
    print(json.dumps(results))


if __name__ == "__main__":
    common.run(main, "zero_shot")
