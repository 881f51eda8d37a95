"""Training throughput against the HF PyTorch reference, at the same shape, in one run.

    python -m gpt1_jax.bench --shape=small --reference=hf --out=bench_small.json
    python -m gpt1_jax.bench --shape=gpt1 --reference=hf --out=bench_gpt1.json

Each side trains in its own fresh process, so its peak memory is its own: the project
runs the real `trainer.make_train_step` (loss, gradients, non-finite guard, clipped
AdamW, donated state); the reference runs transformers' `OpenAIGPTLMHeadModel` with
`torch.optim.AdamW` (same lr, betas, eps, weight decay on the same tensors, clipping at
1), in train mode with the same dropout. Both use the same number of threads (the
cores this process may run on), random tokens, `--warmup` untimed steps and then
`--steps` timed ones; each step is waited for before the next starts.

The sides alternate, `--repeats` times (project, reference, reference, project, ...), so
a machine that slows down or speeds up part way through affects both alike; the
reported figures are medians over the repeats, and `ratio` is the project's tokens/s
over the reference's. Peak memory is the process's peak resident set on CPU (which
includes the framework itself: each process's resident set just after its imports is
reported as `baseline_memory_bytes`), and the device's peak allocation on a GPU.
MFU uses `reporting.flops_per_token` and the device's peak from `reporting.py`.

Shapes: `small` = 6 layers, width 384, 6 heads, FFN 1536, vocabulary 8192, 256 tokens,
batch 8; `gpt1` = the paper's model (12 x 768, 40,478 tokens, 512 positions), batch 2
on a CPU and 64 on an accelerator. float32 unless `--dtype=bfloat16` (the project
computes in bf16 with float32 parameters; the reference runs under torch.autocast).

`--profile=DIR` also traces two of the project's steps (after the timed ones, so the
timing is unaffected) and prints the time per part of the model (profiling.py): the
vocabulary projection, the MLP and attention matmuls, softmax, LayerNorm, dropout, the
optimizer. `--attention_block=0` measures full T x T attention instead of the block-causal one.
"""
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

SHAPES = {
    "small": dict(n_layer=6, d_model=384, n_head=6, d_ff=1536, vocab_size=8192, n_ctx=256,
                  batch_cpu=8, batch_accelerator=8),
    "gpt1": dict(n_layer=12, d_model=768, n_head=12, d_ff=3072, vocab_size=40478, n_ctx=512,
                 batch_cpu=2, batch_accelerator=64),
    # For the tests: the whole benchmark in seconds.
    "tiny": dict(n_layer=2, d_model=64, n_head=2, d_ff=256, vocab_size=512, n_ctx=32,
                 batch_cpu=2, batch_accelerator=2),
}
# The paper's optimiser (optim.py); the reference is given the same values.
LEARNING_RATE, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM, DROPOUT = 2.5e-4, (0.9, 0.999), 1e-8, 0.01, 1.0, 0.1

_SHAPE = flags.DEFINE_enum("shape", "small", list(SHAPES), "Model and batch shape.")
_REFERENCE = flags.DEFINE_enum("reference", "hf", ["hf", "none"], "What to compare against.")
_OUT = flags.DEFINE_string("out", None, "Write the results here as JSON (also printed).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "0: the shape's batch for this backend.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_ATTENTION = flags.DEFINE_enum("attention", "einsum", ["einsum", "dot_product"],
                               "The project's attention (dot_product needs --dropout=0).")
_BACKEND = flags.DEFINE_string("attention_backend", None, "dot_product: None, xla or cudnn.")
_REMAT = flags.DEFINE_string("remat", "none", "The project's model.remat.")
_BLOCK = flags.DEFINE_integer("attention_block", 64, "The project's model.attention_block (0: one block).")
_DROPOUT = flags.DEFINE_float("dropout", DROPOUT, "All dropout rates, both sides.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation, allocator warm-up).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs of each side, alternating.")
_PROFILE = flags.DEFINE_string(
    "profile", None, "Also trace 2 project steps into this directory and print where the time "
    "goes, per part of the model (profiling.py); written to DIR/profile.json.")
_WORKER = flags.DEFINE_enum("worker", None, ["project", "hf"], "Internal: run one side here.")


def threads() -> int:
    """The cores this process may use: both sides get this many."""
    return len(os.sched_getaffinity(0))


def _rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux: the peak resident set of this process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed_steps(run_step, wait, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        wait(run_step())
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        wait(run_step())
        times.append(time.perf_counter() - started)
    return times


def _random_batches(vocab: int, batch: int, length: int, count: int = 4):
    import numpy as np
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, (batch, length), dtype=np.int32) for _ in range(count)]


