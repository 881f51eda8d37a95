"""Dropout: its fused threefry bits are JAX's own, and it drops at its rate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt1_jax import dropout as dropout_lib


@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 3, 4, 5), (8, 6, 64, 96)])
def test_threefry_bits_equal_jax_random_bits(shape):
    for seed in (0, 1, 2 ** 31 + 5):
        key = jax.random.key(seed)
        want = jax.random.bits(key, shape, jnp.uint32)
        np.testing.assert_array_equal(dropout_lib.threefry_bits(key, shape), want)
        np.testing.assert_array_equal(jax.jit(dropout_lib.threefry_bits, static_argnums=1)(key, shape), want)


def test_threefry_bits_equal_jax_random_bits_for_split_and_folded_keys():
    # The keys dropout really sees: flax's make_rng folds the module path into the root key.
    key = jax.random.fold_in(jax.random.split(jax.random.key(3))[1], 17)
    np.testing.assert_array_equal(dropout_lib.threefry_bits(key, (4, 33)),
                                  jax.random.bits(key, (4, 33), jnp.uint32))


def test_other_prng_implementations_are_passed_to_jax():
    key = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(dropout_lib.threefry_bits(key, (5, 6)),
                                  jax.random.bits(key, (5, 6), jnp.uint32))


def test_sharded_bits_equal_unsharded():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b"))
    key = jax.random.key(9)
    sharded = jax.jit(lambda k: dropout_lib.threefry_bits(k, (8, 16)), out_shardings=sharding)(key)
    assert sharded.sharding == sharding
    np.testing.assert_array_equal(sharded, jax.random.bits(key, (8, 16), jnp.uint32))


@pytest.mark.parametrize("last_axis", [256, 255])  # even: two draws per 32 bits; odd: one
def test_dropout_drops_at_its_rate_and_keeps_the_mean(last_axis):
    x = jnp.ones((64, 4, last_axis))
    dropout = dropout_lib.Dropout(0.1)
    y = dropout.apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - 0.1) < 0.006  # ~5 standard deviations at 65k draws
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 65536 / round(0.9 * 65536)], rtol=1e-6)
    assert abs(float(jnp.mean(y)) - 1.0) < 0.01
    # Each element draws its own bits: neighbours sharing a 32-bit draw are independent.
    kept = np.asarray(y != 0)
    both = float(np.mean(kept[..., 0:last_axis - 1:2] & kept[..., 1::2]))
    assert abs(both - 0.81) < 0.01
    again = dropout.apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    other = dropout.apply({}, x, False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(y, again)
    assert not np.array_equal(y, other)
    np.testing.assert_array_equal(dropout.apply({}, x, True), x)


def test_rate_one_drops_everything_and_rate_zero_nothing():
    x = jnp.ones((4, 6))
    rngs = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(dropout_lib.Dropout(1.0).apply({}, x, False, rngs=rngs), 0.0)
    np.testing.assert_array_equal(dropout_lib.Dropout(0.0).apply({}, x, False, rngs=rngs), x)
