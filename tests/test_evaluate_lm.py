"""LM evaluation: every token scored once, with the context the stride promises, and the
command's last line is the JSON result."""
import dataclasses
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jobs
from gpt1_jax import loading, tokenizers
from gpt1_jax import model as model_lib
from gpt1_jax.data import corpus
from gpt1_jax.evaluation import perplexity

CFG = model_lib.ModelConfig(vocab_size=40478, n_ctx=16, n_layer=2, n_head=2, d_model=32, d_ff=64)


@pytest.fixture(scope="module")
def params():
    model = model_lib.GPT1(CFG)
    return nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


@pytest.mark.parametrize("length, n_ctx, stride", [(2, 8, 8), (9, 8, 8), (10, 8, 8), (50, 8, 8),
                                                   (50, 8, 3), (50, 8, 1), (8, 8, 5)])
def test_windows_score_every_target_once_with_context_from_the_stride(length, n_ctx, stride):
    tokens = np.arange(100, 100 + length)
    scored = []
    for inputs, targets, mask in perplexity.windows(tokens, n_ctx, stride):
        assert len(inputs) == len(targets) <= n_ctx
        np.testing.assert_array_equal(targets[:-1], inputs[1:])
        for position in np.flatnonzero(mask):
            # A scored target sees every input before it in its window...
            context = position + 1
            # ...which is all of the document before it, or at least n_ctx - stride tokens.
            assert context == targets[position] - 100 or context >= n_ctx - stride + 1
        scored.extend(targets[mask].tolist())
    assert scored == tokens[1:].tolist()


def test_stride_one_scores_each_token_with_its_full_context(params):
    model = model_lib.GPT1(CFG)
    document = jax.random.randint(jax.random.key(1), (40,), 0, CFG.vocab_size).tolist()
    result = perplexity.score(CFG, params, [document], batch_size=3, stride=1)

    @jax.jit
    def nll_of_last(inputs_1xT, length, target):
        logits_1xTxV, _ = model.apply({"params": params}, inputs_1xT)
        return optax.softmax_cross_entropy_with_integer_labels(logits_1xTxV[0, length - 1], target)

    expected = []
    for j in range(1, len(document)):
        context = document[max(0, j - CFG.n_ctx):j]
        padded = np.zeros((1, CFG.n_ctx), np.int32)
        padded[0, :len(context)] = context
        expected.append(float(nll_of_last(padded, len(context), document[j])))
    assert result["tokens"] == len(document) - 1
    assert result["nll"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert result["perplexity"] == pytest.approx(np.exp(result["nll"]))


def test_documents_are_scored_independently(params):
    a = jax.random.randint(jax.random.key(2), (30,), 0, CFG.vocab_size).tolist()
    b = jax.random.randint(jax.random.key(3), (21,), 0, CFG.vocab_size).tolist()
    both = perplexity.score(CFG, params, [a, b, [5]])
    one, two = perplexity.score(CFG, params, [a]), perplexity.score(CFG, params, [b])
    assert both["tokens"] == one["tokens"] + two["tokens"] == 29 + 20
    mean = (one["nll"] * one["tokens"] + two["nll"] * two["tokens"]) / both["tokens"]
    assert both["nll"] == pytest.approx(mean, rel=1e-6)


@pytest.mark.slow
def test_command_prints_the_result_as_its_last_line(params, tmp_path):
    export = tmp_path / "export"
    tokenizer = tokenizers.gpt1_bpe_tokenizer()
    loading.write_export(export, params, dataclasses.asdict(CFG), tokenizer)
    text = "It was the best of times, it was the worst of times.\r\nIt was the age of wisdom.\r\n" * 3
    (tmp_path / "text.txt").write_bytes(text.encode("utf-8"))
    done = jobs.run([sys.executable, "-m", "gpt1_jax.cli.evaluate_lm", f"--init_from={export}",
                     f"--text={tmp_path / 'text.txt'}", "--batch_size=2"], timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = perplexity.score(CFG, params, [tokenizer.encode(text.replace("\r\n", "\n"))])
    assert result["tokens"] == expected["tokens"]
    assert result["nll"] == pytest.approx(expected["nll"], rel=1e-6)
    assert result["perplexity"] == pytest.approx(np.exp(result["nll"]))


def test_a_missing_text_is_said_before_the_model_is_loaded(params, tmp_path):
    # Loading this export would fail, naming its params; the command names the missing text
    # instead, since it reads the text before the model.
    export = tmp_path / "export"
    loading.write_export(export, params, dataclasses.asdict(CFG), tokenizers.gpt1_bpe_tokenizer())
    (export / "params").rename(tmp_path / "params_moved_away")  # would fail to load, if it were read
    result = jobs.run([sys.executable, "-m", "gpt1_jax.cli.evaluate_lm", f"--init_from={export}",
                       f"--text={tmp_path / 'missing.txt'}"], expect_ok=False, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith("error: evaluate_lm: "), jobs.output(result)
    assert "missing.txt" in lines[-1] and "params" not in lines[-1], jobs.output(result)


def test_tfds_records_are_the_documents(params, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class EvalLmTinyCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"body": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i, text in enumerate(["The first record.", "A second one, longer.", "A third."]):
                yield i, {"body": text}

    data_dir = str(tmp_path / "tfds")
    EvalLmTinyCorpus(data_dir=data_dir, file_format="array_record").download_and_prepare()
    texts, source = corpus.read_documents("", "--text", "eval_lm_tiny_corpus", "test", data_dir,
                                          "body", max_documents=2)
    assert len(texts) == 2  # --max_documents
    assert set(texts) < {"The first record.", "A second one, longer.", "A third."}
    assert "eval_lm_tiny_corpus" in source
