"""The GPT-1 Transformer decoder (Radford et al., 2018) as a functional Flax module.

Post-LN blocks exactly as the released code (`train.py:140-147`):

    n = LN(x + Attention(x))
    h = LN(n + MLP(n))

with no final LayerNorm, tanh-GELU, learned position embeddings, and the output
head tied to the token table. Every parameter carries logical axis names
("vocab", "embed", "heads", "kv", "mlp", ...) so the configuration, not the model,
decides how it is laid out on a device mesh (see `sharding.py`).

Shape suffixes: B batch, T sequence, D model width, H heads, K head width,
F feed-forward width, V vocabulary (+ specials).
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gpt1_jax import dense
from gpt1_jax.dropout import Dropout
from gpt1_jax.errors import ConfigError

ATTENTION_IMPLEMENTATIONS = ("einsum", "dot_product")
REMAT_POLICIES = ("none", "dots", "block")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and regularisation of a GPT-1 model; the defaults are the paper's."""
    vocab_size: int = 40478       # BPE vocabulary (40,000 merges + base symbols)
    n_special: int = 0            # embeddings appended after the vocabulary (fine-tuning: 3)
    n_ctx: int = 512
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 3072
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    attention: str = "einsum"     # "einsum" or "dot_product" (jax.nn.dot_product_attention)
    attention_backend: str | None = None  # for dot_product: None (XLA picks), "xla", "cudnn"
    attention_block: int = 64     # einsum: queries per block, each scoring only keys up to its end (0: all)
    dtype: str = "float32"        # compute dtype; parameters are always float32
    # Rematerialisation, per block: "none" keeps every activation for the backward pass;
    # "dots" keeps only matmul outputs (recomputes attention probabilities, GELU, LayerNorm,
    # dropout); "block" keeps only each block's input and recomputes the whole block.
    remat: str = "none"
    # One scanned block (nn.scan) instead of n_layer unrolled ones: the compiler sees the
    # block once, so compiling takes a fraction of the time. Parameters are then stacked
    # on a leading "layers" axis under "h" instead of "h_0" ... "h_{n-1}" (see
    # `stack_layers` / `unstack_layers`; exports and conversions use the per-layer form).
    scan_layers: bool = False

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"model.attention={self.attention!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if self.attention_backend == "cudnn" and jnp.dtype(self.dtype) == jnp.float32:
            raise ConfigError(
                "model.attention_backend='cudnn' needs model.dtype='bfloat16' or 'float16' "
                "(cuDNN's fused attention has no float32 kernel)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def embedding_rows(self) -> int:
        """Rows of the token table: the vocabulary followed by the special tokens."""
        return self.vocab_size + self.n_special


def _normal(config: ModelConfig, *axes: str | None):
    return nn.with_logical_partitioning(nn.initializers.normal(config.init_std), axes)


def _zeros(*axes: str | None):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
    # GPT-1 normalises with eps 1e-5 and the two-pass variance E[(x - mean)^2];
    # Flax's defaults (eps 1e-6, one-pass E[x^2] - mean^2) differ from both.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        dtype=jnp.dtype(config.dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=_zeros("norm"),
        name=name,
    )


def _dot_general(config: ModelConfig):
    """The Dense layers' product: `dense.dot_general`, whose weight gradient XLA:CPU needn't
    transpose (6-18% of a CPU train step), unless the blocks are rematerialised. Under remat
    XLA:CPU then scheduled larger temporaries (the bench's small shape, batch 16: "dots"
    1,275 -> 1,422 MiB, "block" 1,121 -> 1,175 MiB), and remat is there to save memory."""
    return dense.dot_general if config.remat == "none" else jax.lax.dot_general


def _softmax_visible(scores_BxHxTxS: jax.Array, visible_BxTxS: jax.Array, head_dim: int) -> jax.Array:
    """Softmax over keys of the 1/sqrt(head_dim)-scaled scores, in float32 (cast before the
    scaling, so bf16 scores are rounded once); a key that is not `visible` gets no weight."""
    scores_BxHxTxS = scores_BxHxTxS.astype(jnp.float32) * (1.0 / math.sqrt(head_dim))
    scores_BxHxTxS = jnp.where(visible_BxTxS[:, None], scores_BxHxTxS, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores_BxHxTxS, axis=-1)


def attention_weights(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, visible_BxTxS: jax.Array) -> jax.Array:
    """Softmax of the 1/sqrt(K)-scaled scores of T queries over the S `visible` keys."""
    scores_BxHxTxS = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxSxHxK)
    return _softmax_visible(scores_BxHxTxS, visible_BxTxS, q_BxTxHxK.shape[-1])


