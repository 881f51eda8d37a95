"""Training throughput against the HF PyTorch reference, at the same shape, in one run.

    python -m gpt1_jax.cli.bench --shape=small --reference=hf --out=bench_small.json
    python -m gpt1_jax.cli.bench --shape=gpt1 --reference=hf --out=bench_gpt1.json

Each side trains in its own fresh process, so its peak memory is its own: the project
runs the real `train_state.make_train_step` (loss, gradients, non-finite guard, clipped
AdamW, donated state); the reference runs transformers' `OpenAIGPTLMHeadModel` with
`torch.optim.AdamW` (same lr, betas, eps, weight decay on the same tensors, clipping at
1), in train mode with the same dropout. Both use the same number of threads (the
cores this process may run on), random tokens, `--warmup` untimed steps and then
`--steps` timed ones; each step is waited for before the next starts.

Both sides are started, set up and warmed up first, and then take turns: a turn is one
untimed step and then `--turn_steps` timed ones of the same side. The untimed step
absorbs what the switch costs (measured here: a step right after the other process's
runs up to 12% slower, whichever side it is, while its threads wind down and caches
refill), so the timed steps are steady-state training steps, as in a real run. Taking
turns means a machine that speeds up or slows down part way through (a shared host
does, by 10% and more over a minute) affects both sides alike. The reported step times
are medians over `--steps` timed steps, `ratio` is the project's tokens/s over the
reference's, and `ratio_per_turn` the same for each pair of neighbouring turns. Peak
memory is each process's own peak resident set on CPU (which includes the framework
itself: each process's resident set just after its imports is reported as
`baseline_memory_bytes`), and the device's peak allocation on a GPU (JAX is then told
not to preallocate, so that both processes fit on one device).

Each side also times its own runtime's plain matmul (`matmul_flops_per_sec`: the best of
several N x N x N products in the bench's dtype, after the timed steps). On a CPU the two
libraries differ most there, and by CPU model: on a Zen 5 EPYC (family 26), XLA's
AVX-512 kernels ran at 420 GFLOP/s and torch's MKL at 190, on a Zen 4 at about 185 each,
so `matmul_ratio` beside `ratio` says how much of the ratio is the machine's BLAS. MFU
uses `reporting.flops_per_token`; its peak is the faster side's measured matmul rate on
a CPU (no table can know which CPU this is), and the device's entry in `reporting.py`
on an accelerator.

Shapes: `small` = 6 layers, width 384, 6 heads, FFN 1536, vocabulary 8192, 256 tokens,
batch 8; `gpt1` = the paper's model (12 x 768, 40,478 tokens, 512 positions), batch 2
on a CPU and 64 on an accelerator. float32 unless `--dtype=bfloat16` (the project
computes in bf16 with float32 parameters; the reference runs under torch.autocast).

`--profile=DIR` also traces two more steps of each side (after the timed ones, so the
timing is unaffected) and prints where each spends its time (profiling.py): the project's
per part of the model (the vocabulary projection, the MLP and attention matmuls, softmax,
LayerNorm, dropout, the optimizer), the reference's per kind of aten op (torch.profiler).
`--attention_block=0` measures full T x T attention instead of the block-causal one.
"""
import dataclasses
import importlib.metadata
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from gpt1_jax.tools import machine

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



@dataclasses.dataclass(frozen=True)
class Options:
    """What to measure (the command line's flags, gpt1_jax/cli/bench.py)."""
    shape: str = "small"
    reference: str = "hf"            # or "none"
    batch_size: int = 0              # 0: the shape's batch for this backend
    dtype: str = "float32"
    # A string the model checks (model.ATTENTION_IMPLEMENTATIONS): importing the model here
    # would load JAX into the reference's process too, and into its baseline memory.
    attention: str = "einsum"
    attention_backend: str | None = None
    remat: str = "none"
    attention_block: int = 64
    dropout: float = DROPOUT
    warmup: int = 2
    steps: int = 12
    turn_steps: int = 2
    profile: str | None = None

    def worker_flags(self, side: str, batch: int) -> list[str]:
        """The command line of one side's worker process."""
        argv = [f"--worker={side}", f"--shape={self.shape}", f"--batch_size={batch}", f"--dtype={self.dtype}",
                f"--attention={self.attention}", f"--remat={self.remat}",
                f"--attention_block={self.attention_block}", f"--dropout={self.dropout}"]
        if self.attention_backend:
            argv.append(f"--attention_backend={self.attention_backend}")
        if self.profile:
            argv.append(f"--profile={self.profile}")
        return argv


