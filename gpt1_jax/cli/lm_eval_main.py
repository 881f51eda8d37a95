r"""The harness's own command line with the `gpt1_jax` model registered.

    python -m gpt1_jax.cli.lm_eval_main run --model gpt1_jax --model_args init_from=runs/demo \
        --tasks gpt1_sst2 --include_path $(python -c "import gpt1_jax.evaluation.harness as h; print(h.TASKS_DIR)")

lm-eval 0.4.13 finds models only in its own registry (no entry points), so the plain `lm_eval`
command cannot see `gpt1_jax`; this runs the same command after importing the model.
"""
import gpt1_jax.evaluation.harness.evaluate  # noqa: F401  (offline switches)
import gpt1_jax.evaluation.harness.model  # noqa: F401  (registers `gpt1_jax`)

if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()
