"""`python -m gpt1_jax.aot`: ahead-of-time compilation for a TPU slice or GPU (gpt1_jax/tools/aot.py)."""
from gpt1_jax.tools import aot

if __name__ == "__main__":
    aot.main()
