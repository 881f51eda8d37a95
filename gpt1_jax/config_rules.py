"""What each config value may be, as one table, checked once at the job's edge (`main`) before
any work: a bad value is one `ConfigError` naming its key, never a ZeroDivisionError after an
hour of training or a NaN in summary.json.

`RULES` covers the keys every job reads; `PRETRAIN_RULES` and `FINETUNE_RULES` the keys only
that mode reads (fine-tuning's `finetune.*`, `task`, ... exist only in configs/finetune.py, so a
pre-training config run with `mode=finetune` is told so in one line). Zero values that the
configs document as meaningful (`train.num_steps=0`: use the epochs; `checkpoint.every_secs=0`:
no time trigger; `train.grace_period_secs=0`: no limit; ...) are accepted.
"""
import dataclasses
from collections.abc import Callable, Mapping

import ml_collections

from gpt1_jax import model as model_lib
from gpt1_jax import optim
from gpt1_jax.data.tasks import TASKS
from gpt1_jax.errors import ConfigError

MODES = ("pretrain", "finetune", "eval")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A value `ok` accepts; `expected` completes "expected ..." in the error message."""
    expected: str
    ok: Callable[[object], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(low: int, expected: str) -> Rule:
    return Rule(expected, lambda v: _is_int(v) and v >= low)


def choice(*options: str) -> Rule:
    return Rule("one of " + ", ".join(repr(o) for o in options), lambda v: v in options)


POSITIVE_INT = at_least(1, "a positive integer")
NON_NEGATIVE_INT = at_least(0, "an integer >= 0")
POSITIVE = Rule("a number > 0", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE = Rule("a number >= 0", lambda v: _is_number(v) and v >= 0)
FRACTION = Rule("a fraction strictly between 0 and 1", lambda v: _is_number(v) and 0 < v < 1)
PROBABILITY = Rule("a probability in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1)
MESH_AXIS = Rule("a positive integer, or -1 (the remaining devices)",
                 lambda v: _is_int(v) and (v >= 1 or v == -1))
BOOL = Rule("True or False", lambda v: isinstance(v, bool))

# Keys every mode reads. The choices are the library's own lists (model.py, optim.py), checked
# here before any work and again where the dataclasses are built.
RULES: dict[str, Rule] = {
    "mode": choice(*MODES),
    "seed": NON_NEGATIVE_INT,
    "model.vocab_size": POSITIVE_INT,
    "model.n_special": NON_NEGATIVE_INT,
    "model.n_ctx": POSITIVE_INT,
    "model.n_layer": POSITIVE_INT,
    "model.n_head": POSITIVE_INT,
    "model.d_model": POSITIVE_INT,
    "model.d_ff": POSITIVE_INT,
    "model.embd_pdrop": PROBABILITY,
    "model.attn_pdrop": PROBABILITY,
    "model.resid_pdrop": PROBABILITY,
    "model.layer_norm_eps": POSITIVE,
    "model.init_std": POSITIVE,
    "model.attention": choice(*model_lib.ATTENTION_IMPLEMENTATIONS),
    "model.attention_block": NON_NEGATIVE_INT,          # 0: one block
    "model.dtype": choice("float32", "bfloat16", "float16"),
    "model.remat": choice(*model_lib.REMAT_POLICIES),
    "model.scan_layers": BOOL,
    "data.tokenizer": choice("gpt1_bpe", "sentencepiece"),
    "data.sentencepiece_vocab_size": POSITIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.num_steps": NON_NEGATIVE_INT,                # 0: train.num_epochs decides
    "train.num_epochs": NON_NEGATIVE_INT,               # positive when train.num_steps=0 (below)
    "train.stop_at_step": NON_NEGATIVE_INT,             # 0: no early stop
    "train.microbatches": POSITIVE_INT,
    "train.log_every_steps": POSITIVE_INT,
    "train.eval_every_steps": NON_NEGATIVE_INT,         # 0: only at the end
    "train.max_nonfinite_in_a_row": POSITIVE_INT,
    "train.grace_period_secs": NON_NEGATIVE,            # 0: no limit
    "train.peak_flops_per_device": NON_NEGATIVE,        # 0: look the device up
    "train.sample_tokens": NON_NEGATIVE_INT,            # 0: no continuations
    "train.progress": BOOL,
    "optimizer.learning_rate": POSITIVE,
    "optimizer.schedule": choice(*optim.SCHEDULES),
    "optimizer.b1": PROBABILITY,
    "optimizer.b2": PROBABILITY,
    "optimizer.eps": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.max_grad_norm": NON_NEGATIVE,            # 0: no clipping
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
    "checkpoint.every_steps": POSITIVE_INT,
    "checkpoint.every_secs": NON_NEGATIVE,              # 0: by steps only
    # 0 would keep no checkpoint at all: a stop's committed step would be deleted by rotation.
    "checkpoint.max_to_keep": POSITIVE_INT,
    "checkpoint.async_save": BOOL,
    "tracking.wandb": BOOL,
    "tracking.wandb_mode": choice("", "online", "offline", "disabled"),
    "distributed.initialize": BOOL,
    "distributed.num_processes": NON_NEGATIVE_INT,      # 0: auto-detected
    "distributed.process_id": at_least(-1, "an integer >= 0, or -1 (auto-detected)"),
    "distributed.heartbeat_timeout_secs": POSITIVE_INT,
}

PRETRAIN_RULES: dict[str, Rule] = {
    "data.val_fraction": FRACTION,
    "train.eval_batches": POSITIVE_INT,                 # their mean loss is the validation loss
    "optimizer.warmup_steps": NON_NEGATIVE_INT,
    "harness.limit": NON_NEGATIVE,                      # 0: every document
    "harness.batch_size": POSITIVE_INT,
}

# The keys configs/finetune.py adds; eval mode reads the same ones.
FINETUNE_RULES: dict[str, Rule] = {
    "task": choice(*TASKS),
    "init_from": Rule("a path, or '' (random init)", lambda v: isinstance(v, str)),
    "data.data_dir": Rule("a path", lambda v: isinstance(v, str)),
    "data.source": choice("files", "tfds"),
    "data.max_train_examples": NON_NEGATIVE_INT,        # 0: all
    "data.max_eval_examples": NON_NEGATIVE_INT,
    "finetune.lm_coef": NON_NEGATIVE,                   # 0: no auxiliary LM loss
    "finetune.clf_pdrop": PROBABILITY,
    "finetune.transfer_layers": at_least(-1, "an integer >= 0, or -1 (all blocks)"),
    "finetune.load_pretrained_weights": BOOL,
    "finetune.max_len": NON_NEGATIVE_INT,               # 0: the longest needed
    "optimizer.warmup_steps": at_least(-1, "an integer >= 0, or -1 (0.2% of the steps)"),
}


def _rules_for(mode: str) -> dict[str, Rule]:
    return {**RULES, **(PRETRAIN_RULES if mode == "pretrain" else FINETUNE_RULES)}


def _lookup(config: Mapping, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, (Mapping, ml_collections.ConfigDict)) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def problems(config: Mapping) -> list[str]:
    """Every broken rule of `config` (a ConfigDict or a plain nested dict), one phrase each."""
    mode = config.get("mode", "pretrain")
    if mode not in MODES:
        return [f"mode={mode!r}: expected {RULES['mode'].expected}"]
    rules = _rules_for(mode)
    missing = []
    found = []
    for key, rule in rules.items():
        try:
            value = _lookup(config, key)
        except KeyError:
            # Optional keys of older configs keep their library defaults; a fine-tuning key
            # missing means a config written for another mode.
            if key in FINETUNE_RULES and key not in RULES:
                missing.append(key)
            continue
        if not rule.ok(value):
            found.append(f"{key}={value!r}: expected {rule.expected}")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return [f"mode={mode!r} needs a fine-tuning config (configs/finetune.py:TASK); this one has "
                f"no {missing[0]}{more}"]
    num_steps, num_epochs = _get(config, "train.num_steps"), _get(config, "train.num_epochs")
    if mode != "eval" and num_steps == 0 and num_epochs == 0:
        found.append(f"train.num_epochs={num_epochs!r}: expected a positive integer when train.num_steps=0")
    return found


def _get(config: Mapping, key: str, default=None):
    try:
        return _lookup(config, key)
    except KeyError:
        return default


def check(config: ml_collections.ConfigDict | Mapping) -> None:
    """Raises one ConfigError listing every value that breaks its rule."""
    found = problems(config)
    if found:
        raise ConfigError("config " + "; ".join(found))
