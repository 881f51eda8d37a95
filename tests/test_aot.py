"""Ahead-of-time compilation for TPU slices and GPUs on this CPU machine (gpt1_jax/tools/aot.py).

The TPU tests need libtpu (the `test` extra installs it); the GPU tests need the CUDA plugin
(`.[cuda]`, several GB, not in CI) and skip without it. Small models with `scan_layers`
keep the compiles short where the property does not need the paper's model.
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec

from gpt1_jax import config_files, optim, settings
from gpt1_jax import model as model_lib
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.tools import aot
from gpt1_jax.train import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA_PLUGIN = aot.cuda_plugin_installed()
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (pip install ".[tpu]")')
needs_cuda = pytest.mark.skipif(not HAS_CUDA_PLUGIN,
                                reason='the CUDA plugin is not installed (pip install ".[cuda]")')
SMALL = {"n_layer": 2, "n_head": 2, "d_model": 64, "d_ff": 128, "n_ctx": 64, "vocab_size": 512,
         "scan_layers": True}


def config(name="gpt1.py", **model):
    cfg = config_files.load(REPO / "configs" / name)
    cfg.model.update(model)
    return cfg


def run_aot(*args):
    env = {**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    return subprocess.run([sys.executable, "-m", "gpt1_jax.cli.aot", *args], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=900)


def test_slice_names_count_chips_or_cores():
    assert aot.tpu_topology("v5e-8")[:2] == ("v5e:2x4", 16 * aot.GIB)
    assert aot.tpu_topology("v6e-1")[0] == "v6e:1x1"
    # v4 and v5p slices are named by TensorCores, two a chip: v4-8 is 4 chips, v4-32 16.
    assert aot.tpu_topology("v4-8")[0] == "v4:2x2x1"
    assert aot.tpu_topology("v4-32")[0] == "v4:2x2x4"
    assert aot.tpu_topology("v5p-8")[:2] == ("v5p:2x2x1", 95 * aot.GIB)


@needs_libtpu
@pytest.mark.parametrize("name, chips", [("v5e-1", 1), ("v5e-8", 8), ("v4-8", 4), ("v4-32", 16),
                                         ("v5p-8", 4), ("v6e-8", 8)])
def test_topologies_have_one_device_per_chip(name, chips):
    assert len(aot.resolve_target(name).devices) == chips
    assert len(aot.resolve_target(name, num_slices=2).devices) == 2 * chips


@needs_libtpu
@pytest.mark.slow
def test_gpt1_fits_on_v5e_8():
    """The paper's model and batch (64 x 512 tokens), data-parallel over 8 v5e chips. The
    fast compile's plan is an upper bound of the job's (test_fast_effort_over_states_memory_and_says_so),
    so fitting under it is fitting."""
    cfg = config(scan_layers=True)
    result = aot.run(cfg, "v5e-8", effort="fast")
    memory = result["per_chip_bytes"]
    assert result["fits"] and memory["total"] < 16 * aot.GIB
    # Every chip holds the whole state: 116.5M float32 parameters and two Adam moments.
    assert 3 * 4 * 116e6 < memory["arguments"] < 3 * 4 * 118e6
    assert set(result["collectives"]) == {"all-reduce"}


@needs_libtpu
@pytest.mark.slow  # a TPU compile of tens of seconds of CPU
def test_too_big_exits_1_with_one_line(tmp_path):
    """GPT-2 large at batch 512 on one v5e chip: the compiler refuses it and the tool says
    how far over it is in one line (arguments and what the compiler reported)."""
    out = tmp_path / "aot.json"
    result = run_aot("--config=configs/gpt2_large.py", "--topology=v5e-1", "--config.train.batch_size=512",
                     "--config.mesh.fsdp=1", "--config.mesh.tensor=1", "--config.model.scan_layers=True",
                     "--config.model.remat=dots", "--effort=fast", f"--out={out}")
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("needs ") and ("GiB per chip of 16 GiB on v5e-1 (the fast compile's plan; "
                                          "--effort=full for the job's); try --config.model.remat=block") in last
    report = json.loads(out.read_text())
    assert not report["fits"] and report["per_chip_bytes"]["total"] > 16 * aot.GIB


@needs_libtpu
@pytest.mark.slow  # a TPU compile of tens of seconds of CPU
def test_fsdp_and_tensor_parallel_mesh_compiles_with_gathers_and_scatters():
    cfg = config(**SMALL)
    cfg.mesh.update(data=1, fsdp=4, tensor=2)
    cfg.train.batch_size = 16
    result = aot.run(cfg, "v5e-8")
    assert result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    kinds = result["collectives"]
    assert kinds["all-gather"]["count"] > 0 and kinds["reduce-scatter"]["count"] > 0, kinds


@needs_libtpu
@pytest.mark.slow  # a TPU compile of tens of seconds of CPU
def test_fast_effort_over_states_memory_and_says_so():
    """--effort=fast (the compiler's lowest effort) plans at least the memory of the job's
    own compile, and the report says which compile it comes from."""
    cfg = config(**SMALL)
    fast = aot.run(cfg, "v5e-8", effort="fast", eval_step=False)
    full = aot.run(cfg, "v5e-8", effort="full", eval_step=False)
    assert fast["compiler_options"] == {"exec_time_optimization_effort": -1.0} and full["compiler_options"] == {}
    assert fast["per_chip_bytes"]["total"] >= full["per_chip_bytes"]["total"]
    assert fast["per_chip_bytes"]["arguments"] == full["per_chip_bytes"]["arguments"]
    assert set(fast["collectives"]) == set(full["collectives"])
    assert fast["eval_per_chip_bytes"] is None
    assert "upper estimate" in aot.format_report(fast) and "upper estimate" not in aot.format_report(full)


@needs_libtpu
@pytest.mark.slow  # a TPU compile of tens of seconds of CPU
def test_auto_effort_answers_no_fit_from_the_full_compile(monkeypatch):
    """A fast plan that does not fit is not the answer: auto recompiles as the job does."""
    monkeypatch.setitem(aot.TPU_GENERATIONS, "v5e", (2 ** 20, False))  # a 1 MiB chip
    cfg = config(**SMALL)
    cfg.train.batch_size = 8
    result = aot.run(cfg, "v5e-1", effort="auto", eval_step=False)
    assert result["effort"] == "full" and not result["fits"]
    assert result["fast_attempt"]["per_chip_bytes"]["total"] > 2 ** 20
    assert "did not fit; recompiled" in aot.format_report(result)


def _normalized(spec: PartitionSpec) -> tuple:
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return tuple(entries)


@needs_libtpu
def test_compiled_parameter_shardings_are_the_jobs():
    """The AOT-compiled step takes its state laid out exactly as the job lays it out on a
    mesh of the same shape (here 8 simulated CPU devices)."""
    cfg = config(**SMALL)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    cfg.train.batch_size = 16
    target = aot.resolve_target("v5e-8")
    steps = aot.compile_steps(cfg, target.devices)
    compiled_state = steps.train.input_shardings[0][0]

    mcfg = model_lib.ModelConfig(**cfg.model)
    tx = optim.make_optimizer(optim.OptimizerConfig(total_steps=1, **cfg.optimizer))
    mesh = sharding_lib.make_mesh(dict(cfg.mesh), jax.devices("cpu")[:8])
    rules = settings.sharding_rules(cfg)
    _, job = train_state.state_shardings(model_lib.init_params_fn(model_lib.GPT1(mcfg), mcfg.n_ctx), tx,
                                         jax.random.key(0), mesh, rules)
    compiled_specs = jax.tree_util.tree_map(lambda s: _normalized(s.spec), compiled_state.params)
    job_specs = jax.tree_util.tree_map(lambda s: _normalized(s.spec), job.params)
    assert compiled_specs == job_specs
    assert any(spec for spec in jax.tree_util.tree_leaves(job_specs, is_leaf=lambda x: isinstance(x, tuple)))


@needs_libtpu
def test_the_cpu_compiler_options_go_only_to_cpu_devices():
    """The train step's XLA options follow the devices it is compiled for, not this host's
    backend: an ahead-of-time TPU compile from a CPU machine gets none of XLA:CPU's."""
    def options(devices):
        mesh = sharding_lib.make_mesh({"data": len(devices), "fsdp": 1, "tensor": 1}, devices)
        return train_state.train_step_compiler_options(
            sharding_lib.batch_sharding(mesh, sharding_lib.DEFAULT_RULES))
    assert jax.default_backend() == "cpu"
    assert options(jax.devices("cpu")[:1]) == {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    assert options(aot.resolve_target("v5e-8").devices) == {}


def test_collectives_in_loops_count_per_iteration():
    hlo = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(%a, %b)
}

%cond (p: (s32[], f32[4])) -> pred[] {
  %c = s32[]{:T(128)} constant(12)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %x = f32[4]{0} get-tuple-element(%p), index=1
  %r = f32[4]{0} all-reduce(%x), to_apply=%add
  %g = (bf16[2,8]{1,0}, bf16[16,8]{1,0}) all-gather-start(%y), dimensions={0}
  ROOT %t = (s32[], f32[4]) tuple(%i, %r)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t0), condition=%cond, body=%body
  %rs = bf16[2,8]{1,0} reduce-scatter(%z), dimensions={0}, to_apply=%add
  ROOT %o = f32[4] get-tuple-element(%w), index=1
}
"""
    assert aot.collectives_per_step(hlo) == {
        "all-reduce": {"count": 12, "bytes": 12 * 16},
        "all-gather": {"count": 12, "bytes": 12 * 16 * 8 * 2},
        "reduce-scatter": {"count": 1, "bytes": 2 * 8 * 2},
    }


def test_one_collective_split_over_async_fusions_counts_once():
    """XLA:TPU's async collective fusions carry a copy of one all-gather in each fusion of
    its chain, all with one channel_id: one all-gather per run, not one per fusion."""
    fusion = """%async_collective_fusion.{i} (p: bf16[2,8]) -> (bf16[16,8], f32[4]) {{
  %ag = bf16[16,8]{{1,0}} all-gather(%p), channel_id=89, dimensions={{0}}
  ROOT %t = (bf16[16,8], f32[4]) tuple(%ag, %x)
}}
"""
    hlo = "HloModule m\n\n" + "".join(fusion.format(i=i) for i in range(3)) + """