def causal_attention(q_BxHxTxK: jax.Array, k_BxHxTxK: jax.Array, v_BxHxTxK: jax.Array,
                     dropout, block: int) -> jax.Array:
    """Causal softmax attention, exact, computed `block` queries at a time; head-major.

    Queries [i, i + block) see only keys [0, i + block): the keys after a block, which
    the causal mask would zero anyway, are never scored. For T = n * block this does
    (n + 1) / 2n of the full T x T work on scores, softmax, dropout and values (5/8 at
    n = 4), in matmuls and elementwise passes alike. Each query's softmax runs over the
    same visible keys as with the full mask, so the result is the same. `dropout` is
    applied to each block's probabilities; `block` <= 0 takes all T queries at once.

    The [B, H, T, K] layout makes a block's queries and keys slices of each (batch, head)
    plane, so every block is a plain batched matmul over (B, H); slices of [B, T, H, K]
    would each be gathered through a transpose first.
    """
    t = q_BxHxTxK.shape[2]
    block = t if block <= 0 else block
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        visible_1xQxS = (jnp.arange(stop)[None, :] <= jnp.arange(start, stop)[:, None])[None]
        scores_BxHxQxS = jnp.einsum("bhqk,bhsk->bhqs", q_BxHxTxK[:, :, start:stop],
                                    k_BxHxTxK[:, :, :stop])
        probs_BxHxQxS = dropout(_softmax_visible(scores_BxHxQxS, visible_1xQxS, q_BxHxTxK.shape[-1]))
        outs.append(jnp.einsum("bhqs,bhsk->bhqk", probs_BxHxQxS.astype(v_BxHxTxK.dtype),
                               v_BxHxTxK[:, :, :stop]))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)


class CausalSelfAttention(nn.Module):
    """Fused-QKV multi-head causal self-attention with an output projection.

    With `decode=True` the keys and values are also kept in a "cache" collection,
    one slot per position: a call writes its tokens' keys and values at their
    `positions_BxT` and lets each query see the slots at or before its position.
    So a prompt is read in one call (prefill) and each new token in one more, and
    rows of a batch may stand at different positions. The cache holds as many
    slots as the `model.init(..., decode=True)` call had tokens (see `init_cache`).
    """
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, deterministic: bool, decode: bool = False,
                 positions_BxT: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        # The QKV kernel is [D, 3, H, K] rather than [D, 3D]: naming the heads axis
        # lets tensor parallelism split whole heads instead of slicing across q/k/v.
        qkv_BxTx3xHxK = nn.DenseGeneral(
            features=(3, cfg.n_head, cfg.head_dim),
            dtype=dtype,
            kernel_init=_normal(cfg, "embed", None, "heads", "kv"),
            bias_init=_zeros(None, "heads", "kv"),
            dot_general=_dot_general(cfg),
            name="c_attn",
        )(x_BxTxD)
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))

        if decode:
            out_BxTxHxK = self._attend_through_cache(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, positions_BxT)
        elif cfg.attention == "einsum":
            q_BxHxTxK, k_BxHxTxK, v_BxHxTxK = (
                x.transpose(0, 2, 1, 3) for x in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK))
            out_BxHxTxK = causal_attention(
                q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, block=cfg.attention_block,
                dropout=lambda p: Dropout(cfg.attn_pdrop)(p, deterministic=deterministic))
            out_BxTxHxK = out_BxHxTxK.transpose(0, 2, 1, 3)
        else:
            if not deterministic and cfg.attn_pdrop > 0:
                raise ConfigError(
                    "model.attention='dot_product' cannot drop out attention probabilities; "
                    "set model.attn_pdrop=0 or use model.attention='einsum'")
            out_BxTxHxK = jax.nn.dot_product_attention(
                q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True,
                implementation=cfg.attention_backend)

        y_BxTxD = nn.DenseGeneral(
            features=cfg.d_model,
            axis=(-2, -1),
            dtype=dtype,
            kernel_init=_normal(cfg, "heads", "kv", "embed"),
            bias_init=_zeros("embed"),
            dot_general=_dot_general(cfg),
            name="c_proj",
        )(out_BxTxHxK)
        return Dropout(cfg.resid_pdrop)(y_BxTxD, deterministic=deterministic)

    def _attend_through_cache(self, q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, positions_BxT):
        # Created on the first (init) call with that call's shape: S = its T slots.
        cached_k = self.variable("cache", "key", jnp.zeros, k_BxTxHxK.shape, k_BxTxHxK.dtype)
        cached_v = self.variable("cache", "value", jnp.zeros, v_BxTxHxK.shape, v_BxTxHxK.dtype)
        rows_Bx1 = jnp.arange(positions_BxT.shape[0])[:, None]
        cached_k.value = cached_k.value.at[rows_Bx1, positions_BxT].set(k_BxTxHxK)
        cached_v.value = cached_v.value.at[rows_Bx1, positions_BxT].set(v_BxTxHxK)
        k_BxSxHxK, v_BxSxHxK = cached_k.value, cached_v.value
        # Slots after a query's position are stale or empty: a shorter row of a batch
        # leaves padding there, which its own later tokens overwrite before anyone sees it.
        slots_S = jnp.arange(k_BxSxHxK.shape[1])
        visible_BxTxS = slots_S[None, None, :] <= positions_BxT[:, :, None]
        probs_BxHxTxS = attention_weights(q_BxTxHxK, k_BxSxHxK, visible_BxTxS)
        return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)


