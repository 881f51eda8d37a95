"""The sample command continues a prompt from a workdir's export with the cached decoder; the
generation benchmark decodes the same tokens with and without the cache."""
import dataclasses
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import jobs
from gpt1_jax import convert, loading, tokenizers
from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib
from gpt1_jax.errors import UserError

CFG = model_lib.ModelConfig(vocab_size=40478, n_ctx=24, n_layer=1, n_head=2, d_model=32, d_ff=64,
                            init_std=0.3)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A pretraining workdir as a finished run leaves it: export/ with params and tokenizer."""
    workdir = tmp_path_factory.mktemp("run")
    params = nn.meta.unbox(model_lib.GPT1(CFG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    loading.write_export(workdir / "export", params, dataclasses.asdict(CFG), tokenizers.gpt1_bpe_tokenizer())
    return workdir


@pytest.mark.slow
def test_greedy_sample_is_the_prompt_and_the_generated_tokens(workdir):
    loaded = convert.read_orbax(workdir)
    prompts = ["It was a dark and stormy night.", "Emma"]
    texts = generate_lib.sample_text(loaded, prompts, 8, generate_lib.GREEDY, num_samples=2)
    assert len(texts) == 4 and texts[0] == texts[1]  # greedy: both samples agree
    ids = loaded.tokenizer.encode(prompts[1])
    new = generate_lib.generate(loaded.config, loaded.params, [ids], 8)[0]
    assert texts[2] == loaded.tokenizer.decode(ids + new)
    assert texts[2].startswith("emma")


def test_a_long_prompt_is_kept_whole_with_fewer_new_tokens_and_one_too_long_is_refused(workdir):
    loaded = convert.read_orbax(workdir)
    prompt = "one two three " * 6 + "END"
    ids = loaded.tokenizer.encode(prompt)
    assert len(ids) + 8 > CFG.n_ctx  # 8 new tokens would overflow the context
    text = generate_lib.sample_text(loaded, [prompt], 8, generate_lib.GREEDY)[0]
    new = generate_lib.generate(loaded.config, loaded.params, [ids], CFG.n_ctx - len(ids))[0]
    assert text == loaded.tokenizer.decode(ids + new) and text.startswith("one two three")
    with pytest.raises(UserError, match="shorten it"):
        generate_lib.sample_text(loaded, ["one two three " * 10], 4, generate_lib.GREEDY)


def test_command_line(workdir):
    done = jobs.run([sys.executable, "-m", "gpt1_jax.cli.sample", f"--init_from={workdir}",
                     "--prompt=Hello there", "--max_new_tokens=5", "--top_k=5",
                     "--temperature=0.7", "--num_samples=2"], timeout=120)
    lines = done.stdout.splitlines()
    assert lines[0] == "--- sample 1 ---" and lines[1].startswith("hello there")


def test_generation_benchmark_decodes_the_same_tokens_with_and_without_the_cache(workdir):
    from gpt1_jax import loading
    from gpt1_jax.tools import bench_generate
    result = bench_generate.benchmark(loading.load(workdir), batch_size=2, prompt_tokens=8, new_tokens=8,
                                      repeats=1)
    assert result["same_tokens"] and result["new_tokens"] == 8 and result["cached_s"] > 0
    # The documented command prints the result as one JSON object.
    done = jobs.run([sys.executable, "-m", "gpt1_jax.cli.bench_generate", f"--init_from={workdir}",
                     "--prompt_tokens=4", "--new_tokens=4", "--repeats=1"], timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1])["same_tokens"]


@pytest.mark.slow
def test_a_generation_benchmark_longer_than_the_context_is_one_error_line(workdir):
    result = jobs.run([sys.executable, "-m", "gpt1_jax.cli.bench_generate", f"--init_from={workdir}",
                       "--prompt_tokens=16", "--new_tokens=16", "--repeats=1"], expect_ok=False, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, jobs.output(result)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: bench_generate: prompt_tokens + new_tokens = 32 exceeds the model's context of 24; "
        "lower --prompt_tokens or --new_tokens"), jobs.output(result)
