"""The benchmark against HF PyTorch, and the profile summary it prints."""
import json
import sys

import numpy as np
import pytest

import jobs
from gpt1_jax.tools import machine, profiling


@pytest.mark.slow
def test_benchmark_times_both_sides_at_the_same_shape(tmp_path):
    out = tmp_path / "bench.json"
    profile_dir = tmp_path / "profile"
    jobs.run([sys.executable, "-m", "gpt1_jax.cli.bench", "--shape=tiny", "--reference=hf",
              "--warmup=1", "--steps=4", "--turn_steps=2", f"--out={out}", f"--profile={profile_dir}"])
    result = json.loads(out.read_text())
    reference = result["reference"]
    # The same model on both sides: parameter counts agree (HF's tied head counted once).
    assert result["num_params"] == reference["num_params"]
    assert result["ratio"] == result["tokens_per_sec"] / reference["tokens_per_sec"]
    # Two turns of each side, two timed steps each; a turn's ratio is of its median steps.
    assert len(result["step_times_sec"]) == len(reference["step_times_sec"]) == 4
    turn = lambda times, i: float(np.median(times[2 * i:2 * i + 2]))
    np.testing.assert_allclose(result["ratio_per_turn"],
                               [turn(reference["step_times_sec"], i) / turn(result["step_times_sec"], i)
                                for i in range(2)])
    assert result["tokens_per_sec"] == result["batch_size"] * result["n_ctx"] / result["step_time_sec"]
    for side in (result, reference):
        assert side["peak_memory_bytes"] > side["baseline_memory_bytes"] > 0
        assert 0 < side["mfu"] < 1
        assert side["matmul_flops_per_sec"] > 1e9  # any CPU of this decade, one thread or more
    # On a CPU, MFU is against the faster runtime's measured matmul rate.
    assert result["peak_flops"] == max(result["matmul_flops_per_sec"], reference["matmul_flops_per_sec"])
    assert result["matmul_ratio"] == result["matmul_flops_per_sec"] / reference["matmul_flops_per_sec"]
    assert result["machine"]["cpus"] >= 1
    # Both models start near ln(vocab) on random tokens and take a few steps.
    assert abs(result["final_loss"] - reference["final_loss"]) < 0.5
    parts = {row["part"] for row in result["profile"]}
    assert {"vocabulary projection", "mlp matmuls", "mlp matmuls [backward]", "attention scores",
            "attention probs x values [backward]"} <= parts
    profile = json.loads((profile_dir / "profile.json").read_text())
    assert abs(sum(row["ms"] for row in profile["parts"]) + profile["unattributed_ms"]
               - profile["total_ms"]) < 0.01
    # The reference's side of the same run, per kind of aten op.
    hf_parts = {row["part"] for row in reference["profile"]}
    assert {"attention matmuls (bmm)", "linear layers and head (mm/addmm)", "softmax"} <= hf_parts


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
model name\t: {name}
flags\t\t: fpu sse2 avx2 fma {flags}

