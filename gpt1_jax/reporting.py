"""Throughput accounting (FLOPs, MFU) and metric writers (JSONL, TensorBoard).

FLOPs of one training token (forward + backward = 3x forward, the PaLM appendix B
convention, no rematerialisation counted):

    6 * (N_blocks + V * D)  +  12 * L * T * D

N_blocks are the Transformer blocks' parameters, V * D the tied output head (a matmul
on every token; the embedding lookups cost no FLOPs), and 12 L T D the attention
score and value matmuls (causal masking is not subtracted). MFU divides the achieved
FLOP/s by the peak of all devices in use.
"""
import json

import jax
import numpy as np

from gpt1_jax.storage import rundir

# Peak dense FLOP/s per device, by `device_kind` substring. bf16 for accelerators;
# the CPU figure is one 2-core machine's fp32 matmul peak (a Zen 4-like EPYC: the best of
# six 4096^3 matmuls, JAX 181, PyTorch/MKL 189 GFLOP/s). CPUs differ by 2x and more (a
# Zen 5's XLA:CPU reaches 420), so the bench measures its machine's instead
# (tools/bench.py); set train.peak_flops_per_device for a job's MFU on another CPU.
PEAK_FLOPS_BY_DEVICE_KIND = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v4": 275e12,
    "cpu": 189e9,
}


def flops_per_token(n_layer: int, d_model: int, d_ff: int, vocab_rows: int, seq_len: int) -> float:
    """Training FLOPs per token of GPT-1 (see the module docstring)."""
    attn_params = d_model * 3 * d_model + 3 * d_model + d_model * d_model + d_model
    mlp_params = 2 * d_model * d_ff + d_ff + d_model
    block_params = n_layer * (attn_params + mlp_params + 4 * d_model)
    return 6.0 * (block_params + vocab_rows * d_model) + 12.0 * n_layer * seq_len * d_model


def peak_flops_per_device(override: float = 0.0, device: jax.Device | None = None) -> float:
    """The configured peak, or the table's entry for this device kind (0 if unknown)."""
    if override > 0:
        return override
    device = device or jax.devices()[0]
    kind = f"{device.platform} {device.device_kind}"
    for key, peak in PEAK_FLOPS_BY_DEVICE_KIND.items():
        if key.lower() in kind.lower():
            return peak
    return 0.0


class MetricsWriter:
    """Writes one JSON object per logged step to `<workdir>/metrics.jsonl` and mirrors the
    scalars to TensorBoard; only process 0 writes, the others get a no-op writer.

    Object stores cannot append, so the file is rewritten whole at every write (it holds
    a few hundred bytes a log). A resumed run (`resume_step`) keeps the history up to its
    checkpoint and drops what a killed predecessor logged after it: those steps are run
    again. A fresh run (`resume_step=None`) starts a new history.
    """

    def __init__(self, workdir, resume_step: int | None = None, tracker=None):
        self.enabled = jax.process_index() == 0
        self._tracker = tracker  # e.g. tracking.WandbTracker: gets every write's scalars too
        self._lines: list[str] = []
        self._tb = None
        if not self.enabled:
            return
        workdir = rundir.path(workdir)
        self._path = workdir / rundir.METRICS
        if resume_step is not None and self._path.exists():
            self._lines = [line for line in self._path.read_text().splitlines(keepends=True)
                           if (step := _logged_step(line)) is not None and step <= resume_step]
        self._tb_dir = workdir / rundir.TENSORBOARD
        self._mirror = rundir.local_mirror(self._tb_dir)
        local = self._mirror.__enter__()
        from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it
        self._tb_local = local
        self._tb = SummaryWriter(local)

    def rows(self) -> list[dict]:
        """Everything logged so far in this history, oldest first."""
        return [json.loads(line) for line in self._lines]

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _to_python(v) for k, v in metrics.items()}
        self._lines.append(json.dumps({"step": int(step), **clean}) + "\n")
        rundir.write_text(self._path, "".join(self._lines))
        for key, value in clean.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, int(step))
        self._tb.flush()
        if self._tracker is not None:
            self._tracker.log(int(step), clean)
        if rundir.is_remote(self._tb_dir):
            rundir.sync(self._tb_local, self._tb_dir)

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._mirror.__exit__(None, None, None)
            self._tb = None
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None


def _logged_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a torn or foreign line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _to_python(value):
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    return value
