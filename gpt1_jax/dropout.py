"""Inverted dropout whose random bits cost a fraction of `jax.random.bits` on a CPU.

Random bits are most of what dropout costs, and at the paper's rates most of them go to
the [B, H, T, T] attention probabilities. Two savings, neither of which changes a mask:

* `threefry_bits` is the threefry-2x32 hash of `jax.random.bits(key, shape, uint32)`
  written out as one elementwise expression. XLA:CPU lowers JAX's own version as a
  5-iteration loop, each iteration a pass over the whole counter array in memory; this
  one fuses into a single pass (3-4x faster, measured alone on the bench machine). The
  counters and rounds are the same, so the bits are equal, bit for bit (tested).
* Each element needs only 16 of the 32 bits: one draw serves two neighbours.

Like `flax.linen.Dropout`, `Dropout` draws from the "dropout" RNG stream, and its bits
do not depend on how the array is sharded (the counters are a global iota).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Threefry-2x32 with 20 rounds (Salmon et al., 2011): the rotation schedule, alternating
# every 4 rounds, and the key-schedule parity constant; as in JAX's threefry2x32.py.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _is_threefry(key: jax.Array) -> bool:
    return (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and "threefry" in str(jax.random.key_impl(key)))


def threefry_bits(key: jax.Array, shape: tuple) -> jax.Array:
    """`jax.random.bits(key, shape, jnp.uint32)`, computed in one fused pass.

    Equal to it for a typed threefry key (the default) and fewer than 2^32 elements
    (JAX's partitionable counters, the default since JAX 0.5); anything else is handed
    to `jax.random.bits` itself.
    """
    size = math.prod(shape)
    if not _is_threefry(key) or size >= 2 ** 32 or not jax.config.jax_threefry_partitionable:
        return jax.random.bits(key, shape, jnp.uint32)
    if size == 0:
        return jnp.zeros(shape, jnp.uint32)
    k0, k1 = jax.random.key_data(key).astype(jnp.uint32)
    keys = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)
    # The counter of an element is its row-major index: the low 32 bits of a 64-bit
    # count whose high word is 0.
    strides = [math.prod(shape[axis + 1:]) for axis in range(len(shape))]
    index = sum(jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
                for axis, stride in enumerate(strides))  # 0 for a scalar
    x0 = jnp.broadcast_to(keys[0], shape)
    x1 = index + keys[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + keys[(i + 1) % 3]
        x1 = x1 + keys[(i + 2) % 3] + np.uint32(i + 1)
    return x0 ^ x1


def random_uint16(key: jax.Array, shape: tuple) -> jax.Array:
    """Uniform uint16s: each 32-bit draw supplies two neighbours along the last axis."""
    if shape and shape[-1] % 2 == 0:
        bits = threefry_bits(key, (*shape[:-1], shape[-1] // 2))
        return jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(shape)
    return (threefry_bits(key, shape) >> 16).astype(jnp.uint16)


class Dropout(nn.Module):
    """Inverted dropout at `rate`, from 16 random bits per element.

    An element is kept when its 16 bits fall below round((1 - rate) * 2^16), so the
    rate is exact to 2^-16 (0.1 -> 0.1000061), and kept elements are scaled by the
    inverse of that exact keep probability, so the expectation is unchanged.
    """
    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = round((1.0 - self.rate) * 65536)
        if threshold == 0:
            return jnp.zeros_like(x)
        bits = random_uint16(self.make_rng("dropout"), x.shape)
        scale = jnp.asarray(65536 / threshold, x.dtype)
        return jnp.where(bits < threshold, x * scale, jnp.zeros((), x.dtype))
