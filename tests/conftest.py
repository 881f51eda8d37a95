"""Test-wide setup: 8 simulated CPU devices, so sharding tests run on one machine.

XLA reads the flag once, when the first JAX backend starts, so it is set here, before
any test module imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
