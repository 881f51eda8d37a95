"""`python -m gpt1_jax.sample`, as documented before the command lines moved: runs gpt1_jax/cli/sample.py."""
if __name__ == "__main__":
    import runpy
    runpy.run_module("gpt1_jax.cli.sample", run_name="__main__", alter_sys=True)