def project_worker(shape: dict, batch: int) -> dict:
    """Trains the project's model with the real train step; returns timings and memory.

    `batch` 0 picks the shape's batch for this backend (reported back as `batch_size`).
    """
    import jax

    from gpt1_jax import model as model_lib
    from gpt1_jax import optim, pretrain, reporting, trainer
    from gpt1_jax import sharding as sharding_lib
    baseline = _rss_bytes()
    device = jax.devices()[0]
    batch = batch or shape["batch_cpu" if device.platform == "cpu" else "batch_accelerator"]

    cfg = model_lib.ModelConfig(
        vocab_size=shape["vocab_size"], n_ctx=shape["n_ctx"], n_layer=shape["n_layer"],
        n_head=shape["n_head"], d_model=shape["d_model"], d_ff=shape["d_ff"],
        embd_pdrop=_DROPOUT.value, attn_pdrop=_DROPOUT.value, resid_pdrop=_DROPOUT.value,
        attention=_ATTENTION.value, attention_backend=_BACKEND.value, dtype=_DTYPE.value,
        remat=_REMAT.value, attention_block=_BLOCK.value)
    model = model_lib.GPT1(cfg)
    ocfg = optim.OptimizerConfig(learning_rate=LEARNING_RATE, warmup_steps=0, total_steps=10_000,
                                 b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY,
                                 max_grad_norm=MAX_GRAD_NORM)
    tx = optim.make_optimizer(ocfg)
    mesh = sharding_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, [device])
    rules = sharding_lib.DEFAULT_RULES
    init = pretrain.init_params_fn(model, cfg.n_ctx)
    rng = jax.random.key(0)
    _, shardings = trainer.state_shardings(init, tx, rng, mesh, rules)
    batch_shard = sharding_lib.batch_sharding(mesh, rules)
    state = trainer.create_train_state(init, tx, rng, shardings)
    train_step = trainer.make_train_step(pretrain.lm_loss_fn(model), tx,
                                         optim.learning_rate_schedule(ocfg), shardings, batch_shard)
    batches = [jax.device_put(b, batch_shard)
               for b in _random_batches(cfg.vocab_size, batch, cfg.n_ctx + 1)]
    holder = {"state": state, "i": 0, "metrics": None}

    def run_step():
        holder["state"], holder["metrics"] = train_step(holder["state"],
                                                        batches[holder["i"] % len(batches)])
        holder["i"] += 1
        return holder["state"], holder["metrics"]

    times = _timed_steps(run_step, jax.block_until_ready, _WARMUP.value, _STEPS.value)
    if _PROFILE.value:
        _profile(train_step, holder, batches[0], run_step, _PROFILE.value)
    loss = float(holder["metrics"]["loss"])
    if device.platform == "cpu":
        peak = _rss_bytes()
    else:
        peak = int((device.memory_stats() or {}).get("peak_bytes_in_use", 0))
    return {"step_times": times, "peak_memory_bytes": peak, "baseline_memory_bytes": baseline,
            "device_kind": f"{device.platform} {device.device_kind}", "loss": loss,
            "num_params": model_lib.count_params(holder["state"].params), "batch_size": batch,
            "peak_flops": reporting.peak_flops_per_device(device=device)}


def _profile(train_step, holder, batch, run_step, out_dir: str) -> None:
    """Traces 2 more steps; writes the time per part of the model to out_dir/profile.json."""
    import jax

    from gpt1_jax import profiling
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hlo_text = train_step.lower(holder["state"], batch).compile().as_text()
    jax.profiler.start_trace(str(out))
    for _ in range(2):
        jax.block_until_ready(run_step())
    jax.profiler.stop_trace()
    summary = profiling.summarize(profiling.trace_events(out), profiling.op_names(hlo_text))
    (out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")


def hf_worker(shape: dict, batch: int) -> dict:
    """Trains transformers' OpenAIGPTLMHeadModel with torch.optim.AdamW at the same shape."""
    import torch
    import transformers
    baseline = _rss_bytes()
    torch.set_num_threads(threads())
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    batch = batch or shape["batch_accelerator" if cuda else "batch_cpu"]
    device = torch.device("cuda" if cuda else "cpu")
    config = transformers.OpenAIGPTConfig(
        vocab_size=shape["vocab_size"], n_positions=shape["n_ctx"], n_embd=shape["d_model"],
        n_layer=shape["n_layer"], n_head=shape["n_head"], afn="gelu",  # tanh-GELU, as GPT-1
        embd_pdrop=_DROPOUT.value, attn_pdrop=_DROPOUT.value, resid_pdrop=_DROPOUT.value)
    assert config.n_embd * 4 == shape["d_ff"], "HF's OpenAIGPT fixes the FFN at 4 x width"
    model = transformers.OpenAIGPTLMHeadModel(config).to(device).train()
    # The project's decay mask (optim.decay_mask): kernels and embeddings, not biases or LN.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=LEARNING_RATE, betas=BETAS, eps=EPS)
    batches = [torch.from_numpy(b).long().to(device)
               for b in _random_batches(config.vocab_size, batch, shape["n_ctx"])]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=_DTYPE.value == "bfloat16")
    holder = {"i": 0, "loss": None}

    def run_step():
        tokens_BxT = batches[holder["i"] % len(batches)]
        holder["i"] += 1
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=tokens_BxT, labels=tokens_BxT).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        holder["loss"] = loss
        return loss

    def wait(loss):
        if cuda:
            torch.cuda.synchronize()
        loss.item()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = _timed_steps(run_step, wait, _WARMUP.value, _STEPS.value)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_bytes()
    kind = f"gpu {torch.cuda.get_device_name()}" if cuda else "cpu"
    return {"step_times": times, "peak_memory_bytes": int(peak), "baseline_memory_bytes": baseline,
            "device_kind": kind, "loss": float(holder["loss"]),
            "num_params": sum(p.numel() for p in model.parameters())}