ENTRY %main (a: bf16[2,8]) -> f32[4] {
  %f0 = (bf16[16,8], f32[4]) fusion(%a), kind=kOutput, calls=%async_collective_fusion.0
  %f1 = (bf16[16,8], f32[4]) fusion(%a), kind=kOutput, calls=%async_collective_fusion.1
  %f2 = (bf16[16,8], f32[4]) fusion(%a), kind=kOutput, calls=%async_collective_fusion.2
  %g = bf16[16,8]{1,0} all-gather(%a), channel_id=90, dimensions={0}
  ROOT %o = f32[4] get-tuple-element(%f2), index=1
}
"""
    assert aot.collectives_per_step(hlo) == {"all-gather": {"count": 2, "bytes": 2 * 16 * 8 * 2}}


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="the CUDA plugin is installed")
def test_missing_cuda_plugin_exits_2():
    result = run_aot("--config=configs/gpt1.py", "--topology=h200")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        'error: --topology=h200 needs the CUDA plugin: pip install ".[cuda]"'


@needs_cuda
@pytest.mark.parametrize("gpus, hosts", [(1, 1), (8, 1), (4, 2)])
def test_h200_compiles(gpus, hosts):
    cfg = config(**SMALL, dtype="bfloat16")
    cfg.train.batch_size = 16
    result = aot.run(cfg, "h200", num_gpus=gpus, num_hosts=hosts)
    assert result["chips"] == gpus * hosts and result["fits"]
    assert result["device_kind"] == "NVIDIA H200"
    if gpus * hosts > 1:
        assert result["collectives"]["all-reduce"]["count"] > 0
