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


DPRD_SENTENCES = [
    ("The trophy did not fit in the suitcase because it was too big .", "it", "trophy,suitcase", "trophy"),
    ("The trophy did not fit in the suitcase because it was too small .", "it", "trophy,suitcase", "suitcase"),
    ("The city councilmen refused the demonstrators a permit because they feared violence .", "they",
     "city councilmen,demonstrators", "city councilmen"),
    ("The city councilmen refused the demonstrators a permit because they advocated violence .", "they",
     "city councilmen,demonstrators", "demonstrators"),
    ("John could not see the stage with Billy in front of him because he is so short .", "he",
     "John,Billy", "John"),
    ("John could not see the stage with Billy in front of him because he is so tall .", "he", "John,Billy", "Billy"),
    ("The man could not lift his son because he was so weak .", "he", "man,son", "man"),
    ("The man could not lift his son because he was so heavy .", "he", "man,son", "son"),
]

RACE_FILES = {
    "middle/1.txt": {"article": "Tom has a small dog . Every morning he walks the dog in the park near his house .",
                     "questions": ["Where does Tom walk his dog ?", "What does Tom have ?"],
                     "options": [["in the park", "at school", "in the shop", "at the sea"],
                                 ["a cat", "a small dog", "a bird", "a fish"]],
                     "answers": ["A", "B"]},
    "middle/2.txt": {"article": "The library opens at nine and closes at five . Children love its story hour .",
                     "questions": ["When does the library close ?"],
                     "options": [["at nine", "at noon", "at five", "at night"]], "answers": ["C"]},
    "high/1.txt": {"article": "Scientists found that sleep helps the brain store what was learned during the day .",
                   "questions": ["What does sleep help the brain do ?", "Who found it ?"],
                   "options": [["forget things", "grow faster", "feel hungry", "store what was learned"],
                               ["teachers", "scientists", "doctors", "parents"]],
                   "answers": ["D", "B"]},
}


@pytest.mark.slow
def test_race_and_dprd_tasks_equal_the_zero_shot_evaluators(lm, exports, tmp_path):
    dprd_file = tmp_path / "dprd.txt"
    dprd_file.write_text("".join("\n".join(block) + "\n\n" for block in DPRD_SENTENCES))
    for name, record in RACE_FILES.items():
        path = tmp_path / "race" / "RACE" / "test" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    race_dir = tmp_path / "race"
    # max_examples takes the same subset (DPRD: 6 of 8) as the zero-shot command.
    metadata = {"tokenizer": str(exports[0] / "tokenizer"), "max_examples": 6, "dprd_file": str(dprd_file),
                "race_dir": str(race_dir)}
    tasks = ["gpt1_race", "gpt1_dprd"]
    results = evaluate.run(lm, tasks, evaluate.task_manager(tasks, metadata=metadata), log_samples=True)
    found = evaluate.metrics(results)
    data = zero_shot.load_zero_shot_data(race_dir=str(race_dir), dprd_file=str(dprd_file), max_examples=6)
    assert len(data.dprd) == 6 and len(data.race) == 5
    scorer = zero_shot.LMScorer(CFG, lm.loaded.params)
    expected = zero_shot.evaluate_checkpoint(scorer, lm.tokenizer_, data)
    # The zero-shot command prints 3 decimals; here every example's outcome agrees too.
    assert f"{found['gpt1_race/acc_token_mean']:.3f}" == f"{expected['race']:.3f}"
    assert f"{found['gpt1_dprd/acc_token_mean']:.3f}" == f"{expected['dprd']:.3f}"
    predictions = {"gpt1_race": zero_shot.multiple_choice_predictions(scorer, lm.tokenizer_, data.race),
                   "gpt1_dprd": zero_shot.dprd_predictions(scorer, lm.tokenizer_, data.dprd)}
    labels = {"gpt1_race": [e.label for e in data.race], "gpt1_dprd": [e.answer for e in data.dprd]}
    for task in tasks:
        samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
        assert [sample["acc_token_mean"] for sample in samples] == [
            float(p == label) for p, label in zip(predictions[task], labels[task])]
    # DPRD's requests: one context per candidate, the same rest of the sentence after each.
    first = sorted(results["samples"]["gpt1_dprd"], key=lambda sample: sample["doc_id"])[0]
    assert [tuple(args) for args in first["arguments"]] == [
        ("The trophy did not fit in the suitcase because trophy", " was too big ."),
        ("The trophy did not fit in the suitcase because suitcase", " was too big .")]


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
    # Something that is not a language model (no tokenizer to read text with): one clear error.
    no_tokenizer = tmp_path / "no_tokenizer"
    loading.write_export(no_tokenizer, params, dataclasses.asdict(CFG), None)
    with pytest.raises(UserError, match="records no tokenizer .* not a language model"):
        harness_model.GPT1LM(init_from=str(no_tokenizer))
    os.environ.pop("GPT1_JAX_GLUE_DIR", None)
    missing = tmp_path / "no_glue_here"
    manager = evaluate.task_manager(["gpt1_sst2"], metadata={"glue_dir": str(missing)})
    with pytest.raises(DataError, match=f"glue_dir={missing}: no such directory"):
        evaluate.run(lm, ["gpt1_sst2"], manager)
    manager = evaluate.task_manager(["gpt1_dprd"], metadata={"dprd_file": str(missing / "dprd.txt")})
    with pytest.raises(DataError, match=f"dprd_file={missing / 'dprd.txt'}: no such file"):
        evaluate.run(lm, ["gpt1_dprd"], manager)