def threads() -> int:
    """The cores this process may use: both sides get this many."""
    return len(os.sched_getaffinity(0))


def _rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux: the peak resident set of this process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _random_batches(vocab: int, batch: int, length: int, count: int = 4):
    import numpy as np
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, (batch, length), dtype=np.int32) for _ in range(count)]


class Session:
    """One side, set up for `batch_size` rows: `step()` runs one train step and waits for
    it; `report()` says what was trained and the process's peak memory."""

    def __init__(self, batch_size: int, run_step, wait, report):
        self.batch_size = batch_size
        self._run_step, self._wait, self.report = run_step, wait, report

    def step(self) -> float:
        return _seconds(lambda: self._wait(self._run_step()))


def project_session(opts: Options) -> Session:
    """The project's model with the real train step.

    `opts.batch_size` 0 picks the shape's batch for this backend (reported back as `batch_size`).
    """
    import jax

    from gpt1_jax import model as model_lib
    from gpt1_jax import optim, reporting
    from gpt1_jax import sharding as sharding_lib
    from gpt1_jax.train import run_setup as run_setup_lib
    baseline = _rss_bytes()
    shape = SHAPES[opts.shape]
    device = jax.devices()[0]
    batch = opts.batch_size or shape["batch_cpu" if device.platform == "cpu" else "batch_accelerator"]

    cfg = model_lib.ModelConfig(
        vocab_size=shape["vocab_size"], n_ctx=shape["n_ctx"], n_layer=shape["n_layer"],
        n_head=shape["n_head"], d_model=shape["d_model"], d_ff=shape["d_ff"],
        embd_pdrop=opts.dropout, attn_pdrop=opts.dropout, resid_pdrop=opts.dropout,
        attention=opts.attention, attention_backend=opts.attention_backend, dtype=opts.dtype,
        remat=opts.remat, attention_block=opts.attention_block)
    model = model_lib.GPT1(cfg)
    ocfg = optim.OptimizerConfig(learning_rate=LEARNING_RATE, warmup_steps=0, total_steps=10_000,
                                 b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY,
                                 max_grad_norm=MAX_GRAD_NORM)
    tx = optim.make_optimizer(ocfg)
    # The jobs' own run setup (no workdir: nothing is checkpointed), on this one device.
    run = run_setup_lib.setup_run(
        run_setup_lib.RunSetup(mesh={"data": 1, "fsdp": 1, "tensor": 1}, rules=sharding_lib.DEFAULT_RULES,
                         batch_size=batch), model_lib.init_params_fn(model, cfg.n_ctx),
        model_lib.lm_loss_fn(model), tx, optim.learning_rate_schedule(ocfg), devices=[device])
    train_step = run.train_step
    batches = [jax.device_put(b, run.batch_sharding)
               for b in _random_batches(cfg.vocab_size, batch, cfg.n_ctx + 1)]
    holder = {"state": run.state, "i": 0, "metrics": None}

    def run_step():
        holder["state"], holder["metrics"] = train_step(holder["state"],
                                                        batches[holder["i"] % len(batches)])
        holder["i"] += 1
        return holder["state"], holder["metrics"]

    def report() -> dict:
        matmul_rate = _project_matmul_rate(device, opts.dtype)
        if opts.profile:
            _profile(train_step, holder, batches[0], run_step, opts.profile)
        if device.platform == "cpu":
            peak = _rss_bytes()
        else:
            peak = int((device.memory_stats() or {}).get("peak_bytes_in_use", 0))
        return {"peak_memory_bytes": peak, "baseline_memory_bytes": baseline,
                "device_kind": f"{device.platform} {device.device_kind}",
                "loss": float(holder["metrics"]["loss"]),
                "num_params": model_lib.count_params(holder["state"].params), "batch_size": batch,
                "peak_flops": reporting.peak_flops_per_device(device=device),
                "matmul_flops_per_sec": matmul_rate,
                "runtime": {"jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"),
                            "backend": jax.default_backend(),
                            "xla_flags": os.environ.get("XLA_FLAGS", "")}}

    return Session(batch, run_step, jax.block_until_ready, report)


