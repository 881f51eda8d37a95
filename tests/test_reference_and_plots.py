"""What a first run is measured against and shown with: count-model reference levels (checked
against a hand computation), the training-curve PNGs, and reproducible text continuations."""
import io
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import demo_text, plots
from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib
from gpt1_jax.data import reference
from gpt1_jax.errors import UserError

VOCAB = 6  # token 5 never occurs in training: the smoothing must still give it a finite loss
TRAIN = [0, 1, 2, 0, 1, 3, 0, 1, 2, 4, 0, 2, 1, 0, 1, 2, 3, 3, 0, 1, 4, 2, 0, 1, 2, 0]
VAL = [0, 1, 2, 3, 0, 4, 5, 1, 2, 2, 0, 1]


def hand_levels(train, val, vocab):
    """The two levels by explicit loops over the definitions in reference.py's docstring."""
    alpha, discount = 1.0, 0.75
    unigram = [(sum(1 for t in train if t == w) + alpha) / (len(train) + alpha * vocab)
               for w in range(vocab)]
    pairs = {}
    for prev, nxt in zip(train[:-1], train[1:]):
        pairs[(prev, nxt)] = pairs.get((prev, nxt), 0) + 1
    unigram_nll = bigram_nll = 0.0
    for prev, nxt in zip(val[:-1], val[1:]):
        unigram_nll -= math.log(unigram[nxt])
        context = sum(c for (p, _), c in pairs.items() if p == prev)
        if context == 0:
            prob = unigram[nxt]
        else:
            distinct = sum(1 for (p, _) in pairs if p == prev)
            prob = (max(pairs.get((prev, nxt), 0) - discount, 0) / context
                    + discount * distinct / context * unigram[nxt])
        bigram_nll -= math.log(prob)
    return unigram_nll / (len(val) - 1), bigram_nll / (len(val) - 1)


def test_reference_levels_equal_a_hand_computation():
    levels = reference.reference_levels(np.array(TRAIN, np.uint16), np.array(VAL, np.uint16), VOCAB)
    unigram, bigram = hand_levels(TRAIN, VAL, VOCAB)
    assert levels["unigram_loss"] == pytest.approx(unigram, rel=1e-12)
    assert levels["bigram_loss"] == pytest.approx(bigram, rel=1e-12)
    assert levels["bigram_loss"] < levels["unigram_loss"]  # this toy text is very predictable


def test_an_unseen_context_falls_back_to_the_unigram():
    # Token 5 never occurs in training: after it, the bigram predicts like the unigram.
    levels = reference.reference_levels(np.array(TRAIN), np.array([5, 1]), VOCAB)
    assert levels["bigram_loss"] == pytest.approx(levels["unigram_loss"], rel=1e-12)
    assert math.isfinite(levels["unigram_loss"])


def test_reference_levels_are_cached_per_split(tmp_path):
    token_cache = tmp_path / "abc123.npy"
    train, val = np.array(TRAIN), np.array(VAL)
    path = reference.reference_cache_file(token_cache, train, val)
    assert path.parent == tmp_path and path.name.startswith("abc123.")
    assert path != reference.reference_cache_file(token_cache, train[:-2], val)  # another split
    levels = reference.reference_levels(train, val, VOCAB, cache_file=path)
    stored = json.loads(path.read_text())
    assert stored["unigram_loss"] == levels["unigram_loss"]
    # A second call reads the file: a planted value comes back.
    path.write_text(json.dumps({**stored, "bigram_loss": 1.25}))
    assert reference.reference_levels(train, val, VOCAB, cache_file=path)["bigram_loss"] == 1.25
    # A file describing another vocabulary is not trusted: recomputed and rewritten.
    assert reference.reference_levels(train, val, VOCAB + 1, cache_file=path)["bigram_loss"] != 1.25


def _decode_png(png: bytes):
    import matplotlib.image
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(png), format="png")


ROWS = ([{"step": 0, "val_loss": 8.3}]
        + [{"step": s, "loss": 8.3 - 3.5 * (1 - math.exp(-s / 150)), "lr": min(s / 300, 1) * 1e-3}
           for s in range(1, 801, 10)]
        + [{"step": s, "val_loss": 8.3 - 3.4 * (1 - math.exp(-s / 150))} for s in (100, 200, 400, 800)]
        + [{"step": 5, "loss": "nan"}])  # how metrics.jsonl writes a non-finite value


def test_training_curves_render_to_a_png_of_the_promised_size(tmp_path):
    png = plots.render_training_curves(ROWS, {"unigram_loss": 6.63, "bigram_loss": 4.80})
    image = _decode_png(png)
    assert image.shape[:2] == (plots.HEIGHT_IN * plots.DPI, plots.WIDTH_IN * plots.DPI)
    assert image.std() > 0.05  # something is drawn
    plots.write_training_curves(ROWS, None, tmp_path / "curves.png")
    buffer = io.BytesIO()
    plots.write_training_curves(ROWS, None, buffer)
    assert (tmp_path / "curves.png").read_bytes()[:8] == buffer.getvalue()[:8] == png[:8]


