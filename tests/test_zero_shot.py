"""Zero-shot evaluators: LM scoring is exact, each task's decision rule, the run-level curve."""

import json
import shutil
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jobs
from gpt1_jax import model as model_lib
from gpt1_jax.data.tasks import Example
from gpt1_jax.evaluation import zero_shot

CFG = model_lib.ModelConfig(vocab_size=40, n_ctx=32, n_layer=1, n_head=2, d_model=16, d_ff=32)


@pytest.fixture(scope="module")
def scorer():
    params = nn.meta.unbox(model_lib.GPT1(CFG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return zero_shot.LMScorer(CFG, params, batch_size=4)


@pytest.mark.slow
def test_token_logprobs_equal_the_models_log_softmax_for_any_padding(scorer):
    sequences = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11]]
    got = scorer.token_logprobs(sequences)
    for seq, lp in zip(sequences, got):
        logits, _ = model_lib.GPT1(CFG).apply({"params": scorer.params}, jnp.array([seq]))
        want = jax.nn.log_softmax(logits[0, :-1])[np.arange(len(seq) - 1), np.array(seq[1:])]
        np.testing.assert_allclose(lp, want, atol=1e-5)


@pytest.mark.slow
def test_continuation_score_is_the_mean_over_the_continuation_only(scorer):
    score = scorer.continuation_mean_logprob([[1, 2, 3]], [[4, 5]])
    lp = scorer.token_logprobs([[1, 2, 3, 4, 5]])[0]
    np.testing.assert_allclose(score, [lp[-2:].mean()], atol=1e-6)


def test_best_threshold_maximises_mcc():
    scores = np.array([-3.0, -2.5, -1.0, -0.5, -0.2])
    labels = np.array([0, 0, 1, 1, 1])
    t = zero_shot.best_threshold(scores, labels)
    assert -2.5 <= t < -1.0


class _Tokenizer:
    """Word-level stand-in: each word maps to a stable id."""
    def __init__(self):
        self.vocab = {}

    def encode(self, text):
        return [self.vocab.setdefault(w, len(self.vocab) % 40) for w in text.split()]

    def encode_batch(self, texts, progress=False):
        return [self.encode(t) for t in texts]


class _Scorer:
    """Prefers continuations that contain id `liked` after contexts ending in `cue`."""
    def __init__(self, prefer):
        self.prefer, self.calls = prefer, []

    def continuation_mean_logprob(self, contexts, continuations):
        self.calls.append((contexts, continuations))
        return np.array([1.0 if self.prefer(c, x) else 0.0 for c, x in zip(contexts, continuations)])


def test_sst2_appends_very_and_compares_positive_with_negative():
    tok = _Tokenizer()
    positive = tok.encode("positive")
    scorer = _Scorer(lambda c, x: (c[0] == tok.encode("great")[0]) == (x == positive))
    predictions = zero_shot.sst2_predictions(scorer, tok, ["great film ", "awful film"])
    assert list(predictions) == [1, 0]
    contexts = scorer.calls[0][0]
    assert all(c[-1] == tok.encode("very")[0] for c in contexts)


def test_multiple_choice_picks_the_likeliest_answer():
    tok = _Tokenizer()
    good = tok.encode("right")[0]
    scorer = _Scorer(lambda c, x: good in x)
    examples = [Example(("a story", "wrong end", "right end"), 1, "0"),
                Example(("another", "right end", "wrong end"), 0, "1")]
    assert list(zero_shot.multiple_choice_predictions(scorer, tok, examples)) == [1, 0]


def test_dprd_substitutes_each_candidate_and_scores_the_rest(tmp_path):
    path = tmp_path / "dprd.txt"
    path.write_text("The trophy did not fit in the suitcase because it was too big .\nit\n"
                    "trophy,suitcase\ntrophy\n\n")
    examples = zero_shot.read_dprd(path)
    assert examples[0].pronoun_index == 9 and examples[0].answer == 0
    tok = _Tokenizer()
    trophy = tok.encode("trophy")[0]
    scorer = _Scorer(lambda c, x: c[-1] == trophy)
    assert list(zero_shot.dprd_predictions(scorer, tok, examples)) == [0]
    contexts, continuations = scorer.calls[0]
    assert continuations[0] == tok.encode("was too big .")
    (tmp_path / "bad.txt").write_text("one line only\n\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        zero_shot.read_dprd(tmp_path / "bad.txt")


@pytest.mark.slow
def test_the_command_draws_the_curve_over_every_checkpoint_of_a_run_on_real_data(pretrained, shared_data,
                                                                                tmp_path):
    workdir = shutil.copytree(pretrained, tmp_path / "run")
    done = jobs.run([sys.executable, "-m", "gpt1_jax.cli.zero_shot", f"--workdir={workdir}",
                     f"--glue_dir={shared_data / 'glue'}", f"--story_cloze_dir={shared_data / 'story_cloze'}",
                     "--max_examples=16", "--batch_size=8"])
    results = json.loads((workdir / "zero_shot.json").read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == results
    assert results["steps"] == [1, 2, 3]
    assert set(results["tasks"]) == {"cola", "sst2", "story_cloze"}
    assert all(len(v) == 3 for v in results["tasks"].values())
    assert all(0.0 <= v <= 1.0 for v in results["tasks"]["sst2"])
    assert (workdir / "zero_shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
