"""The lm-evaluation-harness model `gpt1_jax`: bucketed scoring equals unpadded forward passes
on any number of devices and compiles a handful of programs; on the same weights it agrees with
the harness's own `hf` backend on the project's HF export wherever both tokenizers agree; the
zero-shot tasks give the zero-shot evaluators' numbers; bad input is one `error:` line."""
import dataclasses
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("lm_eval")

import harness_local_tasks  # noqa: E402
import jobs  # noqa: E402
from gpt1_jax import convert, loading, tokenizers  # noqa: E402
from gpt1_jax import generate as generate_lib  # noqa: E402
from gpt1_jax import model as model_lib  # noqa: E402
from gpt1_jax.errors import ConfigError, DataError, UserError  # noqa: E402
from gpt1_jax.evaluation import zero_shot
from gpt1_jax.evaluation.harness import evaluate, scoring  # noqa: E402
from gpt1_jax.evaluation.harness import model as harness_model  # noqa: E402

CFG = model_lib.ModelConfig(vocab_size=40478, n_ctx=128, n_layer=2, n_head=2, d_model=32, d_ff=128)
SHARED_DATA = jobs.REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def params():
    model = model_lib.GPT1(CFG)
    return nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


@pytest.fixture(scope="module")
def exports(params, tmp_path_factory):
    """(export, hf_export) of the same random weights, GPT-1 BPE tokenizer."""
    root = tmp_path_factory.mktemp("harness_model")
    loading.write_export(root / "export", params, dataclasses.asdict(CFG), tokenizers.gpt1_bpe_tokenizer())
    convert.convert("orbax", "hf", root / "export", root / "hf")
    return root / "export", root / "hf"


@pytest.fixture(scope="module")
def lm(exports):
    return harness_model.GPT1LM(init_from=str(exports[0]), batch_size=16, progress=False)


def direct_logprobs(params, tokens):
    """log p(tokens[j] | tokens[:j]) for j >= 1, one unpadded forward pass."""
    logits_1xTxV, _ = model_lib.GPT1(CFG).apply({"params": params}, jnp.array([tokens[:-1]]))
    logp_TxV = np.asarray(jax.nn.log_softmax(logits_1xTxV[0]), np.float64)
    return logp_TxV[np.arange(len(tokens) - 1), tokens[1:]]


@pytest.mark.slow
def test_bucketed_sharded_scores_equal_unpadded_passes_and_compile_a_handful(params):
    assert jax.local_device_count() == 8  # conftest: rows are split over 8 devices
    rng = np.random.default_rng(0)
    rows = [scoring.Row(tuple(rng.integers(0, CFG.vocab_size, n).tolist()), int(rng.integers(1, n)))
            for n in rng.integers(2, CFG.n_ctx + 2, 200)]
    scorer = scoring.Scorer(CFG, params, batch_size=12, progress=False)
    results = scorer.score(rows)
    # 200 requests of mixed lengths: one program per length bucket (16, 32, 64, 128).
    assert scorer.compiled_programs() <= len(scoring.buckets(CFG.n_ctx)) == 4
    assert scorer.batch_size == 16  # rounded up to a multiple of the devices
    for row, (logprob, greedy) in list(zip(rows, results))[::50]:
        expected = direct_logprobs(params, np.array(row.tokens))[-row.num_scored:]
        assert logprob == pytest.approx(expected.sum(), abs=1e-4)
        assert not greedy  # random tokens are not a random model's argmax


def test_generation_equals_the_decoder_one_prompt_at_a_time(params):
    tokenizer = tokenizers.gpt1_bpe_tokenizer()
    prompts = [tokenizer.encode(t) for t in ["it was the best of times", "call me", "the whale , the whale ,"
                                             " and the sea and the ship went down"]]
    scorer = scoring.Scorer(CFG, params, batch_size=8, progress=False)
    batched = scorer.generate(prompts, max_new_tokens=10, stop_token=None)
    for prompt, new in zip(prompts, batched):
        assert new == generate_lib.generate(CFG, params, [prompt], max_new_tokens=10)[0]


def test_rolling_loglikelihood_scores_every_token_once_in_context_windows(lm, params):
    from lm_eval.api.instance import Instance
    text = harness_local_tasks.book_text(6000)
    tokens = lm.tok_encode(text)
    assert len(tokens) > 3 * CFG.n_ctx
    total, = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    # The harness's windows: the boundary token, then disjoint blocks of n_ctx predictions,
    # the last one read with a full context.
    expected, predicted = direct_logprobs(params, [lm.prefix_token_id] + tokens[:CFG.n_ctx]).sum(), CFG.n_ctx
    while predicted < len(tokens):
        end = min(predicted + CFG.n_ctx, len(tokens))
        window = tokens[max(0, end - CFG.n_ctx - 1):end]
        expected += direct_logprobs(params, window)[-(end - predicted):].sum()
        predicted = end
    assert total == pytest.approx(expected, abs=1e-3)