class MLP(nn.Module):
    """Position-wise feed-forward: D -> F, tanh-GELU, F -> D."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h_BxTxF = nn.Dense(cfg.d_ff, dtype=dtype, kernel_init=_normal(cfg, "embed", "mlp"),
                           bias_init=_zeros("mlp"), dot_general=_dot_general(cfg), name="c_fc")(x_BxTxD)
        h_BxTxF = jax.nn.gelu(h_BxTxF, approximate=True)
        y_BxTxD = nn.Dense(cfg.d_model, dtype=dtype, kernel_init=_normal(cfg, "mlp", "embed"),
                           bias_init=_zeros("embed"), dot_general=_dot_general(cfg),
                           name="c_proj")(h_BxTxF)
        return Dropout(cfg.resid_pdrop)(y_BxTxD, deterministic=deterministic)


class Block(nn.Module):
    """One post-LN Transformer block."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, deterministic: bool, decode: bool = False,
                 positions_BxT: jax.Array | None = None) -> jax.Array:
        a_BxTxD = CausalSelfAttention(self.config, name="attn")(x_BxTxD, deterministic, decode,
                                                                positions_BxT)
        n_BxTxD = _layer_norm(self.config, "ln_1")(x_BxTxD + a_BxTxD)
        m_BxTxD = MLP(self.config, name="mlp")(n_BxTxD, deterministic)
        return _layer_norm(self.config, "ln_2")(n_BxTxD + m_BxTxD)


STACKED_BLOCKS = "h"  # the scanned block's name: params["h"] holds every layer, stacked


def _scan_blocks(n_layer: int):
    """`scanned(block, x_BxTxD, deterministic, decode, positions_BxT) -> x_BxTxD`: `block`
    applied `n_layer` times, each time with its own slice of the stacked parameters (and
    key/value cache), its own dropout keys; parameter boxes gain the "layers" axis first."""
    def body(block, x_BxTxD, deterministic, decode, positions_BxT):
        return block(x_BxTxD, deterministic, decode, positions_BxT), None

    scanned = nn.scan(body, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=n_layer,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    return lambda block, *args: scanned(block, *args)[0]


class GPT1(nn.Module):
    """GPT-1: token + position embeddings, `n_layer` post-LN blocks, tied output head.

    `__call__(tokens_BxT)` returns `(logits_BxTxV, hidden_BxTxD)`, the logits in float32
    over the token table (vocabulary and any specials). Pass `with_logits=False` to get
    only the hidden states (the head is the largest matmul of the model).

    `decode=True` (with `mutable=["cache"]`) reads tokens at `positions_BxT` against
    a key/value cache from `init_cache`, the incremental form `generate.py` uses.
    """
    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.tokens_embed = nn.Embed(
            cfg.embedding_rows, cfg.d_model, embedding_init=_normal(cfg, "vocab", "embed"),
            name="tokens_embed")
        self.positions_embed = nn.Embed(
            cfg.n_ctx, cfg.d_model, embedding_init=_normal(cfg, None, "embed"),
            name="positions_embed")
        self.embed_dropout = Dropout(cfg.embd_pdrop)
        block_cls = Block
        if cfg.remat == "block":
            block_cls = nn.remat(Block, static_argnums=(2, 3))
        elif cfg.remat == "dots":
            block_cls = nn.remat(Block, static_argnums=(2, 3),
                                 policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        if cfg.scan_layers:
            # The remat policy applies inside the scan, per block, as unrolled.
            self.stack = block_cls(cfg, name=STACKED_BLOCKS)
        else:
            self.blocks = [block_cls(cfg, name=f"h_{i}") for i in range(cfg.n_layer)]

    def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True,
                 positions_BxT: jax.Array | None = None, with_logits: bool = True,
                 decode: bool = False):
        cfg = self.config
        t = tokens_BxT.shape[1]
        if t > cfg.n_ctx:
            raise ConfigError(f"sequence length {t} exceeds model.n_ctx={cfg.n_ctx}")
        if positions_BxT is None:
            positions_BxT = jnp.arange(t)[None, :]
        if decode:
            # The positions also name the cache slots each row writes, so one per token.
            positions_BxT = jnp.broadcast_to(positions_BxT, tokens_BxT.shape)
        x_BxTxD = self.tokens_embed(tokens_BxT) + self.positions_embed(positions_BxT)
        # HF-style dropout of the summed embeddings; the released TF code instead drops
        # rows of the whole table (train.py:165), which also perturbs the tied head.
        x_BxTxD = self.embed_dropout(x_BxTxD, deterministic=deterministic).astype(jnp.dtype(cfg.dtype))
        if cfg.scan_layers:
            x_BxTxD = _scan_blocks(cfg.n_layer)(self.stack, x_BxTxD, deterministic, decode,
                                                positions_BxT if decode else None)
        else:
            for block in self.blocks:
                x_BxTxD = block(x_BxTxD, deterministic, decode, positions_BxT if decode else None)
        if not with_logits:
            return None, x_BxTxD
        return self.logits(x_BxTxD), x_BxTxD

    def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
        """The tied output head: hidden states times the token table, in float32."""
        table_VxD = self.tokens_embed.embedding.astype(hidden_BxTxD.dtype)
        return jnp.einsum("btd,vd->btv", hidden_BxTxD, table_VxD,
                          preferred_element_type=jnp.float32)


def init_params_fn(model: nn.Module, n_ctx: int):
    """`init(rng) -> boxed params` (with logical axis names) for the trainer."""
    def init(rng):
        return model.init(rng, jnp.zeros((1, n_ctx), jnp.int32))["params"]
    return init


def abstract_of(init, sharding=None):
    """Shapes and dtypes of the parameters `init(rng)` makes (unboxed), without allocating them;
    each leaf carries `sharding` when given (e.g. one local device for a converter)."""
    boxed = jax.eval_shape(init, jax.random.key(0))
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                                  nn.meta.unbox(boxed))


