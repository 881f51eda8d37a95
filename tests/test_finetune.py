"""Fine-tuning: the heads pool at the classify token, the losses, the transplant, the job."""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jobs
from gpt1_jax import config_files, heads
from gpt1_jax import model as model_lib
from gpt1_jax.jobs import finetune

CFG = model_lib.ModelConfig(vocab_size=50, n_special=3, n_ctx=16, n_layer=2, n_head=2,
                            d_model=16, d_ff=32)


def _init(model, s, length=12):
    tokens = jnp.zeros((1, s, length), jnp.int32)
    return nn.meta.unbox(model.init(jax.random.key(0), tokens, jnp.zeros((1, s), jnp.int32))["params"])


def _batch(s, length=12, b=3, seed=1):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, 50, (b, s, length)).astype(np.int32)
    pos = rng.randint(2, length - 2, (b, s)).astype(np.int32)
    return tokens, pos


@pytest.mark.slow
def test_classification_head_reads_the_hidden_state_at_the_classify_token():
    model = heads.TaskModel(CFG, "classification", 3, sum_sequences=False)
    params = _init(model, 1)
    tokens, pos = _batch(1)
    logits, _ = model.apply({"params": params}, tokens, pos)
    _, hidden = model_lib.GPT1(CFG).apply({"params": params["transformer"]}, tokens[:, 0])
    pooled = hidden[np.arange(3), pos[:, 0]]
    expected = pooled @ params["clf"]["kernel"] + params["clf"]["bias"]
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # Tokens after the classify position cannot change the prediction (causal pooling).
    later = tokens.copy()
    later[:, 0, -1] = (later[:, 0, -1] + 1) % 50
    np.testing.assert_array_equal(logits, model.apply({"params": params}, later, pos)[0])


@pytest.mark.slow
def test_similarity_adds_both_orders_before_the_head():
    model = heads.TaskModel(CFG, "classification", 2, sum_sequences=True)
    params = _init(model, 2)
    tokens, pos = _batch(2)
    logits, _ = model.apply({"params": params}, tokens, pos)
    swapped, _ = model.apply({"params": params}, tokens[:, ::-1], pos[:, ::-1])
    np.testing.assert_allclose(logits, swapped, atol=1e-5)
    _, hidden = model_lib.GPT1(CFG).apply({"params": params["transformer"]}, tokens.reshape(6, 12))
    pooled = hidden[np.arange(6), pos.reshape(6)].reshape(3, 2, -1).sum(1)
    np.testing.assert_allclose(logits, pooled @ params["clf"]["kernel"] + params["clf"]["bias"], atol=1e-5)


@pytest.mark.slow
def test_multiple_choice_scores_each_answer_sequence():
    model = heads.TaskModel(CFG, "multiple_choice", 1, sum_sequences=False)
    params = _init(model, 4)
    tokens, pos = _batch(4)
    scores, _ = model.apply({"params": params}, tokens, pos)
    assert scores.shape == (3, 4)
    order = [2, 0, 3, 1]
    permuted, _ = model.apply({"params": params}, tokens[:, order], pos[:, order])
    np.testing.assert_allclose(permuted, scores[:, order], atol=1e-5)


@pytest.mark.parametrize("target", ["classification", "regression"])
def test_objective_is_task_loss_plus_lambda_times_lm_loss(target):
    model = heads.TaskModel(CFG, target, 2 if target == "classification" else 1, sum_sequences=False)
    params = _init(model, 1)
    tokens, pos = _batch(1)
    mask = (np.arange(12)[None, None, :] <= pos[:, :, None]).astype(np.float32)
    labels = np.array([0, 1, 1], np.int32) if target == "classification" else np.array([0.5, 2.0, 4.0], np.float32)
    batch = {"tokens": tokens, "classify_pos": pos, "mask": mask, "label": labels}
    without, aux0 = heads.task_loss_fn(model, 0.0)(params, batch, None, True)
    with_lm, aux = heads.task_loss_fn(model, 0.5)(params, batch, None, True)
    assert "lm_loss" not in aux0
    np.testing.assert_allclose(with_lm, without + 0.5 * aux["lm_loss"], rtol=1e-6)
    # The LM loss is the per-sequence masked mean of next-token cross-entropy.
    logits, _ = model_lib.GPT1(CFG).apply({"params": params["transformer"]}, tokens[:, 0])
    logp = jax.nn.log_softmax(logits[:, :-1])
    nll = -np.take_along_axis(np.asarray(logp), tokens[:, 0, 1:, None], -1)[..., 0]
    m = mask[:, 0, 1:]
    np.testing.assert_allclose(aux["lm_loss"], np.mean((nll * m).sum(1) / m.sum(1)), rtol=1e-5)