def test_the_boundary_token_is_the_newline_in_both_backends(lm, exports):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(exports[1]))
    assert lm.prefix_token_id == lm.eot_token_id == hf.bos_token_id == hf.eos_token_id
    assert lm.tokenizer_.encode("one\ntwo")[1] == lm.eot_token_id


def _encodings_agree(ours, hf, args) -> bool:
    texts = [a for a in args if isinstance(a, str)]
    return all(ours.encode(t) == hf.encode(t, add_special_tokens=False) for t in texts + ["".join(texts)])


@pytest.mark.slow
def test_local_tasks_agree_with_the_hf_backend_on_the_export(lm, exports, tmp_path):
    transformers = pytest.importorskip("transformers")
    tasks = harness_local_tasks.write(tmp_path / "tasks", n=20)
    manager = evaluate.task_manager(tasks, [str(tmp_path / "tasks")])
    ours = evaluate.run(lm, tasks, manager, log_samples=True)
    # No prefix_token_id given: the export's tokenizer config carries the boundary token.
    theirs = evaluate.run("hf", tasks, manager, log_samples=True, model_args=f"pretrained={exports[1]},dtype=float32",
                          batch_size=16, device="cpu")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(exports[1]))
    differing, compared = {}, {}
    for task in tasks:
        differing[task] = compared[task] = 0
        for a, b in zip(ours["samples"][task], theirs["samples"][task]):
            assert a["arguments"] == b["arguments"]
            for args, (ra,), (rb,) in zip(a["arguments"], a["resps"], b["resps"]):
                if not _encodings_agree(lm.tokenizer_, hf_tokenizer, args):
                    differing[task] += 1
                    continue
                compared[task] += 1
                if isinstance(ra, str):
                    assert ra == rb, args
                elif isinstance(ra, tuple | list):
                    assert ra[0] == pytest.approx(rb[0], abs=1e-4) and ra[1] == rb[1], args
                else:
                    assert ra == pytest.approx(rb, abs=1e-4), args
    print("requests whose token ids differ (HF's tokenizer vs the original pipeline):", differing,
          "compared:", compared)
    assert all(compared[task] >= 1 for task in tasks)
    # Whole documents (every token scored once) agree on accuracy-like metrics wherever no
    # request of the document differed: checked on the multiple-choice task's documents.
    for a, b in zip(ours["samples"]["local_choice"], theirs["samples"]["local_choice"]):
        if all(_encodings_agree(lm.tokenizer_, hf_tokenizer, args) for args in a["arguments"]):
            assert a["acc"] == b["acc"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "glue").is_dir(), reason="no GLUE / Story Cloze data here")
def test_zero_shot_tasks_equal_the_zero_shot_evaluators(lm, exports):
    glue, story_cloze = SHARED_DATA / "glue", SHARED_DATA / "story_cloze"
    metadata = {"tokenizer": str(exports[0] / "tokenizer"), "max_examples": 60,
                "glue_dir": str(glue), "story_cloze_dir": str(story_cloze)}
    tasks = ["gpt1_sst2", "gpt1_story_cloze", "gpt1_cola"]
    found = evaluate.metrics(evaluate.run(lm, tasks, evaluate.task_manager(tasks, metadata=metadata)))
    data = zero_shot.load_zero_shot_data(str(glue), str(story_cloze), max_examples=60)
    expected = zero_shot.evaluate_checkpoint(zero_shot.LMScorer(CFG, lm.loaded.params), lm.tokenizer_, data)
    # The zero-shot command prints 3 decimals.
    assert f"{found['gpt1_sst2/acc_token_mean']:.3f}" == f"{expected['sst2']:.3f}"
    assert f"{found['gpt1_story_cloze/acc_token_mean']:.3f}" == f"{expected['story_cloze']:.3f}"
    assert f"{found['gpt1_cola/mcc']:.3f}" == f"{expected['cola']:.3f}"


@pytest.mark.slow
def test_an_unknown_task_is_a_user_error_naming_the_close_ones(tmp_path):
    # A name that none of our tasks has sends the harness indexing its thousands (15-20 s).
    with pytest.raises(ConfigError, match="unknown harness task 'local_choise'.*local_choice"):
        evaluate.task_manager(["local_choise"], [harness_local_tasks_dir(tmp_path)])


