"""Weight import and export against transformers' OpenAIGPT: same logits, same NLL, exact
round trips, and the original release's shard layout."""
import hashlib
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jobs
from gpt1_jax import assets, convert, tokenizers
from gpt1_jax import model as model_lib
from gpt1_jax.evaluation import perplexity

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_CTX = 64
RELEASED_SHAPES_SHA256 = "3bff3faa381e06d81c60f44520eb82c673d14a8ae61d821c63167f59acc6a768"


@pytest.fixture(scope="module")
def hf_model():
    """A random OpenAIGPTLMHeadModel at a small shape, with the GPT-1 vocabulary.

    Every tensor is drawn with a spread that keeps activations of order one, so a wrong
    layout, LayerNorm or GELU moves the logits far beyond the tolerance (the exact-erf
    GELU in place of tanh moves them by about 4e-3).
    """
    torch.manual_seed(0)
    config = transformers.OpenAIGPTConfig(vocab_size=40478, n_positions=N_CTX, n_embd=64, n_layer=2,
                                          n_head=4, afn="gelu")
    model = transformers.OpenAIGPTLMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.normal_(0, 0.1)
            elif "embed" in name:
                p.normal_(0, 0.5)
            else:
                p.normal_(0, p.shape[0] ** -0.5)
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(path)  # model.safetensors, keys prefixed "transformer."
    return path


@pytest.fixture(scope="module")
def book_tokens():
    text = (assets.BOOKS_DIR / "emma.txt").read_text(encoding="utf-8")[20_000:40_000]
    return tokenizers.gpt1_bpe_tokenizer().encode(text)


def _logits(loaded, tokens_BxT):
    logits_BxTxV, _ = model_lib.GPT1(loaded.config).apply({"params": loaded.params}, jnp.asarray(tokens_BxT))
    return np.asarray(logits_BxTxV)


def _assert_same_params(a, b):
    flat_a, flat_b = convert.arrays_from_params(a.config, a.params), convert.arrays_from_params(b.config, b.params)
    assert flat_a.keys() == flat_b.keys()
    for name in flat_a:
        np.testing.assert_array_equal(flat_a[name], flat_b[name], err_msg=name)


def test_hf_model_through_an_orbax_export_gives_transformers_logits(hf_model, hf_dir, book_tokens, tmp_path):
    convert.convert("hf", "orbax", hf_dir, tmp_path / "export")
    loaded = convert.read_orbax(tmp_path / "export")
    assert loaded.config.n_ctx == N_CTX and loaded.config.n_special == 0
    assert loaded.tokenizer.fingerprint() == tokenizers.gpt1_bpe_tokenizer().fingerprint()
    tokens_BxT = np.array(book_tokens[:2 * N_CTX]).reshape(2, N_CTX)
    with torch.no_grad():
        expected = hf_model(torch.tensor(tokens_BxT)).logits.numpy()
    assert expected.std() > 1.0  # far from a near-constant output
    assert np.abs(_logits(loaded, tokens_BxT) - expected).max() <= 1e-4