def test_transplant_copies_embeddings_and_the_first_n_blocks():
    body = model_lib.GPT1(dataclasses.replace(CFG, n_special=0))
    pretrained = nn.meta.unbox(body.init(jax.random.key(7), jnp.zeros((1, 4), jnp.int32))["params"])
    model = heads.TaskModel(CFG, "classification", 2, sum_sequences=False)
    fresh = _init(model, 1)
    out = finetune.transplant(pretrained, fresh, transfer_layers=1)
    table = out["transformer"]["tokens_embed"]["embedding"]
    np.testing.assert_array_equal(table[:50], pretrained["tokens_embed"]["embedding"])
    np.testing.assert_array_equal(table[50:], fresh["transformer"]["tokens_embed"]["embedding"][50:])
    np.testing.assert_array_equal(out["transformer"]["h_0"]["attn"]["c_attn"]["kernel"],
                                  pretrained["h_0"]["attn"]["c_attn"]["kernel"])
    np.testing.assert_array_equal(out["transformer"]["h_1"]["attn"]["c_attn"]["kernel"],
                                  fresh["transformer"]["h_1"]["attn"]["c_attn"]["kernel"])
    np.testing.assert_array_equal(out["clf"]["kernel"], fresh["clf"]["kernel"])
    all_layers = finetune.transplant(pretrained, fresh, transfer_layers=-1)
    np.testing.assert_array_equal(all_layers["transformer"]["h_1"]["mlp"]["c_fc"]["kernel"],
                                  pretrained["h_1"]["mlp"]["c_fc"]["kernel"])


# --- the job, end to end on real data --------------------------------------------------------

def _finetune(task, data_dir, workdir, pretrained, *extra):
    return jobs.main(f"--config=configs/finetune.py:{task}", f"--workdir={workdir}",
                     f"--config.init_from={pretrained}", f"--config.data.data_dir={data_dir}",
                     "--config.data.max_train_examples=16", "--config.data.max_eval_examples=24",
                     "--config.train.batch_size=8", *extra)


@pytest.mark.slow
def test_sst2_fine_tuning_and_eval_mode_on_the_real_data(pretrained, shared_data, tmp_path):
    _finetune("sst2", shared_data / "glue", tmp_path, pretrained, "--config.train.num_steps=3",
              "--config.train.eval_every_steps=2")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 3 and 0.0 <= summary["eval"]["validation"]["accuracy"] <= 1.0
    # The validation split is also scored every 2 steps and at the last (what a sweep prunes on);
    # the last of those is the end-of-run evaluation of the same params.
    validated = {r["step"]: r["val_accuracy"] for r in jobs.metric_records(tmp_path) if "val_accuracy" in r}
    assert sorted(validated) == [2, 3] and validated[3] == summary["eval"]["validation"]["accuracy"]
    lines = (tmp_path / "predictions" / "SST-2.validation.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 25
    assert all(line.split("\t")[1] in ("0", "1") for line in lines[1:])
    # Eval mode restores the fine-tuned export and reproduces the same metrics.
    result = jobs.main("--config=configs/finetune.py:sst2", f"--workdir={tmp_path}", "--config.mode=eval",
                       f"--config.data.data_dir={shared_data / 'glue'}", "--config.data.max_eval_examples=24")
    assert json.loads(result.stdout.strip().splitlines()[-1]) == summary["eval"]
    wrong = jobs.main("--config=configs/finetune.py:cola", f"--workdir={tmp_path}", "--config.mode=eval",
                      f"--config.data.data_dir={shared_data / 'glue'}", expect_ok=False)
    assert wrong.returncode != 0 and "fine-tuned on 'sst2'" in wrong.stderr


def test_story_cloze_multiple_choice_without_the_auxiliary_loss(pretrained, shared_data, tmp_path):
    _finetune("story_cloze", shared_data / "story_cloze", tmp_path, pretrained,
              "--config.train.num_steps=2", "--config.finetune.lm_coef=0")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["eval"]) == {"test"} and summary["lm_coef"] == 0
    records = jobs.metric_records(tmp_path)
    assert "lm_loss" not in records[-1] and "task_loss" in records[-1]


@pytest.mark.slow
def test_an_unknown_task_is_an_error_naming_the_known_ones(tmp_path):
    result = jobs.main("--config=configs/finetune.py:sst3", f"--workdir={tmp_path}", expect_ok=False)
    [line] = result.stderr.strip().splitlines()  # one line, no traceback
    assert result.returncode == 1 and line.startswith("error: config task='sst3'") and "'sst2'" in line


def test_init_from_a_fine_tuned_model_names_the_cause(tmp_path):
    from gpt1_jax import loading, tokenizers
    from gpt1_jax.checkpoint import CheckpointError
    from gpt1_jax.jobs import finetune
    mcfg = model_lib.ModelConfig(vocab_size=40478, n_ctx=16, n_layer=1, n_head=2, d_model=16, d_ff=32)
    params = nn.meta.unbox(model_lib.GPT1(mcfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    loading.write_export(tmp_path / "export", params, dataclasses.asdict(mcfg), tokenizers.gpt1_bpe_tokenizer(),
                         task={"task": "sst2", "max_len": 8})
    config = config_files.load(jobs.REPO / "configs" / "finetune.py", "cola")
    config.init_from = str(tmp_path / "export")
    with pytest.raises(CheckpointError, match="is a model fine-tuned on 'sst2', not a language model"):
        finetune.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_fine_tuning_into_a_pretraining_workdir_names_the_cause(pretrained):
    from gpt1_jax.errors import ConfigError
    from gpt1_jax.jobs import finetune
    before = {p: p.stat().st_mtime_ns for p in pretrained.rglob("*") if p.is_file()}
    config = config_files.load(jobs.REPO / "configs" / "finetune.py", "sst2")
    config.init_from = str(pretrained)
    with pytest.raises(ConfigError, match="holds the checkpoints of a pre-training run .*fine-tune into a new workdir"):
        finetune.run(config, pretrained)
    assert {p: p.stat().st_mtime_ns for p in pretrained.rglob("*") if p.is_file()} == before
