"""GPT-1 weights in and out: the original release, Hugging Face `openai-gpt`, our orbax
exports (the command line is gpt1_jax/cli/convert.py). Every path may be local or gs://.

Sources:
  openai  the release of openai/finetune-transformer-lm: `params_shapes.json` and
          `params_0.npy`..`params_9.npy`, pieces of one flat float32 array that is cut
          into the listed shapes in order: the position table [n_ctx, D], the token
          table [V, D], then per block c_attn w [1, D, 3D], b, c_proj w [1, D, D], b,
          ln_1 g, b, c_fc w [1, D, F], b, c_proj w [1, F, D], b, ln_2 g, b. The shapes
          do not record the number of heads: pass --n_head (12 for GPT-1).
  hf      a `transformers` OpenAIGPT directory: `config.json` and `model.safetensors` or
          `pytorch_model.bin` (the latter needs torch), keys with or without the
          "transformer." prefix of the LM-head classes.
  orbax   anything `--init_from` takes: a params export, a workdir or a training checkpoint.
Targets:
  orbax   a params export (`params/`, `model.json`, `tokenizer/`) for fine-tuning
          (`init_from`), `sample` and `evaluate_lm`.
  hf      `config.json` + `model.safetensors` (+ `vocab.json`/`merges.txt` for the GPT-1
          BPE) that `transformers.OpenAIGPTLMHeadModel.from_pretrained` loads.

All three formats store the same numbers; only names and shapes differ (HF's Conv1D
weights are [in, out] like the original's [1, in, out]; ours split the heads out), so
a round trip is exact. The tokenizer comes from the source directory when it holds the
vocabulary files (`encoder_bpe_40000.json`/`vocab_40000.bpe`, or HF's `vocab.json`/
`merges.txt`), else it is the bundled GPT-1 BPE.
"""
import dataclasses
import json
import re
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import loading, tokenizers
from gpt1_jax import model as model_lib
from gpt1_jax.errors import UserError
from gpt1_jax.storage import rundir

OPENAI_SHAPES_FILE = "params_shapes.json"
HF_CONFIG_FILE = "config.json"
HF_SAFETENSORS_FILE = "model.safetensors"
HF_TORCH_FILE = "pytorch_model.bin"
HF_VOCAB_FILE = "vocab.json"
HF_MERGES_FILE = "merges.txt"

# The original's arrays per block, in its order; HF kept the names with dots.
_BLOCK_TENSORS = ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                  "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                  "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias")


class ConversionError(UserError, ValueError):
    """An input that is missing, malformed, or does not fit the model it describes."""


LoadedModel = loading.LoadedModel


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One parameter: its HF name and [in, out] shape, its path and shape in our tree."""
    hf_name: str
    path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]


def _layout(cfg: model_lib.ModelConfig) -> list[_Tensor]:
    """Every parameter of `cfg`'s model, in the order of the original release."""
    d, f, h, k = cfg.d_model, cfg.d_ff, cfg.n_head, cfg.head_dim
    ours = {  # block tensor -> (path inside h_{i}, our shape), same order as _BLOCK_TENSORS
        "attn.c_attn.weight": (("attn", "c_attn", "kernel"), (d, 3, h, k)),
        "attn.c_attn.bias": (("attn", "c_attn", "bias"), (3, h, k)),
        "attn.c_proj.weight": (("attn", "c_proj", "kernel"), (h, k, d)),
        "attn.c_proj.bias": (("attn", "c_proj", "bias"), (d,)),
        "ln_1.weight": (("ln_1", "scale"), (d,)),
        "ln_1.bias": (("ln_1", "bias"), (d,)),
        "mlp.c_fc.weight": (("mlp", "c_fc", "kernel"), (d, f)),
        "mlp.c_fc.bias": (("mlp", "c_fc", "bias"), (f,)),
        "mlp.c_proj.weight": (("mlp", "c_proj", "kernel"), (f, d)),
        "mlp.c_proj.bias": (("mlp", "c_proj", "bias"), (d,)),
        "ln_2.weight": (("ln_2", "scale"), (d,)),
        "ln_2.bias": (("ln_2", "bias"), (d,)),
    }
    # q|k|v are consecutive blocks of D outputs, each D being H heads of K: so HF's
    # [D, 3D] is our [D, 3, H, K] and its merged-heads [D, D] is our [H, K, D].
    hf_shapes = {"attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
                 "attn.c_proj.weight": (d, d)}
    layout = [
        _Tensor("positions_embed.weight", ("positions_embed", "embedding"), (cfg.n_ctx, d), (cfg.n_ctx, d)),
        _Tensor("tokens_embed.weight", ("tokens_embed", "embedding"),
                (cfg.embedding_rows, d), (cfg.embedding_rows, d)),
    ]
    for i in range(cfg.n_layer):
        for name in _BLOCK_TENSORS:
            path, shape = ours[name]
            layout.append(_Tensor(f"h.{i}.{name}", (f"h_{i}",) + path, hf_shapes.get(name, shape), shape))
    return layout