processor\t: 1
vendor_id\t: SomethingElse
cpu family\t: 99
"""


@pytest.mark.parametrize("vendor, family, model, flags, generation", [
    ("AuthenticAMD", 26, 2, "avx512f avx512_vp2intersect", "Zen 5"),
    ("AuthenticAMD", 25, 17, "avx512f avx512_bf16", "Zen 4"),
    ("AuthenticAMD", 25, 1, "", "Zen 3"),
    ("GenuineIntel", 6, 143, "avx512f amx_tile amx_bf16", ""),
])
def test_machine_description_tells_the_cpu_generation_behind_a_hidden_model_name(
        vendor, family, model, flags, generation):
    described = machine.describe_cpu(CPUINFO.format(vendor=vendor, family=family, model=model,
                                                  name="AMD EPYC", flags=flags))
    assert described["cpu_model"] == "AMD EPYC"  # what a VM shows; the numbers still tell
    assert (described["cpu_vendor"], described["cpu_family"], described["cpu_model_number"]) == \
        (vendor, family, model)
    assert described["cpu_generation"] == generation
    assert described["cpu_flags"] == [f for f in machine.CPU_FLAGS if f in ("avx2 fma " + flags).split()]


def test_categorize_names_the_part_of_the_model_and_the_pass():
    assert profiling.categorize("jit(step)/jvp(GPT1)/GPT1.logits/btd,vd->btv/dot_general") == \
        "vocabulary projection"
    assert profiling.categorize("jit(step)/transpose(jvp(GPT1))/h_3/mlp/c_fc/dot_general") == \
        "mlp matmuls [backward]"
    assert profiling.categorize("jit(step)/jvp(GPT1)/h_0/attn/bhqk,bhsk->bhqs/dot_general") == \
        "attention scores"
    assert profiling.categorize("jit(step)/transpose(jvp(GPT1))/h_2/attn/bhqs,bhsk->bhqk/dot_general") == \
        "attention probs x values [backward]"
    assert profiling.categorize("jit(step)/jvp(GPT1)/h_0/attn/reduce_max") == "attention softmax and mask"
    assert profiling.categorize("jit(step)/jvp(GPT1)/h_0/attn/Dropout_0/random_bits") == \
        "dropout random bits"
    assert profiling.categorize("jit(step)/jvp(GPT1)/h_1/ln_2/reduce_sum") == "layernorm"
    assert profiling.categorize("jit(step)/mul") == profiling.OPTIMIZER


def test_summarize_torch_groups_aten_ops_by_kind():
    summary = profiling.summarize_torch({"aten::addmm": 3000.0, "aten::mm": 1000.0, "aten::bmm": 2000.0,
                                         "aten::_softmax_backward_data": 500.0, "aten::add_": 500.0})
    parts = {row["part"]: row["ms"] for row in summary["parts"]}
    assert parts == {"linear layers and head (mm/addmm)": 4.0, "attention matmuls (bmm)": 2.0,
                     "softmax [backward]": 0.5, "elementwise and other": 0.5}
    assert summary["total_ms"] == 7.0 and summary["top_ops"][0]["op"] == "aten::addmm"


def test_summarize_adds_up_each_part_and_keeps_the_unattributed_rest():
    hlo = ('  %fusion.1 = f32[8,4]{1,0} fusion(%p), '
           'metadata={op_name="jit(step)/jvp(GPT1)/GPT1.logits/dot_general"}\n'
           '  ROOT %dot.2 = f32[4]{0} dot(%a, %b), '
           'metadata={op_name="jit(step)/transpose(jvp(GPT1))/h_0/mlp/c_fc/dot_general"}\n')
    names = profiling.op_names(hlo)
    assert names == {"fusion.1": "jit(step)/jvp(GPT1)/GPT1.logits/dot_general",
                     "dot.2": "jit(step)/transpose(jvp(GPT1))/h_0/mlp/c_fc/dot_general"}
    events = [{"name": "fusion.1", "dur": 3000}, {"name": "fusion.1", "dur": 1000},
              {"name": "dot.2", "dur": 4000}, {"name": "copy.7", "dur": 2000},
              {"name": "ThunkExecutor::Execute", "dur": 99000}]
    summary = profiling.summarize(events, names)
    assert summary["total_ms"] == 10.0 and summary["unattributed_ms"] == 2.0
    assert summary["parts"] == [{"part": "vocabulary projection", "ms": 4.0, "percent": 40.0},
                                {"part": "mlp matmuls [backward]", "ms": 4.0, "percent": 40.0}]


def test_a_profile_without_a_reference_reports_the_project_side_only(tmp_path):
    # A profile_hf.json left by an earlier run in the same folder is not this run's reference.
    (tmp_path / "profile_hf.json").write_text('{"parts": []}')
    out = tmp_path / "bench.json"
    jobs.run([sys.executable, "-m", "gpt1_jax.cli.bench", "--shape=tiny", "--reference=none", "--warmup=1",
              "--steps=2", f"--out={out}", f"--profile={tmp_path}"])
    result = json.loads(out.read_text())
    assert "reference" not in result and "ratio" not in result
    assert {"vocabulary projection", "mlp matmuls"} <= {row["part"] for row in result["profile"]}
