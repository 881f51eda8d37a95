"""`python -m gpt1_jax.bench`, as documented before the tools moved: runs gpt1_jax/tools/bench.py."""
if __name__ == "__main__":
    import runpy
    runpy.run_module("gpt1_jax.tools.bench", run_name="__main__", alter_sys=True)
