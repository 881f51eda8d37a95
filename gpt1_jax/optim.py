"""The GPT-1 optimiser: Adam with decoupled weight decay, clipping and its lr schedules.

Paper §4.1 and `opt.py` of the released code: Adam (b1 0.9, b2 0.999, eps 1e-8), a
"modified L2" of 0.01 decoupled from the gradient (AdamW) on every weight except biases
and LayerNorm gains, global-norm clipping at 1. The released code folds Adam's bias
correction into the learning rate; optax's adamw applies it to the moments instead,
which is the same update up to where eps enters.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from gpt1_jax.errors import ConfigError

SCHEDULES = ("warmup_cosine", "warmup_linear", "warmup_constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 2.5e-4
    schedule: str = "warmup_cosine"
    warmup_steps: int = 2000
    total_steps: int = 100_000
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # <= 0 turns clipping off

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optimizer.schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if self.total_steps <= 0:
            raise ConfigError(f"the number of training steps must be positive, got {self.total_steps}")
        # warmup_steps > total_steps is allowed (a short debugging run of a paper
        # config): the lr then only warms up.
        if self.warmup_steps < 0:
            raise ConfigError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """lr(step): linear warm-up from 0 to the peak over `warmup_steps`, then

    - warmup_cosine:   peak * 0.5 * (1 + cos(pi * (step - W) / (S - W)))  -> 0 at step S
    - warmup_linear:   peak * (S - step) / (S - W)                        -> 0 at step S
    - warmup_constant: peak
    where W = warmup_steps and S = total_steps. Step 0 has lr 0, as in the released code.
    """
    peak, warmup, total = cfg.learning_rate, cfg.warmup_steps, cfg.total_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup, 1)
        progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
        if cfg.schedule == "warmup_cosine":
            after = peak * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        elif cfg.schedule == "warmup_linear":
            after = peak * (1.0 - progress)
        else:
            after = jnp.full_like(progress, peak)
        return jnp.where(step < warmup, warm, after)

    return schedule


def decay_mask(params):
    """True for the weights that weight decay applies to: kernels and embedding tables.

    Biases and LayerNorm scales (the released code's 1-D "gains") are not decayed.
    """
    def is_weight(path, _):
        return getattr(path[-1], "key", None) in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(is_weight, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Clipping, then AdamW with the masked decoupled weight decay and the schedule."""
    parts = []
    if cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.adamw(
        learning_rate=learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