def best_flops_per_sec(run_once, n: int, repeats: int = 8) -> float:
    """2 n^3 over the fastest of `repeats` calls of `run_once` (an n x n x n matmul that
    returns when done), after one untimed call."""
    run_once()
    fastest = min(_seconds(run_once) for _ in range(repeats))
    return 2 * n ** 3 / fastest


def _seconds(run_once) -> float:
    started = time.perf_counter()
    run_once()
    return time.perf_counter() - started


def matmul_size(accelerator: bool) -> int:
    """Large enough to run at the library's full speed, small enough to take well under a
    second (2048: about 0.1 s on 2 CPU cores)."""
    return 8192 if accelerator else 2048


def _project_matmul_rate(device, dtype: str) -> float:
    import jax
    import jax.numpy as jnp
    n = matmul_size(accelerator=device.platform != "cpu")
    a, b = (jax.device_put(jax.random.normal(jax.random.key(i), (n, n), dtype), device)
            for i in range(2))
    matmul = jax.jit(jnp.matmul)
    return best_flops_per_sec(lambda: matmul(a, b).block_until_ready(), n)


def _profile(train_step, holder, batch, run_step, out_dir: str) -> None:
    """Traces 2 more steps; writes the time per part of the model to out_dir/profile.json."""
    import jax

    from gpt1_jax.tools import profiling
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hlo_text = train_step.lower(holder["state"], batch).compile().as_text()
    jax.profiler.start_trace(str(out))
    for _ in range(2):
        jax.block_until_ready(run_step())
    jax.profiler.stop_trace()
    summary = profiling.summarize(profiling.trace_events(out), profiling.op_names(hlo_text))
    _write_profile(out, "profile.json", summary)


def _write_profile(out_dir, file_name: str, summary: dict) -> None:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / file_name).write_text(json.dumps(summary, indent=2) + "\n")


def hf_session(opts: Options) -> Session:
    """transformers' OpenAIGPTLMHeadModel with torch.optim.AdamW at the same shape."""
    import torch
    import transformers
    baseline = _rss_bytes()
    shape = SHAPES[opts.shape]
    torch.set_num_threads(threads())
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    batch = opts.batch_size or shape["batch_accelerator" if cuda else "batch_cpu"]
    device = torch.device("cuda" if cuda else "cpu")
    config = transformers.OpenAIGPTConfig(
        vocab_size=shape["vocab_size"], n_positions=shape["n_ctx"], n_embd=shape["d_model"],
        n_layer=shape["n_layer"], n_head=shape["n_head"], afn="gelu",  # tanh-GELU, as GPT-1
        embd_pdrop=opts.dropout, attn_pdrop=opts.dropout, resid_pdrop=opts.dropout)
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
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.dtype == "bfloat16")
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

    def report() -> dict:
        peak = torch.cuda.max_memory_allocated() if cuda else _rss_bytes()
        matmul_rate = _torch_matmul_rate(device, opts.dtype)
        if opts.profile:
            _profile_torch(run_step, wait, opts.profile)
        kind = f"gpu {torch.cuda.get_device_name()}" if cuda else "cpu"
        return {"peak_memory_bytes": int(peak), "baseline_memory_bytes": baseline,
                "device_kind": kind, "loss": float(holder["loss"]), "batch_size": batch,
                "matmul_flops_per_sec": matmul_rate,
                "num_params": sum(p.numel() for p in model.parameters()),
                "runtime": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "mkl": torch.backends.mkl.is_available(),
                            "mkldnn": torch.backends.mkldnn.is_available(),
                            "torch_threads": torch.get_num_threads(),
                            "interop_threads": torch.get_num_interop_threads()}}

    return Session(batch, run_step, wait, report)