def _run_worker(side: str, batch: int) -> dict:
    """One side in a fresh process; its last stdout line is its JSON result."""
    argv = [sys.executable, "-m", "gpt1_jax.bench", f"--worker={side}", f"--shape={_SHAPE.value}",
            f"--batch_size={batch}", f"--dtype={_DTYPE.value}", f"--attention={_ATTENTION.value}",
            f"--remat={_REMAT.value}", f"--attention_block={_BLOCK.value}",
            f"--dropout={_DROPOUT.value}", f"--warmup={_WARMUP.value}",
            f"--steps={_STEPS.value}"]
    if _BACKEND.value:
        argv.append(f"--attention_backend={_BACKEND.value}")
    if _PROFILE.value and side == "project":
        argv.append(f"--profile={_PROFILE.value}")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {side} benchmark failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict], tokens_per_step: int, flops_per_token: float, peak_flops: float) -> dict:
    # Each run's median step; then the median over runs.
    step_time = statistics.median(statistics.median(r["step_times"]) for r in runs)
    tokens_per_sec = tokens_per_step / step_time
    return {
        "tokens_per_sec": tokens_per_sec,
        "step_time_sec": step_time,
        "mfu": tokens_per_sec * flops_per_token / peak_flops if peak_flops else None,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in runs),
        "baseline_memory_bytes": max(r["baseline_memory_bytes"] for r in runs),
        "tokens_per_sec_per_run": [tokens_per_step / statistics.median(r["step_times"]) for r in runs],
        "device_kind": runs[0]["device_kind"],
        "num_params": runs[0]["num_params"],
        "final_loss": runs[-1]["loss"],
    }


def benchmark() -> dict:
    """Alternating runs of both sides; medians, MFU and the ratio.

    This process starts no JAX backend (on a GPU it would hold memory the workers need):
    the first project run reports the batch and the device's peak FLOP/s.
    """
    from gpt1_jax import reporting
    shape = SHAPES[_SHAPE.value]
    batch = _BATCH.value
    sides = ["project"] + (["hf"] if _REFERENCE.value == "hf" else [])
    runs = {side: [] for side in sides}
    for repeat in range(_REPEATS.value):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            runs[side].append(_run_worker(side, batch))
            batch = batch or runs[side][-1]["batch_size"]
            print(f"[bench] {side} run {repeat + 1}: "
                  f"{statistics.median(runs[side][-1]['step_times']):.3f} s/step", file=sys.stderr)

    tokens_per_step = batch * shape["n_ctx"]
    flops = reporting.flops_per_token(shape["n_layer"], shape["d_model"], shape["d_ff"],
                                      shape["vocab_size"], shape["n_ctx"])
    peak = runs["project"][0]["peak_flops"]
    result = {
        "shape": _SHAPE.value,
        **{k: v for k, v in shape.items() if not k.startswith("batch_")},
        "batch_size": batch,
        "dtype": _DTYPE.value,
        "attention": _ATTENTION.value,
        "remat": _REMAT.value,
        "attention_block": _BLOCK.value,
        "dropout": _DROPOUT.value,
        "threads": threads(),
        "warmup_steps": _WARMUP.value,
        "timed_steps": _STEPS.value,
        "repeats": _REPEATS.value,
        "flops_per_token": flops,
        "peak_flops": peak,
        **_summary(runs["project"], tokens_per_step, flops, peak),
    }
    if "hf" in runs:
        reference = _summary(runs["hf"], tokens_per_step, flops, peak)
        result["reference"] = {"name": "transformers OpenAIGPTLMHeadModel + torch.optim.AdamW",
                               **reference}
        result["ratio"] = result["tokens_per_sec"] / reference["tokens_per_sec"]
        result["ratio_per_repeat"] = [p / r for p, r in zip(result["tokens_per_sec_per_run"],
                                                             reference["tokens_per_sec_per_run"])]
        result["memory_ratio"] = result["peak_memory_bytes"] / reference["peak_memory_bytes"]
    return result


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKER.value:
        # Nothing of the other side is imported here: its memory would count as ours.
        worker = project_worker if _WORKER.value == "project" else hf_worker
        print(json.dumps(worker(SHAPES[_SHAPE.value], _BATCH.value)))
        return
    result = benchmark()
    if _PROFILE.value:
        from gpt1_jax import profiling
        profile = json.loads((pathlib.Path(_PROFILE.value) / "profile.json").read_text())
        result["profile"] = profile["parts"]
        print(profiling.format_table(profile), file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