def test_harness_metrics_get_a_panel_per_kind_below_the_losses_and_none_without_them():
    harness = [{"step": s, "val_harness/lastword/acc": 0.1 + s / 1000, "val_harness/choice/acc_norm": 0.5,
                "val_harness/lastword/perplexity": 9000.0 / (s + 1), "val_harness/pages/bits_per_byte": "nan"}
               for s in (0, 400, 800)]
    png = plots.render_training_curves(ROWS + harness, {"unigram_loss": 6.63})
    assert _decode_png(png).shape[:2] == ((plots.HEIGHT_IN + plots.HARNESS_HEIGHT_IN) * plots.DPI,
                                          plots.WIDTH_IN * plots.DPI)
    panels = {p["panel"]: p["series"] for p in plots.drawn_series(png)}
    # Accuracies share one axis, perplexity has its own; a metric with no finite value gets no panel.
    assert panels["harness: score"] == ["choice/acc_norm", "lastword/acc"]
    assert panels["harness: perplexity"] == ["lastword/perplexity"]
    assert not [name for name in panels if "bits per byte" in name]
    assert "validation loss" in panels["Pre-training: next-token loss"][1]

    plain = plots.render_training_curves(ROWS, None)
    assert _decode_png(plain).shape[:2] == (plots.HEIGHT_IN * plots.DPI, plots.WIDTH_IN * plots.DPI)
    assert [p["panel"] for p in plots.drawn_series(plain)] == ["Pre-training: next-token loss", "learning rate"]


def test_finetune_curves_render_and_an_empty_history_still_draws():
    rows = [{"step": s, "loss": 1 / s, "accuracy": 0.5 + s / 400} for s in range(1, 101, 10)]
    image = _decode_png(plots.render_finetune_curves(rows, ["accuracy"]))
    assert image.shape[:2] == (plots.HEIGHT_IN * plots.DPI, plots.WIDTH_IN * plots.DPI)
    _decode_png(plots.render_training_curves([], None))


def test_the_one_png_writer_takes_any_figure_at_its_resolution_and_closes_it():
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([0, 1, 2], [2, 0, 1])
    image = _decode_png(plots.png_bytes(fig, dpi=120))
    assert image.shape[:2] == (4 * 120, 6 * 120)
    assert not plt.fignum_exists(fig.number)  # a job drawing at every evaluation leaks no figures


class CharTokenizer:
    """Bytes below 97 as token ids, enough to round-trip an ASCII prompt."""

    def encode(self, text):
        return [ord(c) % 97 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 32) if i < 95 else "?" for i in ids)


CFG = model_lib.ModelConfig(vocab_size=97, n_ctx=32, n_layer=1, n_head=2, d_model=32, d_ff=64,
                            init_std=0.3)


@pytest.fixture(scope="module")
def params():
    model = model_lib.GPT1(CFG)
    return nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


def test_continuations_are_reproducible_and_greedy_is_temperature_zero(params):
    tokenizer = CharTokenizer()
    first = demo_text.continuations(CFG, params, tokenizer, "abc", max_new_tokens=12, seed=3)
    assert first == demo_text.continuations(CFG, params, tokenizer, "abc", max_new_tokens=12, seed=3)
    prompt_ids = tokenizer.encode("abc")
    greedy_ids = generate_lib.generate(CFG, params, [prompt_ids], 12,
                                       generate_lib.Sampling(temperature=0.0))[0]
    assert first["greedy"] == tokenizer.decode(greedy_ids)
    sampled_ids = generate_lib.generate(CFG, params, [prompt_ids], 12, demo_text.SAMPLED,
                                        jax.random.key(3))[0]
    assert first["sampled"] == tokenizer.decode(sampled_ids)
    other_seeds = {demo_text.continuations(CFG, params, tokenizer, "abc", 12, seed)["sampled"]
                   for seed in range(4, 8)}
    assert len(other_seeds | {first["sampled"]}) > 1  # the seed is used


@pytest.mark.slow
def test_continuations_fit_the_context(params):
    texts = demo_text.continuations(CFG, params, CharTokenizer(), "x" * 30, max_new_tokens=50)
    assert len(texts["greedy"]) == 2  # 32 positions - 30 prompt tokens
    with pytest.raises(UserError, match="no room"):
        demo_text.continuations(CFG, params, CharTokenizer(), "x" * 32)


def test_a_pretraining_run_reports_its_reference_levels_picture_and_text(pretrained):
    """The tiny pre-training of conftest: summary.json holds the reference levels of its own
    train/validation split, curves.png is a PNG, and the end-of-run continuations are there."""
    import matplotlib.image

    from gpt1_jax.data import corpus
    from gpt1_jax.storage import rundir
    summary = json.loads((pretrained / rundir.SUMMARY).read_text())
    [cache_json] = [p for p in (pretrained / "cache").glob("*.json") if ".reference." not in p.name]
    tokens = np.load(cache_json.with_suffix(".npy"))
    train, val = corpus.split_train_val(tokens, 0.1, 64)
    expected = reference.reference_levels(train, val, json.loads(cache_json.read_text())["vocab_size"])
    assert summary["reference"]["unigram_loss"] == pytest.approx(expected["unigram_loss"], rel=1e-9)
    assert summary["reference"]["bigram_loss"] == pytest.approx(expected["bigram_loss"], rel=1e-9)
    assert summary["reference"]["bigram_loss"] < summary["reference"]["unigram_loss"]
    png = (pretrained / rundir.CURVES).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(io.BytesIO(png)).shape[:2] == (600, 1000)
    assert set(summary["sample"]) == {"prompt", "greedy", "sampled"}
