"""`python -m gpt1_jax.bench_generate`, as documented before the tools moved: runs gpt1_jax/tools/bench_generate.py."""
if __name__ == "__main__":
    import runpy
    runpy.run_module("gpt1_jax.tools.bench_generate", run_name="__main__", alter_sys=True)