def test_evaluate_lm_gives_transformers_nll(hf_model, hf_dir, book_tokens):
    loaded = convert.read_hf(hf_dir)
    document = book_tokens[:3 * N_CTX + 10]
    ours = perplexity.score(loaded.config, loaded.params, [document], batch_size=2)
    # transformers on the same non-overlapping windows, one forward pass each.
    total, count = 0.0, 0
    for start in range(0, len(document) - 1, N_CTX):
        window = torch.tensor([document[start:start + N_CTX + 1]])
        with torch.no_grad():
            logits = hf_model(window[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
        total, count = total + float(loss), count + window.shape[1] - 1
    assert ours["tokens"] == count == len(document) - 1
    assert ours["nll"] == pytest.approx(total / count, rel=1e-5)


def test_orbax_to_hf_to_orbax_is_exact_and_transformers_loads_it(hf_model, hf_dir, tmp_path):
    loaded = convert.read_hf(hf_dir)
    convert.write_orbax(tmp_path / "export", loaded)
    convert.convert("orbax", "hf", tmp_path / "export", tmp_path / "hf_out")
    reloaded = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "hf_out").eval()
    expected = hf_model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.tokens_embed.weight.data_ptr()
    convert.convert("hf", "orbax", tmp_path / "hf_out", tmp_path / "export_again")
    _assert_same_params(loaded, convert.read_orbax(tmp_path / "export_again"))
    hf_tokenizer_files = {p.name for p in (tmp_path / "hf_out").iterdir()}
    assert {"vocab.json", "merges.txt"} <= hf_tokenizer_files


def test_pytorch_bin_without_prefix_reads_the_same(hf_model, hf_dir, tmp_path):
    # The hub's openai-gpt stores the bare model (no "transformer." prefix).
    torch.save(hf_model.transformer.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    _assert_same_params(convert.read_hf(hf_dir), convert.read_hf(tmp_path))


def test_original_layout_is_the_released_params_shapes_json():
    # sha256 of model/params_shapes.json in openai/finetune-transformer-lm (see
    # gpt1_jax/assets/gpt1_bpe/SOURCE.md): the paper's model gives the file byte for byte.
    shapes_json = json.dumps(convert.original_shapes(model_lib.ModelConfig()))
    assert hashlib.sha256(shapes_json.encode()).hexdigest() == RELEASED_SHAPES_SHA256


def _write_original_release(hf_model, directory: pathlib.Path, num_shards: int = 10) -> None:
    """The layout of openai/finetune-transformer-lm's model/: shapes + flat float32 shards.

    The release lists the position table, the token table, then each block's tensors in
    the order its TensorFlow variables were made, matrices as [1, in, out] convolutions.
    """
    state = {k.removeprefix("transformer."): v.numpy() for k, v in hf_model.state_dict().items()}
    block_order = ["attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                   "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                   "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"]
    arrays = [state["positions_embed.weight"], state["tokens_embed.weight"]]
    for i in range(hf_model.config.n_layer):
        for name in block_order:
            array = state[f"h.{i}.{name}"]
            arrays.append(array[None] if array.ndim == 2 else array)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params_shapes.json").write_text(json.dumps([list(a.shape) for a in arrays]))
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32)
    for n, shard in enumerate(np.array_split(flat, num_shards)):
        np.save(directory / f"params_{n}.npy", shard)


def test_original_release_layout_reads_as_the_same_model(hf_model, hf_dir, tmp_path):
    _write_original_release(hf_model, tmp_path / "model")
    from_openai = convert.read_openai(tmp_path / "model", n_head=4)
    assert from_openai.config == convert.read_hf(hf_dir).config
    _assert_same_params(from_openai, convert.read_hf(hf_dir))


def test_broken_inputs_name_the_file(hf_model, hf_dir, tmp_path):
    release = tmp_path / "model"
    _write_original_release(hf_model, release)
    with pytest.raises(convert.ConversionError, match="--n_head=5"):
        convert.read_openai(release, n_head=5)
    (release / "params_3.npy").unlink()
    with pytest.raises(convert.ConversionError, match="params_3.npy is missing"):
        convert.read_openai(release, n_head=4)
    np.save(release / "params_3.npy", np.zeros(7, np.float32))
    with pytest.raises(convert.ConversionError, match="shards hold"):
        convert.read_openai(release, n_head=4)
    (release / "params_shapes.json").write_text("[[64, 64]")
    with pytest.raises(convert.ConversionError, match="params_shapes.json is not valid JSON"):
        convert.read_openai(release, n_head=4)

    bad_hf = tmp_path / "hf"
    bad_hf.mkdir()
    (bad_hf / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(convert.ConversionError, match="config.json is missing"):
        convert.read_hf(bad_hf)
    config = json.loads((hf_dir / "config.json").read_text())
    (bad_hf / "config.json").write_text(json.dumps({**config, "n_positions": N_CTX * 2}))
    with pytest.raises(convert.ConversionError, match=r"model.safetensors: positions_embed.weight has shape"):
        convert.read_hf(bad_hf)
    (bad_hf / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(convert.ConversionError, match="token table has 1000 rows"):
        convert.read_hf(bad_hf)


@pytest.mark.slow
def test_command_line(hf_dir, tmp_path):
    command = [sys.executable, "-m", "gpt1_jax.cli.convert", "--from=hf", "--to=orbax", str(hf_dir),
               str(tmp_path / "export")]
    done = jobs.run(command, timeout=120)
    assert "2 layers, width 64, 4 heads, context 64" in done.stdout
    again = jobs.run(command, timeout=120, expect_ok=False)
    assert again.returncode != 0 and "not empty" in again.stderr
