"""`python -m gpt1_jax.evaluate_lm`, as documented before the command lines moved: runs gpt1_jax/cli/evaluate_lm.py."""
if __name__ == "__main__":
    import runpy
    runpy.run_module("gpt1_jax.cli.evaluate_lm", run_name="__main__", alter_sys=True)