def test_a_fine_tuned_model_is_evaluated_as_its_body_over_the_base_vocabulary(params, tmp_path, capsys):
    from lm_eval.api.instance import Instance

    from gpt1_jax import heads
    from gpt1_jax.data import tasks as tasks_lib
    from gpt1_jax.jobs import finetune
    # A fine-tuned model as the fine-tuning job makes it: fresh task params (token table with the
    # start/delimiter/classify rows appended, the task head) with the pretrained body transplanted
    # in, then changed everywhere as training would change them.
    task_config = dataclasses.replace(CFG, n_special=finetune.N_SPECIAL)
    task_model = heads.task_model(tasks_lib.get_task("sst2"), task_config, clf_pdrop=0.1)
    fresh = nn.meta.unbox(task_model.init(jax.random.key(1), jnp.zeros((1, 1, 8), jnp.int32),
                                          jnp.zeros((1, 1), jnp.int32))["params"])
    tuned = jax.tree.map(lambda x: x * 1.05 + 0.001, finetune.transplant(params, fresh, -1))
    assert tuned["transformer"]["tokens_embed"]["embedding"].shape[0] == CFG.vocab_size + 3
    tokenizer = tokenizers.gpt1_bpe_tokenizer()
    loading.write_export(tmp_path / "finetuned", tuned, dataclasses.asdict(task_config), tokenizer,
                         task={"task": "sst2", "max_len": 64})
    body = dict(tuned["transformer"])
    body["tokens_embed"] = {"embedding": body["tokens_embed"]["embedding"][:CFG.vocab_size]}
    loading.write_export(tmp_path / "body", body, dataclasses.asdict(CFG), tokenizer)

    ours = harness_model.GPT1LM(init_from=str(tmp_path / "finetuned"), batch_size=8, progress=False)
    printed = capsys.readouterr().out
    assert "evaluating the body of a model fine-tuned on 'sst2'" in printed and len(printed.splitlines()) == 1
    assert ours.loaded.config.embedding_rows == CFG.vocab_size and "clf" not in ours.loaded.params
    base = harness_model.GPT1LM(init_from=str(tmp_path / "body"), batch_size=8, progress=False)
    requests = [Instance("loglikelihood", {}, (context, continuation), i) for i, (context, continuation) in
                enumerate([("the cat sat on the", " mat"), ("it was the best of times ,", " it was the worst"),
                           ("", "call me ishmael .")])]
    found, expected = ours.loglikelihood(requests), base.loglikelihood(requests)
    assert [logprob for logprob, _ in found] == pytest.approx([logprob for logprob, _ in expected], abs=1e-5)
    assert [greedy for _, greedy in found] == [greedy for _, greedy in expected]
    # The body with the special rows kept would score differently (its softmax spans them too).
    tokens = tokenizer.encode("the cat sat on the mat")
    n = len(tokens) - len(tokenizer.encode("the cat sat on the"))
    logits_TxV = model_lib.GPT1(task_config).apply({"params": tuned["transformer"]}, jnp.array([tokens[:-1]]))[0][0]
    targets = jnp.array(tokens[1:])[-n:, None]

    def continuation_logprob(logits_TxV):
        return float(jnp.take_along_axis(jax.nn.log_softmax(logits_TxV[-n:]), targets, axis=-1).sum())
    assert continuation_logprob(logits_TxV[:, :CFG.vocab_size]) == pytest.approx(found[0][0], abs=1e-5)
    assert continuation_logprob(logits_TxV) != pytest.approx(found[0][0], abs=1e-5)


@pytest.mark.slow
def test_a_pretraining_run_its_checkpoint_and_its_export_score_alike(pretrained):
    # Any `init_from` the project loads: the run directory (its export, as it finished), one of
    # its training checkpoints (the last one holds the exported params) and the export itself.
    from lm_eval.api.instance import Instance
    requests = [Instance("loglikelihood", {}, (context, continuation), i) for i, (context, continuation) in
                enumerate([("the cat sat on the", " mat"), ("", "call me ishmael .")])]
    scores = {name: harness_model.GPT1LM(init_from=str(path), batch_size=8, progress=False).loglikelihood(requests)
              for name, path in [("run", pretrained), ("checkpoint", pretrained / "checkpoints" / "3"),
                                 ("export", pretrained / "export")]}
    assert scores["run"] == scores["export"]
    assert [lp for lp, _ in scores["checkpoint"]] == pytest.approx([lp for lp, _ in scores["export"]], abs=1e-6)


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