def _torch_matmul_rate(device, dtype: str) -> float:
    import torch
    cuda = device.type == "cuda"
    n = matmul_size(accelerator=cuda)
    a, b = (torch.randn(n, n, device=device, dtype=getattr(torch, dtype)) for _ in range(2))

    def matmul():
        torch.matmul(a, b)
        if cuda:
            torch.cuda.synchronize()

    return best_flops_per_sec(matmul, n)


def _profile_torch(run_step, wait, out_dir: str) -> None:
    """Profiles 2 more reference steps; writes the time per kind of op to out_dir/profile_hf.json."""
    import torch

    from gpt1_jax.tools import profiling
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            wait(run_step())
    self_micros = {e.key: float(e.self_cpu_time_total) for e in prof.key_averages()}
    _write_profile(out_dir, "profile_hf.json", profiling.summarize_torch(self_micros))


def serve(session: Session) -> None:
    """The worker's side of the turn-taking: one line in per command, one line out.

    It first answers its batch size, once set up; then "step" runs a step and answers its
    seconds, and "done" answers the report (JSON) and ends.
    """
    print(session.batch_size, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            print(session.step(), flush=True)
        elif command == "done":
            print(json.dumps(session.report()), flush=True)
            return
        else:
            raise ValueError(f"unknown command {command!r}")


class _Worker:
    """One side in its own process, driven through its stdin and stdout (`serve`)."""

    def __init__(self, side: str, opts: Options, batch: int):
        self.side = side
        argv = [sys.executable, "-m", "gpt1_jax.cli.bench", *opts.worker_flags(side, batch)]
        # Both processes live at once: on a GPU, JAX must not take most of its memory.
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, text=True, env=env)
        self.batch_size = int(self._answer())  # once set up

    def _answer(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            self._stderr.seek(0)
            raise RuntimeError(f"the {self.side} benchmark failed:\n{self._stderr.read()[-4000:]}")
        return line.strip()

    def step(self) -> float:
        self._process.stdin.write("step\n")
        self._process.stdin.flush()
        return float(self._answer())

    def finish(self) -> dict:
        self._process.stdin.write("done\n")
        self._process.stdin.flush()
        report = json.loads(self._answer())
        self._process.wait()
        return report

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def _summary(step_times: list[float], report: dict, tokens_per_step: int,
             flops_per_token: float, peak_flops: float) -> dict:
    step_time = statistics.median(step_times)
    tokens_per_sec = tokens_per_step / step_time
    return {
        "tokens_per_sec": tokens_per_sec,
        "step_time_sec": step_time,
        "step_times_sec": step_times,
        "mfu": tokens_per_sec * flops_per_token / peak_flops if peak_flops else None,
        "peak_memory_bytes": report["peak_memory_bytes"],
        "baseline_memory_bytes": report["baseline_memory_bytes"],
        "device_kind": report["device_kind"],
        "num_params": report["num_params"],
        "final_loss": report["loss"],
        "matmul_flops_per_sec": report["matmul_flops_per_sec"],
        "runtime": report.get("runtime", {}),
    }


def benchmark(opts: Options) -> dict:
    """Both sides taking turns; medians, MFU and the ratio.

    This process starts no JAX backend (on a GPU it would hold memory the workers need).
    The project's worker starts first: the batch it picks for its backend is the reference's.
    """
    from gpt1_jax import reporting
    shape = SHAPES[opts.shape]
    sides = ["project"] + (["hf"] if opts.reference == "hf" else [])
    workers = {}
    try:
        for side in sides:
            batch = workers["project"].batch_size if workers else opts.batch_size
            workers[side] = _Worker(side, opts, batch)
            for _ in range(opts.warmup):
                workers[side].step()
        times = {side: [] for side in sides}
        turn_medians = {side: [] for side in sides}
        turns = -(-opts.steps // opts.turn_steps)
        for turn in range(turns):
            for side in sides:
                workers[side].step()  # the switch-over step, untimed
                steps = min(opts.turn_steps, opts.steps - len(times[side]))
                turn_times = [workers[side].step() for _ in range(steps)]
                times[side] += turn_times
                turn_medians[side].append(statistics.median(turn_times))
                print(f"[bench] {side} turn {turn + 1}/{turns}: {turn_medians[side][-1]:.3f} s/step",
                      file=sys.stderr)
        reports = {side: workers[side].finish() for side in sides}
    finally:
        for worker in workers.values():
            worker.kill()

    batch = reports["project"]["batch_size"]
    tokens_per_step = batch * shape["n_ctx"]
    flops = reporting.flops_per_token(shape["n_layer"], shape["d_model"], shape["d_ff"],
                                      shape["vocab_size"], shape["n_ctx"])
    peak = reports["project"]["peak_flops"]
    if reports["project"]["device_kind"].startswith("cpu"):
        peak = max(report["matmul_flops_per_sec"] for report in reports.values())
    result = {
        "machine": machine.machine_description(),
        "shape": opts.shape,
        **{k: v for k, v in shape.items() if not k.startswith("batch_")},
        "batch_size": batch,
        "dtype": opts.dtype,
        "attention": opts.attention,
        "remat": opts.remat,
        "attention_block": opts.attention_block,
        "dropout": opts.dropout,
        "threads": threads(),
        "warmup_steps": opts.warmup,
        "timed_steps": opts.steps,
        "turn_steps": opts.turn_steps,
        "flops_per_token": flops,
        "peak_flops": peak,
        **_summary(times["project"], reports["project"], tokens_per_step, flops, peak),
    }
    if "hf" in sides:
        reference = _summary(times["hf"], reports["hf"], tokens_per_step, flops, peak)
        result["reference"] = {"name": "transformers OpenAIGPTLMHeadModel + torch.optim.AdamW",
                               **reference}
        result["ratio"] = result["tokens_per_sec"] / reference["tokens_per_sec"]
        result["ratio_per_turn"] = [r / p for p, r in zip(turn_medians["project"], turn_medians["hf"])]
        result["memory_ratio"] = result["peak_memory_bytes"] / reference["peak_memory_bytes"]
        result["matmul_ratio"] = result["matmul_flops_per_sec"] / reference["matmul_flops_per_sec"]
    return result


def run(opts: Options) -> dict:
    """The benchmark with its profiles attached; prints the tables and the headline."""
    result = benchmark(opts)
    if opts.profile:
        from gpt1_jax.tools import profiling
        sides = [("gpt1-jax", result, "profile.json")]
        if "reference" in result:  # not a stale file of an earlier run
            sides.append(("HF PyTorch", result["reference"], "profile_hf.json"))
        for label, side, file_name in sides:
            summary = json.loads((pathlib.Path(opts.profile) / file_name).read_text())
            side["profile"] = summary["parts"]
            print(f"{label}:\n" + profiling.format_table(summary), file=sys.stderr)
    return result


def headline(result: dict) -> str:
    """One line: the ratio with its spread over turns, and both sides' plain matmul rate."""
    described = result["machine"]
    cpu = " ".join(filter(None, [described.get("cpu_model"), described.get("cpu_generation")
                                 and f"({described['cpu_generation']})"]))
    line = f"[bench] {result['shape']}: gpt1-jax {result['tokens_per_sec']:,.0f} tokens/s"
    if "reference" in result:
        turns = result["ratio_per_turn"]
        line += (f", HF {result['reference']['tokens_per_sec']:,.0f}: ratio {result['ratio']:.3f} "
                 f"(turns {min(turns):.2f}-{max(turns):.2f}), peak memory {result['memory_ratio']:.2f} of HF's; "
                 f"matmul {result['matmul_flops_per_sec'] / 1e9:.0f} vs "
                 f"{result['reference']['matmul_flops_per_sec'] / 1e9:.0f} GFLOP/s")
    return line + (f" on {cpu}" if cpu else "")

