"""Where a train step's time goes: a jax.profiler trace, summed per part of the model.

XLA names each executed op after an HLO instruction (`fusion.12`, `dot.3`); the compiled
module's text maps that instruction to the JAX source it came from (`metadata={op_name=
"jit(step)/transpose(jvp(GPT1))/h_3/mlp/c_fc/dot_general"}`). `categorize` turns such an
op_name into a part of the model (the vocabulary projection, attention softmax, LayerNorm,
the optimizer, ...) and whether it ran in the backward pass, and `summarize` adds up the
traced time of each part.

`summarize_torch` does the same for the HF PyTorch reference from torch.profiler's per-op
table (aten ops carry no module path, so its parts are kinds of op: linear layers, batched
attention matmuls, softmax, LayerNorm, dropout, ...), so both sides of one bench run can be
read side by side.

Used by `python -m gpt1_jax.cli.bench --profile=DIR`.
"""
import collections
import gzip
import json
import pathlib
import re

# (part, test on the op_name), first match wins; the module names are model.py's.
_PARTS = (
    ("dropout random bits", lambda op: "random_bits" in op or "threefry" in op),
    ("dropout", lambda op: "Dropout" in op),
    ("vocabulary projection", lambda op: "GPT1.logits" in op),
    ("embeddings", lambda op: "tokens_embed" in op or "positions_embed" in op),
    ("layernorm", lambda op: "/ln_" in op),
    ("attention qkv projection", lambda op: "attn/c_attn" in op),
    ("attention output projection", lambda op: "attn/c_proj" in op),
    # Training's head-major einsums (model.causal_attention), then decoding's.
    ("attention scores", lambda op: "bhqk,bhsk->bhqs" in op or "bqhk,bshk" in op),
    ("attention probs x values", lambda op: "bhqs,bhsk->bhqk" in op or "bhqs,bshk" in op),
    ("attention softmax and mask", lambda op: "/attn/" in op),
    ("mlp matmuls", lambda op: "mlp/c_fc" in op or "mlp/c_proj" in op),
    ("gelu", lambda op: "/mlp/" in op),
    ("loss (softmax cross-entropy)", lambda op: "jvp()" in op or "cross_entropy" in op),
    ("model (other)", lambda op: "GPT1" in op),
)
OPTIMIZER = "optimizer, clipping, guard"
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name="([^"]*)"', re.M)
# Runtime bookkeeping events that enclose the ops rather than being ops.
_NOT_OPS = ("ThunkExecutor", "PjitFunction", "PjRt", "SlinkyThreadPool", "ExecuteHelper")


def categorize(op_name: str) -> str:
    """'jit(step)/transpose(jvp(GPT1))/h_0/mlp/c_fc/dot_general' -> 'mlp matmuls [backward]'."""
    for part, matches in _PARTS:
        if matches(op_name):
            return part + (" [backward]" if "transpose(" in op_name else "")
    return OPTIMIZER


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the op_name of the JAX code it came from."""
    return {m.group(1): m.group(2) for m in _INSTRUCTION.finditer(hlo_text)}


def trace_events(trace_dir) -> list[dict]:
    """The complete ('X') events of the newest trace under `trace_dir`."""
    traces = sorted(pathlib.Path(trace_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(traces[-1]) as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def summarize(events: list[dict], names: dict[str, str]) -> dict:
    """Traced op time per part of the model, largest first.

    Returns {"total_ms", "parts": [{"part", "ms", "percent"}], "top_ops": [...10 largest],
    "unattributed_ms"}: an op is attributed when its event name is an instruction of the
    compiled module; the rest (copies XLA added, runtime work) is `unattributed_ms`.
    """
    per_part = collections.Counter()
    per_op = collections.Counter()
    unattributed = 0.0
    for event in events:
        name = event["name"]
        if name.startswith("$") or any(marker in name for marker in _NOT_OPS):
            continue
        micros = float(event.get("dur", 0.0))
        if name in names:
            per_part[categorize(names[name])] += micros
            per_op[(name, names[name])] += micros
        else:
            unattributed += micros
    return _summary(per_part, per_op, unattributed)


def _summary(per_part: collections.Counter, per_op: collections.Counter, unattributed: float) -> dict:
    """The summary both sides share, from microseconds per part and per (op, source)."""
    total = sum(per_part.values()) + unattributed
    as_ms = lambda micros: round(micros / 1e3, 3)
    return {
        "total_ms": as_ms(total),
        "parts": [{"part": part, "ms": as_ms(t), "percent": round(100 * t / total, 1) if total else 0.0}
                  for part, t in per_part.most_common()],
        "top_ops": [{"op": op, "source": source, "ms": as_ms(t)}
                    for (op, source), t in per_op.most_common(10)],
        "unattributed_ms": as_ms(unattributed),
    }


def format_table(summary: dict, rows: int = 12) -> str:
    lines = [f"{'ms':>9}  {'%':>5}  part (total {summary['total_ms']:.0f} ms of traced ops)"]
    for row in summary["parts"][:rows]:
        lines.append(f"{row['ms']:9.1f}  {row['percent']:5.1f}  {row['part']}")
    lines.append(f"{summary['unattributed_ms']:9.1f}         unattributed (copies, runtime)")
    return "\n".join(lines)


# torch.profiler op name -> part, for the HF reference (first match wins). HF's OpenAIGPT
# computes every projection (QKV, attention output, MLP) with Conv1D = addmm, the attention
# scores and probs x values with matmul -> bmm, and the tied head with a plain matmul (mm).
_TORCH_PARTS = (
    ("dropout", ("dropout", "bernoulli")),
    ("attention matmuls (bmm)", ("bmm", "baddbmm")),
    ("linear layers and head (mm/addmm)", ("addmm", "aten::mm", "aten::linear")),
    ("softmax", ("softmax",)),
    ("layernorm", ("layer_norm",)),
    ("loss (cross-entropy)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("gelu (tanh, pow, ...)", ("tanh", "pow")),
    ("optimizer, clipping", ("adam", "_foreach", "norm", "clip")),
    ("embeddings", ("embedding",)),
    ("copies and layout", ("copy_", "clone", "contiguous", "cat", "transpose", "permute", "view",
                           "reshape", "as_strided", "empty", "zero_", "fill_", "where")),
)


def summarize_torch(op_self_micros: dict[str, float]) -> dict:
    """{aten op: self CPU microseconds} (torch.profiler's key_averages) -> the same summary
    as `summarize`: time per part, largest first, and the 10 largest ops."""
    per_part = collections.Counter()
    for name, micros in op_self_micros.items():
        lowered = name.lower()
        part = next((part for part, keys in _TORCH_PARTS if any(k in lowered for k in keys)),
                    "elementwise and other")
        per_part[part + (" [backward]" if "backward" in lowered else "")] += micros
    per_op = collections.Counter({(name, "torch"): micros for name, micros in op_self_micros.items()})
    return _summary(per_part, per_op, 0.0)
