"""Every config value is checked before any work: each numeric key of every config at 0, at a
negative value and (fractions, probabilities) above 1 is either accepted because the configs
document what it means, or refused with one problem naming the key. In-process over the rule
table (fast); a handful of real `python -m gpt1_jax.cli.main` runs show the one `error:` line.
"""
import sys

import pytest

import jobs
from gpt1_jax import config_files, config_rules
from gpt1_jax.cli import common
from gpt1_jax.errors import ConfigError

CONFIGS = ["configs/gpt1.py", "configs/demo.py", "configs/tiny.py", "configs/gpt2_medium.py",
           "configs/gpt2_large.py", "configs/finetune.py:sst2", "configs/finetune.py:race"]

# What the configs' comments and the README's key table say a zero means (every mode).
DOCUMENTED_ZERO = {
    "seed", "model.n_special", "model.embd_pdrop", "model.attn_pdrop", "model.resid_pdrop",
    "model.attention_block",            # one block
    "train.num_steps",                  # use the epochs
    "train.stop_at_step",               # no early stop
    "train.eval_every_steps",           # only at the end
    "train.grace_period_secs",          # no limit
    "train.peak_flops_per_device",      # look the device up
    "train.sample_tokens",              # no continuations
    "optimizer.b1", "optimizer.b2", "optimizer.weight_decay",
    "optimizer.max_grad_norm",          # no clipping
    "optimizer.warmup_steps",
    "checkpoint.every_secs",            # steps only
    "distributed.num_processes",        # auto-detected
    "distributed.process_id",
    "harness.limit",                    # every document
    # configs/finetune.py
    "data.max_train_examples", "data.max_eval_examples", "finetune.lm_coef", "finetune.clf_pdrop",
    "finetune.transfer_layers", "finetune.max_len",
}
# Negative values with a documented meaning: -1 "the remaining devices", "auto", "all blocks",
# "0.2% of the steps" (fine-tuning's warm-up only).
DOCUMENTED_MINUS_ONE = {"mesh.data", "mesh.fsdp", "mesh.tensor", "distributed.process_id",
                        "finetune.transfer_layers"}
FINETUNE_MINUS_ONE = {"optimizer.warmup_steps"}
# Keys a fine-tuning job never reads (the corpus split, the validation batches of pre-training).
UNREAD_IN_FINETUNE = {"data.val_fraction", "train.eval_batches", "harness.limit", "harness.batch_size"}
IN_UNIT_INTERVAL = {"data.val_fraction", "model.embd_pdrop", "model.attn_pdrop", "model.resid_pdrop",
                    "optimizer.b1", "optimizer.b2", "finetune.clf_pdrop"}


def load(spec: str):
    path, *args = spec.split(":")
    return config_files.load(jobs.REPO / path, *args)