def test_bad_input_is_a_user_error(lm, exports, params, tmp_path):
    with pytest.raises(ConfigError, match="exceeds the model's context of 128"):
        harness_model.GPT1LM(init_from=str(exports[0]), max_length=1024)
    with pytest.raises(ConfigError, match="longer than the context of 128"):
        lm._row([1, 2], list(range(200)))
    finetuned = tmp_path / "finetuned"
    loading.write_export(finetuned, params, dataclasses.asdict(CFG), tokenizers.gpt1_bpe_tokenizer(),
                         task={"task": "sst2", "max_len": 64})
    with pytest.raises(UserError, match="fine-tuned on 'sst2', not a language model"):
        harness_model.GPT1LM(init_from=str(finetuned))
    os.environ.pop("GPT1_JAX_GLUE_DIR", None)
    missing = tmp_path / "no_glue_here"
    manager = evaluate.task_manager(["gpt1_sst2"], metadata={"glue_dir": str(missing)})
    with pytest.raises(DataError, match=f"glue_dir={missing}: no such directory"):
        evaluate.run(lm, ["gpt1_sst2"], manager)


def harness_local_tasks_dir(tmp_path) -> str:
    harness_local_tasks.write(tmp_path / "tasks", n=4)
    return str(tmp_path / "tasks")


@pytest.mark.slow
def test_command_writes_results_and_prints_the_table_and_errors_in_one_line(exports, tmp_path):
    tasks_dir = harness_local_tasks_dir(tmp_path)
    out = tmp_path / "out"
    done = jobs.run([sys.executable, "-m", "gpt1_jax.cli.harness", f"--init_from={exports[0]}",
                     "--tasks=local_choice,local_lastword", f"--include_path={tasks_dir}",
                     f"--output_dir={out}", "--batch_size=8"], timeout=300)
    results = sorted((out / "harness").glob("results_*.json"))
    assert len(results) == 1 and results[0].with_suffix(".md").read_text() in done.stdout
    assert "local_choice" in done.stdout and "acc" in done.stdout
    # The harness's own command line, with the model registered by lm_eval_main (lm-eval 0.4.13's
    # `lm_eval` finds no models in other packages), gives the same numbers.
    jobs.run([sys.executable, "-m", "gpt1_jax.cli.lm_eval_main", "run", "--model", "gpt1_jax", "--model_args",
              f"init_from={exports[0]}", "--batch_size", "8", "--tasks", "local_choice,local_lastword",
              "--include_path", tasks_dir, "--output_path", str(tmp_path / "lm_eval")], timeout=300)
    [theirs] = (tmp_path / "lm_eval").rglob("results_*.json")
    ours = evaluate.metrics(json.loads(results[0].read_text()))  # the values, stderrs aside (ours skips them)
    assert evaluate.metrics(json.loads(theirs.read_text())) == ours and "local_lastword/perplexity" in ours
    failed = jobs.run([sys.executable, "-m", "gpt1_jax.cli.harness", f"--init_from={exports[0]}",
                       "--tasks=local_choice", f"--include_path={tasks_dir}", "--max_length=4096"],
                      expect_ok=False, timeout=300)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: harness: max_length=4096 exceeds the model's context of 128 tokens"]
    assert "Traceback" not in failed.stderr


def test_pretraining_evaluator_scores_new_params_without_recompiling(params, tmp_path):
    tasks = ["local_choice", "local_lastword"]
    evaluator = evaluate.PretrainingEvaluator(CFG, tokenizers.gpt1_bpe_tokenizer(), tasks, limit=4,
                                              batch_size=8, include_paths=[harness_local_tasks_dir(tmp_path)])
    first = evaluator(params)
    assert set(first) == {"harness/local_choice/acc", "harness/local_choice/acc_norm", "harness/local_lastword/acc",
                          "harness/local_lastword/perplexity"}
    compiled = evaluator.lm.scorer.compiled_programs()
    second = evaluator(jax.tree.map(lambda x: x * 1.5, params))
    assert second["harness/local_lastword/perplexity"] != first["harness/local_lastword/perplexity"]
    assert evaluator.lm.scorer.compiled_programs() == compiled


def test_the_harness_command_line_module_registers_the_model_in_lm_evals_registry():
    # `python -m gpt1_jax.cli.lm_eval_main ...` is lm-eval's own command line after this import.
    import importlib

    from lm_eval.api.registry import get_model
    importlib.import_module("gpt1_jax.cli.lm_eval_main")
    assert get_model("gpt1_jax") is harness_model.GPT1LM