def original_shapes(cfg: model_lib.ModelConfig) -> list[list[int]]:
    """The `params_shapes.json` of the original release for a model of `cfg`'s shape: the
    blocks' matrices are 1-wide convolutions there, [1, in, out]."""
    return [[1, *t.hf_shape] if t.hf_name.startswith("h.") and len(t.hf_shape) == 2 else list(t.hf_shape)
            for t in _layout(cfg)]


def params_from_arrays(cfg: model_lib.ModelConfig, arrays: dict[str, np.ndarray], source: str) -> Any:
    """Our parameter tree from arrays keyed by HF name; `source` names the file in errors."""
    params: dict = {}
    for t in _layout(cfg):
        if t.hf_name not in arrays:
            raise ConversionError(f"{source}: tensor {t.hf_name} is missing")
        array = np.asarray(arrays[t.hf_name])
        if array.shape != t.hf_shape:
            raise ConversionError(f"{source}: {t.hf_name} has shape {list(array.shape)}, but the "
                                  f"config implies {list(t.hf_shape)}")
        node = params
        for key in t.path[:-1]:
            node = node.setdefault(key, {})
        node[t.path[-1]] = jnp.asarray(array.astype(np.float32).reshape(t.shape))
    extra = sorted(set(arrays) - {t.hf_name for t in _layout(cfg)})
    if extra:
        raise ConversionError(f"{source}: unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    expected = jax.tree_util.tree_map(lambda s: s.shape, model_lib.abstract_params(cfg))
    if jax.tree_util.tree_map(lambda a: a.shape, params) != expected:
        raise AssertionError("the conversion layout does not match model.GPT1's parameters")
    return params


def arrays_from_params(cfg: model_lib.ModelConfig, params: Any) -> dict[str, np.ndarray]:
    """HF-named float32 arrays of our parameter tree (the inverse of `params_from_arrays`);
    a scanned tree (model.scan_layers) is unstacked first."""
    params = model_lib.per_layer_params(params)
    arrays = {}
    for t in _layout(cfg):
        node = params
        for key in t.path:
            node = node[key]
        arrays[t.hf_name] = np.ascontiguousarray(np.asarray(node, np.float32).reshape(t.hf_shape))
    return arrays


def _read_json(path, what: str) -> Any:
    if not path.is_file():
        raise ConversionError(f"{path} is missing: expected {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from e


def _tokenizer_in(src, encoder_name: str, merges_name: str) -> tokenizers.Tokenizer:
    """The GPT-1 BPE built from the vocabulary files in `src`, or the bundled one."""
    encoder, merges = src / encoder_name, src / merges_name
    if encoder.is_file() and merges.is_file():
        try:
            return tokenizers.gpt1_bpe_tokenizer(encoder, merges)
        except ValueError as e:
            raise ConversionError(f"{src}: unusable tokenizer files: {e}") from e
    return tokenizers.gpt1_bpe_tokenizer()


def _vocab_split(rows: int, tokenizer: tokenizers.Tokenizer, source: str) -> tuple[int, int]:
    """(vocab_size, n_special) of a token table of `rows` rows: the tokenizer's vocabulary,
    then up to three fine-tuning specials."""
    n_special = rows - tokenizer.vocab_size
    if not 0 <= n_special <= len(tokenizers.SPECIAL_TOKENS):
        raise ConversionError(
            f"{source}: the token table has {rows} rows but the tokenizer has {tokenizer.vocab_size} "
            f"entries (+ at most {len(tokenizers.SPECIAL_TOKENS)} specials); is it the GPT-1 vocabulary?")
    return tokenizer.vocab_size, n_special


# ---------------------------------------------------------------------------------------------
# The original release
# ---------------------------------------------------------------------------------------------

def read_openai(src, n_head: int = 12) -> LoadedModel:
    """The original release in `src`: params_shapes.json + params_0.npy, params_1.npy, ..."""
    src = rundir.path(src)
    shapes_path = src / OPENAI_SHAPES_FILE
    shapes = _read_json(shapes_path, "the list of parameter shapes of the original release")
    if (not isinstance(shapes, list) or len(shapes) < 2
            or not all(isinstance(s, list) and all(isinstance(n, int) and n > 0 for n in s) for s in shapes)):
        raise ConversionError(f"{shapes_path}: expected a list of shapes (lists of positive integers)")
    n_block = len(_BLOCK_TENSORS)
    if (len(shapes) - 2) % n_block or len(shapes[0]) != 2 or len(shapes[1]) != 2 or len(shapes) < 2 + n_block:
        raise ConversionError(f"{shapes_path}: expected [n_ctx, D], [V, D], then {n_block} arrays per "
                              f"block; got {len(shapes)} shapes starting {shapes[:2]}")
    (n_ctx, d), (rows, _) = shapes[0], shapes[1]
    d_ff = shapes[2 + _BLOCK_TENSORS.index("mlp.c_fc.weight")][-1]
    if d % n_head:
        raise ConversionError(f"{shapes_path}: width {d} is not divisible by --n_head={n_head}")
    bpe = tokenizers.GPT1BPETokenizer
    tokenizer = _tokenizer_in(src, bpe.ENCODER_FILE, bpe.MERGES_FILE)
    vocab_size, n_special = _vocab_split(rows, tokenizer, str(shapes_path))
    cfg = model_lib.ModelConfig(vocab_size=vocab_size, n_special=n_special, n_ctx=n_ctx,
                                n_layer=(len(shapes) - 2) // n_block, n_head=n_head, d_model=d, d_ff=d_ff)
    layout = _layout(cfg)
    for index, (t, shape, expected) in enumerate(zip(layout, shapes, original_shapes(cfg))):
        if shape != expected:
            raise ConversionError(f"{shapes_path}: shape #{index} ({t.hf_name}) is {shape}, expected "
                                  f"{expected} for a model of width {d} and FFN {d_ff}")

    numbers = sorted(int(m.group(1)) for p in src.glob("params_*.npy")
                     if (m := re.fullmatch(r"params_(\d+)\.npy", p.name)))
    if not numbers:
        raise ConversionError(f"{src}: no params_0.npy ... shards of the original release")
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        raise ConversionError(f"{src}: shard params_{missing[0]}.npy is missing")
    pieces = []
    for number in numbers:
        path = src / f"params_{number}.npy"
        try:
            with path.open("rb") as f:
                pieces.append(np.load(f, allow_pickle=False).reshape(-1))
        except (OSError, ValueError) as e:
            raise ConversionError(f"{path}: not a numpy array file: {e}") from e
    flat = np.concatenate(pieces)
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.size != sum(sizes):
        raise ConversionError(f"{src}: the {len(pieces)} shards hold {flat.size:,} numbers but "
                              f"{OPENAI_SHAPES_FILE} lists {sum(sizes):,}")
    # As the original loader: cut the concatenation at the cumulative sizes.
    arrays = np.split(flat, np.cumsum(sizes)[:-1])
    named = {t.hf_name: a.reshape(t.hf_shape) for t, a in zip(layout, arrays)}
    return LoadedModel(cfg, params_from_arrays(cfg, named, str(src)), tokenizer)


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------------------------

def _hf_model_config(config_path, tokenizer: tokenizers.Tokenizer) -> model_lib.ModelConfig:
    hf = _read_json(config_path, "a transformers OpenAIGPT config")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in hf]
    if missing:
        raise ConversionError(f"{config_path}: missing {missing}")
    if hf.get("afn", "gelu") != "gelu":
        # transformers' OpenAIGPT "gelu" is the tanh approximation, which our model computes.
        raise ConversionError(f"{config_path}: afn={hf['afn']!r}; only 'gelu' (tanh GELU) is supported")
    vocab_size, n_special = _vocab_split(hf["vocab_size"], tokenizer, str(config_path))
    try:
        return model_lib.ModelConfig(
            vocab_size=vocab_size, n_special=n_special, n_ctx=hf["n_positions"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], d_model=hf["n_embd"], d_ff=4 * hf["n_embd"],
            embd_pdrop=hf.get("embd_pdrop", 0.1), attn_pdrop=hf.get("attn_pdrop", 0.1),
            resid_pdrop=hf.get("resid_pdrop", 0.1), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            init_std=hf.get("initializer_range", 0.02))
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{config_path}: {e}") from e


def _read_hf_tensors(src) -> tuple[dict[str, np.ndarray], Any]:
    safetensors_path, torch_path = src / HF_SAFETENSORS_FILE, src / HF_TORCH_FILE
    if safetensors_path.is_file():
        import safetensors.numpy
        try:
            return safetensors.numpy.load(safetensors_path.read_bytes()), safetensors_path
        except Exception as e:  # safetensors raises its own error types
            raise ConversionError(f"{safetensors_path}: not a readable safetensors file: {e}") from e
    if torch_path.is_file():
        try:
            import torch
        except ImportError as e:
            raise ConversionError(f"{torch_path}: reading a PyTorch checkpoint needs torch "
                                  "(pip install torch), or give model.safetensors") from e
        try:
            with torch_path.open("rb") as f:
                state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many error types for a bad file
            raise ConversionError(f"{torch_path}: not a readable PyTorch checkpoint: {e}") from e
        return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}, torch_path
    raise ConversionError(f"{src}: neither {HF_SAFETENSORS_FILE} nor {HF_TORCH_FILE} is there")


def read_hf(src) -> LoadedModel:
    """A transformers OpenAIGPT model directory (config.json + weights)."""
    src = rundir.path(src)
    tokenizer = _tokenizer_in(src, HF_VOCAB_FILE, HF_MERGES_FILE)
    cfg = _hf_model_config(src / HF_CONFIG_FILE, tokenizer)
    raw, path = _read_hf_tensors(src)
    arrays = {}
    for name, array in raw.items():
        name = name.removeprefix("transformer.")
        # Not parameters: the causal mask and position ids that older versions saved,
        # and the LM head, which is the token table (checked below).
        if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", name) or name == "position_ids":
            continue
        arrays[name] = array
    head = arrays.pop("lm_head.weight", None)
    table = arrays.get("tokens_embed.weight")
    if head is not None and table is not None and not np.array_equal(head, table):
        raise ConversionError(f"{path}: lm_head.weight differs from tokens_embed.weight; GPT-1 ties them")
    return LoadedModel(cfg, params_from_arrays(cfg, arrays, str(path)), tokenizer)


def write_hf(dst, loaded: LoadedModel) -> None:
    """Writes config.json + model.safetensors (+ vocab.json/merges.txt for the GPT-1 BPE)."""
    import safetensors.numpy
    cfg = loaded.config
    if cfg.d_ff != 4 * cfg.d_model:
        raise ConversionError(f"transformers' OpenAIGPT has an FFN of 4 x width; this model has "
                              f"d_ff={cfg.d_ff}, d_model={cfg.d_model}")
    dst = rundir.path(dst)
    hf_config = {
        "architectures": ["OpenAIGPTLMHeadModel"],
        "model_type": "openai-gpt",
        "afn": "gelu",  # in transformers' OpenAIGPT this is the tanh approximation, as GPT-1
        "vocab_size": cfg.embedding_rows,
        "n_positions": cfg.n_ctx,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "embd_pdrop": cfg.embd_pdrop,
        "attn_pdrop": cfg.attn_pdrop,
        "resid_pdrop": cfg.resid_pdrop,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    rundir.write_text(dst / HF_CONFIG_FILE, json.dumps(hf_config, indent=2) + "\n")
    # The "pt" format tag is what transformers checks before loading a safetensors file.
    rundir.write_bytes(dst / HF_SAFETENSORS_FILE, safetensors.numpy.save(
        arrays_from_params(cfg, loaded.params), metadata={"format": "pt"}))
    if isinstance(loaded.tokenizer, tokenizers.GPT1BPETokenizer):
        with tempfile.TemporaryDirectory() as tmp:
            loaded.tokenizer.save(tmp)
            tmp = rundir.path(tmp)
            rundir.write_bytes(dst / HF_VOCAB_FILE, (tmp / loaded.tokenizer.ENCODER_FILE).read_bytes())
            rundir.write_bytes(dst / HF_MERGES_FILE, (tmp / loaded.tokenizer.MERGES_FILE).read_bytes())
        rundir.write_text(dst / "tokenizer_config.json", json.dumps(
            # GPT-1 has no bos/eos: the newline token plays both (gpt1_jax/evaluation/harness/__init__.py).
            {"tokenizer_class": "OpenAIGPTTokenizer", "unk_token": "<unk>", "model_max_length": cfg.n_ctx,
             "bos_token": "\n</w>", "eos_token": "\n</w>"},
            indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Our orbax exports
# ---------------------------------------------------------------------------------------------

def read_orbax(path) -> LoadedModel:
    """Anything `init_from` takes (loading.find): an export, a workdir or a checkpoint."""
    return loading.load(path)


def write_orbax(dst, loaded: LoadedModel) -> None:
    """Writes a params export: params/, model.json and tokenizer/."""
    loading.write_export(dst, loaded.params, dataclasses.asdict(loaded.config), loaded.tokenizer)


READERS = {"openai": read_openai, "hf": read_hf, "orbax": read_orbax}
WRITERS = {"orbax": write_orbax, "hf": write_hf}


def convert(source_format: str, target_format: str, src, dst, n_head: int = 12,
            overwrite: bool = False) -> LoadedModel:
    """Reads `src` in `source_format` and writes it to `dst` in `target_format`."""
    if source_format not in READERS or target_format not in WRITERS:
        raise ValueError(f"cannot convert {source_format!r} -> {target_format!r}; "
                         f"from {sorted(READERS)} to {sorted(WRITERS)}")
    dst = rundir.path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst} exists and is not empty (pass --overwrite to write into it)")
    if source_format == "openai":
        loaded = read_openai(src, n_head)
    else:
        loaded = READERS[source_format](src)
    WRITERS[target_format](dst, loaded)
    return loaded


if __name__ == "__main__":  # the command line moved with the others into gpt1_jax/cli/
    raise SystemExit("gpt1_jax.convert is the library; its command line is: python -m gpt1_jax.cli.convert ...")