def numeric_keys(config) -> list[str]:
    keys = []
    for key in common.config_keys(config):
        value = get(config, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.append(key)
    return keys


def get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def with_value(config, key: str, value):
    config = config.copy_and_resolve_references()
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = type(node[leaf])(value)
    return config


def documented(config, key: str, value) -> bool:
    finetune = config.mode != "pretrain"
    if finetune and key in UNREAD_IN_FINETUNE:
        return True
    if value == 0:
        if key == "train.num_epochs":
            return config.train.num_steps > 0   # num_steps > 0 overrides the epochs
        return key in DOCUMENTED_ZERO
    if value == -1:
        return key in DOCUMENTED_MINUS_ONE or (finetune and key in FINETUNE_MINUS_ONE)
    return False


@pytest.mark.parametrize("spec", CONFIGS)
def test_the_shipped_configs_pass_their_rules(spec):
    assert config_rules.problems(load(spec)) == []


@pytest.mark.parametrize("spec", CONFIGS)
def test_every_numeric_key_has_a_rule(spec):
    config = load(spec)
    rules = {**config_rules.RULES, **config_rules.PRETRAIN_RULES, **config_rules.FINETUNE_RULES}
    assert set(numeric_keys(config)) - set(rules) == set()


@pytest.mark.parametrize("spec", CONFIGS)
def test_zero_negative_and_above_one_are_documented_or_one_problem_naming_the_key(spec):
    config = load(spec)
    checked = 0
    for key in numeric_keys(config):
        values = [0, -1, -3] + ([1.5] if key in IN_UNIT_INTERVAL else [])
        for value in values:
            found = config_rules.problems(with_value(config, key, value))
            if documented(config, key, value):
                assert found == [], (key, value, found)
            else:
                assert len(found) == 1 and found[0].startswith(f"{key}="), (key, value, found)
            checked += 1
    assert checked >= 3 * len(numeric_keys(config)) > 100


def test_mode_specific_keys_and_a_mode_the_config_was_not_written_for():
    pretrain = load("configs/tiny.py")
    for mode in ("finetune", "eval"):
        found = config_rules.problems(with_value(pretrain, "mode", mode))
        assert len(found) == 1 and "configs/finetune.py:TASK" in found[0] and "task" in found[0]
    assert config_rules.problems(with_value(pretrain, "mode", "train")) == [
        "mode='train': expected one of 'pretrain', 'finetune', 'eval'"]
    # Fine-tuning's -1 warm-up (0.2% of the steps) means nothing to pre-training.
    finetune = load("configs/finetune.py:sst2")
    as_pretrain = with_value(finetune, "mode", "pretrain")
    assert [p.split("=")[0] for p in config_rules.problems(as_pretrain)] == [
        "train.eval_batches", "optimizer.warmup_steps"]
    assert config_rules.problems(with_value(finetune, "task", "wnli"))[0].startswith("task='wnli'")


def test_check_raises_one_config_error_listing_every_problem():
    config = with_value(with_value(load("configs/tiny.py"), "train.batch_size", 0), "optimizer.b1", 1.5)
    with pytest.raises(ConfigError) as error:
        config_rules.check(config)
    message = str(error.value)
    assert "\n" not in message
    assert "train.batch_size=0" in message and "optimizer.b1=1.5" in message


# --- the real entry point ----------------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    (["--config.train.batch_size=0"], "error: config train.batch_size=0: expected a positive integer"),
    (["--config.checkpoint.every_steps=0"], "error: config checkpoint.every_steps=0"),
    (["--config.mode=finetune"], "error: config mode='finetune' needs a fine-tuning config"),
    (["--config.train.num_stepz=3"],
     "error: --config.train.num_stepz: the config configs/tiny.py has no key 'train.num_stepz'; "
     "did you mean --config.train.num_steps?"),
    (["--config.trian.num_steps=3"], "did you mean --config.train.num_steps?"),
    (["--config.train.num_steps=three"], "error: flag --config.train.num_steps=three"),
    (["--config=configs/tiny_nope.py"], "error: --config=configs/tiny_nope.py: no such config file"),
    (["stray"], "error: unexpected arguments"),
])
def test_a_bad_config_is_one_error_line_before_any_work(tmp_path, overrides, expected):
    workdir = tmp_path / "run"
    argv = [sys.executable, "-m", "gpt1_jax.cli.main", "--config=configs/tiny.py", f"--workdir={workdir}",
            *overrides]
    result = jobs.run(argv, expect_ok=False, timeout=120)
    report = jobs.output(result)
    assert result.returncode == 1, report
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], report
    assert not workdir.exists(), report  # refused before anything was written


def test_the_override_suggestion_is_the_closest_key(monkeypatch):
    monkeypatch.chdir(jobs.REPO)
    monkeypatch.setattr(common, "_config_flag_names", lambda: ["config"])
    argv = ["prog", "--config=configs/finetune.py:sst2", "--config.finetune.lm_coeff=1"]
    assert common.config_override_problem(argv) == (
        "--config.finetune.lm_coeff: the config configs/finetune.py has no key 'finetune.lm_coeff'; "
        "did you mean --config.finetune.lm_coef?")
    assert common.config_override_problem(["prog", "--config=configs/finetune.py:sst2",
                                           "--config.finetune.lm_coef=1"]) is None
