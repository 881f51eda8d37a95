"""gpt1-jax: GPT-1 (Radford et al., 2018) in JAX/Flax."""