def abstract_params(config: ModelConfig, sharding=None):
    """`abstract_of` the language model `config` describes."""
    return abstract_of(init_params_fn(GPT1(config), 1), sharding)


def lm_loss_fn(model: GPT1):
    """`loss_fn(params, tokens_BxT1, rng, deterministic) -> (loss, {})`: the mean next-token
    cross-entropy of windows `tokens_BxT1` (inputs [:, :-1], targets [:, 1:])."""
    def loss_fn(params, tokens_BxT1, rng, deterministic):
        inputs_BxT, targets_BxT = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
        rngs = None if deterministic else {"dropout": rng}
        logits_BxTxV, _ = model.apply({"params": params}, inputs_BxT,
                                      deterministic=deterministic, rngs=rngs)
        losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
        return jnp.mean(losses_BxT), {}
    return loss_fn


def count_params(params) -> int:
    """Number of scalars in a parameter tree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def stack_layers(params, n_layer: int | None = None):
    """Per-layer parameters ("h_0" ... "h_{n-1}") in the `scan_layers=True` layout: one
    "h" subtree whose leaves gain a leading axis of n_layer. Other entries are kept."""
    n_layer = n_layer if n_layer is not None else sum(1 for k in params if _layer_index(k) is not None)
    layers = [params[f"h_{i}"] for i in range(n_layer)]
    rest = {k: v for k, v in params.items() if _layer_index(k) is None}
    return {**rest, STACKED_BLOCKS: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(params):
    """The inverse of `stack_layers`: "h" (leaves [n_layer, ...]) into "h_0" ... "h_{n-1}"."""
    stacked = params[STACKED_BLOCKS]
    n_layer = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != STACKED_BLOCKS}
    return {**rest, **{f"h_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
                       for i in range(n_layer)}}


def per_layer_params(params):
    """`params` in the per-layer layout whichever layout they are in (exports, conversion,
    decoding with a per-layer config)."""
    return unstack_layers(params) if STACKED_BLOCKS in params else params


def _layer_index(key: str) -> int | None:
    prefix, _, index = key.partition("_")
    return int(index) if prefix == "h" and index.isdigit() else None


def init_cache(config: ModelConfig, batch_size: int, length: int):
    """An empty key/value cache of `length` slots (positions 0..length-1) per row, for
    `GPT1.apply({"params": ..., "cache": cache}, ..., decode=True, mutable=["cache"])`."""
    model = GPT1(config)
    tokens_BxS = jnp.zeros((batch_size, length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BxS, decode=True)["cache"])
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
