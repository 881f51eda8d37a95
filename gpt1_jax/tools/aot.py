"""Compile the pre-training job's steps for a TPU slice or NVIDIA GPUs on this (CPU) machine.

    python -m gpt1_jax.cli.aot --config=configs/gpt1.py --topology=v5e-8 [--config.KEY=VALUE ...]
        [--num_slices=N] [--num_gpus=G --num_hosts=H] [--out=aot.json]

The train and eval steps are the job's own (planned by `run_setup.plan_run` on
`model.lm_loss_fn`, the config's optimizer, mesh, sharding rules, microbatches, remat and
dtype), lowered with abstract inputs on the target's devices and compiled by the target's
compiler (libtpu; the CUDA plugin). Nothing runs: the answer is the compiler's memory plan
per chip, its FLOP count, and the collectives in the compiled program.

Exit status: 0 it fits; 1 it does not (one line says by how much and what to try), or the
config is wrong; 2 the target's compiler is not installed.
"""
import os

# The target's devices come from its topology description, never from this machine: keep
# JAX on the CPU (an installed libtpu would otherwise probe for TPUs) and let the compiler
# load even while another process on this machine holds libtpu's lock file.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# The CUDA plugin compiles for the bundled target description; it must neither look for
# GPUs here nor insist that this machine's CUDA libraries suit one.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

import dataclasses
import importlib.util
import pathlib
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import model as model_lib
from gpt1_jax import optim, reporting, settings
from gpt1_jax.errors import ConfigError, UserError
from gpt1_jax.train import run_setup as run_setup_lib
from gpt1_jax.train import train_state

GIB = 2 ** 30

# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

# TPU generation -> (HBM per chip, whether its slice names count TensorCores).
# v4 and v5p chips have two TensorCores, fused into one JAX device ("megacore"), and their
# slices are named by cores: v4-8 is 4 chips. v5e and v6e slices are named by chips.
TPU_GENERATIONS = {
    "v4": (32 * GIB, True),
    "v5p": (95 * GIB, True),
    "v5e": (16 * GIB, False),
    "v6e": (32 * GIB, False),
}
# Chips in a slice -> the physical topology libtpu expects: 3-D tori for v4 / v5p,
# 2-D grids for v5e / v6e.
TPU_3D_SHAPES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
                 256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
TPU_2D_SHAPES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
                 256: "16x16"}

# Bundled GpuTargetConfig text protos (device facts XLA:GPU compiles against) and memory.
GPU_TARGETS = {
    "h100": ("h100_sxm.txtpb", 80 * 10 ** 9),
    "h200": ("h200_sxm.txtpb", 141 * 10 ** 9),
    "a100-80g": ("a100_sxm_80g.txtpb", 80 * 10 ** 9),
}
GPU_TARGET_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "gpu_targets"


# Compiler effort. "full" is the job's own compile: the compiler's default options, so its memory
# plan is the one the job will get. "fast" asks the compiler for its lowest optimisation effort
# (XLA's exec_time_optimization_effort=-1, the same program as jax_optimization_level=O0): on
# TPU it skips most of the scheduling and tuning work, about 9x less compile CPU for GPT-1,
# but its schedule keeps more buffers alive at once, so its memory plan is larger than the
# job's (GPT-1 on v5e-8: 9.71 vs 8.18 GiB temporaries). docs/aot.md has the measurements.
EFFORTS = {
    "full": {},
    "fast": {"exec_time_optimization_effort": -1.0},
}


class CompilerMissing(UserError):
    """The target's compiler (libtpu, the CUDA plugin) is not installed here."""


@dataclasses.dataclass
class Target:
    name: str                 # as given: "v5e-8", "h200"
    platform: str             # "tpu" or "cuda"
    devices: list
    hbm_bytes: int            # per chip
    description: str          # the topology handed to the compiler


def tpu_topology(name: str, num_slices: int = 1) -> tuple[str, int, dict]:
    """("v5e:2x4", HBM bytes per chip, extra topology options) for a slice name like v5e-8."""
    match = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
    if not match:
        raise ConfigError(f"--topology={name!r}: expected a TPU slice (v4-8 .. v4-512, v5e-1 .. "
                          f"v5e-256, v5p-8 .., v6e-1 .. v6e-256) or a GPU ({', '.join(GPU_TARGETS)})")
    generation, count = match.group(1), int(match.group(2))
    hbm, counts_cores = TPU_GENERATIONS[generation]
    if counts_cores and count % 2:
        raise ConfigError(f"--topology={name}: {generation} slices are named by TensorCores (2 a chip)")
    chips = count // 2 if counts_cores else count
    shapes = TPU_3D_SHAPES if counts_cores else TPU_2D_SHAPES
    if chips not in shapes:
        raise ConfigError(f"--topology={name}: no {generation} slice of {chips} chips; "
                          f"known: {', '.join(f'{generation}-{c * 2 if counts_cores else c}' for c in shapes)}")
    options: dict = {}
    if counts_cores:
        options["chip_config_name"] = "megacore"  # one JAX device per chip, as on a real slice
    if chips == 1:
        options["chips_per_host_bounds"] = [1, 1, 1]  # libtpu assumes 2x2 chips per host
    if num_slices > 1:
        options["num_slices"] = num_slices
    return f"{generation}:{shapes[chips]}", hbm, options


def cuda_plugin_installed() -> bool:
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


def resolve_target(name: str, num_slices: int = 1, num_gpus: int = 1, num_hosts: int = 1) -> Target:
    """The target's (abstract) devices and memory per chip."""
    from jax.experimental import topologies
    if name in GPU_TARGETS:
        if not cuda_plugin_installed():
            raise CompilerMissing(f'--topology={name} needs the CUDA plugin: pip install ".[cuda]"')
        proto_file, hbm = GPU_TARGETS[name]
        # "<slices>x<hosts per slice>x<GPUs per host>"
        topology = f"1x{num_hosts}x{num_gpus}"
        devices = topologies.get_topology_desc(
            platform="cuda", target_config=(GPU_TARGET_DIR / proto_file).read_text(),
            topology=topology).devices
        return Target(name, "cuda", list(devices), hbm, f"cuda {topology} ({proto_file})")
    topology, hbm, options = tpu_topology(name, num_slices)
    if importlib.util.find_spec("libtpu") is None:
        raise CompilerMissing(f'--topology={name} needs libtpu: pip install ".[tpu]"')
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology, **options).devices
    slices = f" x {num_slices} slices" if num_slices > 1 else ""
    return Target(name + (f"x{num_slices}" if num_slices > 1 else ""), "tpu", list(devices), hbm,
                  topology + slices)


# ---------------------------------------------------------------------------------------------
# The job's steps, compiled
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Steps:
    """The compiled steps and what the job would have built them from."""
    train: Any                # jax.stages.Compiled; None when the compiler ran out of memory
    eval: Any                 # likewise
    out_of_memory: dict | None  # {"arguments", "temporaries", "message"} when train is None
    shardings: train_state.TrainState
    mesh: Any
    model_config: model_lib.ModelConfig
    lower_seconds: float
    compile_seconds: float    # the train step's, wall clock
    compile_cpu_seconds: float  # the same, CPU time of this process (all threads): on a busy
                                # machine the fairer measure of the compiler's own work
    eval_compile_seconds: float


@dataclasses.dataclass
class Lowered:
    """The job's train and eval steps lowered for the target's devices (not yet compiled)."""
    train: Any
    eval: Any
    state: Any                # abstract TrainState with shardings
    batch: Any
    shardings: train_state.TrainState
    mesh: Any
    model_config: model_lib.ModelConfig
    lower_seconds: float      # the train step's lowering, wall clock


def lower_steps(config, devices, with_eval: bool = True) -> Lowered:
    """Lowers the pre-training job's train (and eval) steps on `devices`, exactly as the job
    builds them (model, optimizer, mesh, rules, microbatches), from abstract inputs."""
    # The config is read as the job reads it, and the steps are planned as its run setup
    # plans them; only the state, which abstract devices cannot hold, is never created.
    mcfg = settings.model_config(config, config.model.vocab_size)
    # The schedule's length changes no shape; any positive count compiles the same program.
    ocfg = settings.optimizer_config(config, max(config.train.num_steps, 1))
    run_setup = settings.run_setup(config)
    model = model_lib.GPT1(mcfg)
    plan = run_setup_lib.plan_run(run_setup, model_lib.init_params_fn(model, mcfg.n_ctx),
                                  model_lib.lm_loss_fn(model), optim.make_optimizer(ocfg),
                                  optim.learning_rate_schedule(ocfg), devices=devices)
    state = train_state.with_shardings(plan.abstract, plan.shardings)
    batch = jax.ShapeDtypeStruct((run_setup.batch_size, mcfg.n_ctx + 1), jnp.int32, sharding=plan.batch_sharding)
    started = time.perf_counter()
    train = plan.train_step.lower(state, batch)
    lower_seconds = time.perf_counter() - started
    evaluate = plan.eval_step.lower(state.params, batch) if with_eval else None
    return Lowered(train=train, eval=evaluate, state=state, batch=batch, shardings=plan.shardings,
                   mesh=plan.mesh, model_config=mcfg, lower_seconds=lower_seconds)


def compile_steps(config, devices, compiler_options: dict | None = None,
                  with_eval: bool = True) -> Steps:
    """Lowers and compiles the pre-training job's train and eval steps on `devices`
    (see `lower_steps`); `compiler_options` go to both compiles."""
    return compile_lowered(lower_steps(config, devices, with_eval), compiler_options)


def compile_lowered(lowered: Lowered, compiler_options: dict | None = None) -> Steps:
    """Compiles lowered steps; `compiler_options` go to both compiles."""
    lowered_at, cpu_at = time.perf_counter(), time.process_time()
    train, out_of_memory = _compile(lowered.train, compiler_options)
    compiled_at, compile_cpu = time.perf_counter(), time.process_time() - cpu_at
    evaluate = None
    if out_of_memory is None and lowered.eval is not None:
        evaluate, _ = _compile(lowered.eval, compiler_options)
    elif out_of_memory is not None:
        out_of_memory["arguments"] = _bytes_per_chip((lowered.state, lowered.batch))
    return Steps(train=train, eval=evaluate, out_of_memory=out_of_memory,
                 shardings=lowered.shardings, mesh=lowered.mesh, model_config=lowered.model_config,
                 lower_seconds=lowered.lower_seconds, compile_seconds=compiled_at - lowered_at,
                 compile_cpu_seconds=compile_cpu,
                 eval_compile_seconds=time.perf_counter() - compiled_at)


_SIZE = r"([\d.]+)([KMGT]?)"
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _compile(lowered, compiler_options: dict | None = None) -> tuple[Any, dict | None]:
    """(compiled, None), or (None, what the compiler said) when the program cannot fit: a
    TPU compiler refuses to build it at all, reporting the memory it would need."""
    try:
        return lowered.compile(compiler_options=compiler_options or None), None
    except jax.errors.JaxRuntimeError as e:
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        temporaries = re.search(r"HLO temporaries \(" + _SIZE + r"\)", message)
        used = re.search(r"Used " + _SIZE + " of", message)
        found = temporaries or used
        needed = float(found.group(1)) * _UNITS[found.group(2)] if found else 0.0
        return None, {"temporaries" if temporaries else "total": int(needed),
                      "message": message.strip().splitlines()[0]}


def _bytes_per_chip(tree) -> int:
    """Bytes one chip holds of abstract arrays with shardings (the largest shard)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
    return total


# ---------------------------------------------------------------------------------------------
# What the compiler says
# ---------------------------------------------------------------------------------------------

def per_chip_bytes(compiled, out_of_memory: dict | None = None) -> dict:
    """The compiler's memory plan for one chip: the donated state's buffers are reused for
    the new state (aliased), so outputs count only beyond what the arguments already hold.
    Without a program (`out_of_memory`), what the compiler's refusal said it needed."""
    if compiled is None:
        arguments = out_of_memory.get("arguments", 0)
        temporaries = out_of_memory.get("temporaries", 0)
        total = out_of_memory.get("total", arguments + temporaries)
        return {"arguments": arguments, "temporaries": temporaries, "outputs": arguments,
                "aliased": arguments, "code": 0, "total": total}
    stats = compiled.memory_analysis()
    arguments, outputs = stats.argument_size_in_bytes, stats.output_size_in_bytes
    temporaries, aliased = stats.temp_size_in_bytes, stats.alias_size_in_bytes
    code = stats.generated_code_size_in_bytes
    return {"arguments": arguments, "temporaries": temporaries, "outputs": outputs,
            "aliased": aliased, "code": code,
            "total": arguments + outputs - aliased + temporaries + code}


def compiled_flops(compiled) -> float:
    """FLOPs of one chip's program as the compiler counts them (0 when it does not say)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.+?) ([a-z][\w\-]*)\((.*)$")
_CALLED = re.compile(r"(?:body|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_FUSED_COLLECTIVE = re.compile(r"(all-reduce-scatter|reduce-scatter|all-gather|all-reduce|all-to-all|"
                               r"collective-permute)(?:[.\d]*)$")
_CONDITION = re.compile(r"condition=%?([\w.\-]+)")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_LOOP_BOUND = re.compile(r"s32\[\]\S* constant\((\d+)\)")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")


def _result_bytes(shape_text: str, opcode: str) -> int:
    """Bytes of a collective's result on one chip, from its HLO result shape (layouts ignored).

    An async "-start" of a gather, scatter or permute returns (operands..., results...,
    [u32[] contexts]): the second half of its arrays are the results."""
    arrays = [(dtype, dims) for dtype, dims in _ARRAY.findall(shape_text) if dtype in _DTYPE_BYTES]
    if opcode.endswith("-start") and not opcode.startswith("all-reduce") and shape_text.startswith("("):
        arrays = [a for a in arrays if a[1]]  # drop the scalar contexts
        arrays = arrays[len(arrays) // 2:]
    total = 0.0
    for dtype, dims in arrays:
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        total += size * _DTYPE_BYTES[dtype]
    return int(total)


def _trip_count(while_text: str, bodies: dict) -> int:
    """Iterations of a while loop: XLA's known_trip_count when it records one, else the
    bound its condition compares the counter against (JAX's scans count 0, 1, ... < n)."""
    known = _TRIP_COUNT.search(while_text)
    if known:
        return int(known.group(1))
    condition = _CONDITION.search(while_text)
    lines = bodies.get(condition.group(1), []) if condition else []
    bounds = [int(b) for line in lines for b in _LOOP_BOUND.findall(line)]
    if len(bounds) == 1 and any("direction=LT" in line for line in lines):
        return bounds[0]
    return 1


def collectives_per_step(hlo_text: str) -> dict:
    """{kind: {"count", "bytes"}} per step and per chip, from the compiled HLO text.

    An op inside a loop body counts once per iteration (scanned layers, microbatches);
    of a conditional's branches the costliest counts (the train step's update branch).
    Bytes are the op's result on one chip: a whole all-reduce buffer, an all-gather's
    gathered array, a reduce-scatter's shard. Async pairs count at their "-start".
    """
    bodies: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match:
            current = match.group(1)
            bodies[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None:
            if line.startswith("}"):
                current = None
            else:
                bodies[current].append(line)

    memo: dict[str, dict] = {}

    def tally(name: str) -> dict:
        """{key: {"kind", "count", "bytes"}} of one run of computation `name`. A collective
        with a channel_id is keyed by it: XLA:TPU's async collective fusions split one
        collective over a chain of fusions that each hold a copy of it, all with the same
        channel, so that key counts once however many fusions of a run show it."""
        if name in memo:
            return memo[name]
        memo[name] = {}  # guards against cycles
        totals: dict = {}

        def add(other: dict, times: int = 1):
            for key, value in other.items():
                scaled = {**value, "count": value["count"] * times, "bytes": value["bytes"] * times}
                if key not in totals:
                    totals[key] = scaled
                elif key.startswith("channel "):
                    if scaled["bytes"] > totals[key]["bytes"]:
                        totals[key] = scaled
                else:
                    totals[key] = {**scaled, "count": totals[key]["count"] + scaled["count"],
                                   "bytes": totals[key]["bytes"] + scaled["bytes"]}

        def biggest(options: list[dict]) -> dict:
            return max(options, key=lambda t: sum(v["bytes"] for v in t.values()), default={})

        for line in bodies.get(name, []):
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            shape, opcode, rest = match.groups()
            base = opcode.removesuffix("-start")
            if base in COLLECTIVES and not opcode.endswith("-done"):
                channel = _CHANNEL.search(rest)
                key = f"channel {channel.group(1)}" if channel else f"{name}/{line.split('=')[0].strip()}"
                add({key: {"kind": base, "count": 1, "bytes": _result_bytes(shape, opcode)}})
            branches = _BRANCHES.search(rest)
            if branches:
                add(biggest([tally(b.strip().lstrip("%")) for b in branches.group(1).split(",")]))
                continue
            called = _CALLED.findall(rest)
            if opcode == "conditional" and called:
                add(biggest([tally(c) for c in called]))
                continue
            times = 1
            if opcode == "while":
                times = _trip_count(rest, bodies)
            for callee in called:
                if base in COLLECTIVES:
                    continue  # an all-reduce's reduction computation
                fused = _FUSED_COLLECTIVE.match(callee)
                if fused:
                    # XLA:TPU emits a reduce-scatter as a fusion named all-reduce-scatter
                    kind = "reduce-scatter" if fused.group(1) == "all-reduce-scatter" else fused.group(1)
                    add({callee: {"kind": kind, "count": 1, "bytes": _result_bytes(shape, opcode)}}, times)
                    continue
                add(tally(callee), times)
        memo[name] = totals
        return totals

    per_kind: dict = {}
    for value in (tally(entry) if entry else {}).values():
        slot = per_kind.setdefault(value["kind"], {"count": 0, "bytes": 0})
        slot["count"] += value["count"]
        slot["bytes"] += value["bytes"]
    return per_kind


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

NEXT_REMAT = {"none": "dots", "dots": "block"}


def report(config, target: Target, steps: Steps, argv: list[str], effort: str = "full") -> dict:
    mcfg = steps.model_config
    memory = per_chip_bytes(steps.train, steps.out_of_memory)
    eval_memory = per_chip_bytes(steps.eval) if steps.eval is not None else None
    tokens = config.train.batch_size * mcfg.n_ctx
    model_flops = reporting.flops_per_token(mcfg.n_layer, mcfg.d_model, mcfg.d_ff,
                                            mcfg.embedding_rows, mcfg.n_ctx) * tokens
    chips = len(target.devices)
    flops_chip = compiled_flops(steps.train) if steps.train is not None else 0.0
    return {
        "topology": target.name,
        "platform": target.platform,
        "compiled_for": target.description,
        "device_kind": target.devices[0].device_kind,
        "chips": chips,
        "mesh": {k: int(v) for k, v in steps.mesh.shape.items()},
        "fits": memory["total"] <= target.hbm_bytes,
        "hbm_bytes": target.hbm_bytes,
        "per_chip_bytes": memory,
        "eval_per_chip_bytes": eval_memory,
        "flops_per_step": flops_chip * chips,
        "flops_per_step_per_chip": flops_chip,
        "model_flops_per_step": model_flops,
        "collectives": collectives_per_step(steps.train.as_text()) if steps.train is not None else {},
        "compiler_refused": (steps.out_of_memory or {}).get("message"),
        "effort": effort,
        "compiler_options": EFFORTS[effort],
        "lower_seconds": round(steps.lower_seconds, 2),
        "compile_seconds": round(steps.compile_seconds, 2),
        "compile_cpu_seconds": round(steps.compile_cpu_seconds, 2),
        "eval_compile_seconds": round(steps.eval_compile_seconds, 2),
        "batch_size": config.train.batch_size,
        "tokens_per_step": tokens,
        "flags": argv,
        "config": {"model": config.model.to_dict(), "train": config.train.to_dict(),
                   "mesh": config.mesh.to_dict(), "sharding_rules": config.sharding_rules.to_dict()},
        "jax_version": jax.__version__,
    }


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def format_report(result: dict) -> str:
    memory = result["per_chip_bytes"]
    collectives = ", ".join(f"{kind} x{v['count']} ({v['bytes'] / 2 ** 20:,.1f} MiB)"
                            for kind, v in sorted(result["collectives"].items()))
    lines = [
        (f"{result['topology']} ({result['compiled_for']}, {result['chips']} x "
         f"{result['device_kind']}), mesh {result['mesh']}, batch {result['batch_size']}"),
        (f"fits: {result['fits']}  per chip {_gib(memory['total'])} of {_gib(result['hbm_bytes'])} "
         f"(arguments {_gib(memory['arguments'])}, temporaries {_gib(memory['temporaries'])}, "
         f"outputs {_gib(memory['outputs'])} of which {_gib(memory['aliased'])} reuse the donated state)"),
        f"flops per step: compiler {result['flops_per_step']:.3e}, model {result['model_flops_per_step']:.3e}",
        f"collectives per step and chip: {collectives or 'none'}",
        (f"compile ({result['effort']}): {result['compile_seconds']:.1f} s train step "
         f"({result['compile_cpu_seconds']:.1f} s CPU; lowering {result['lower_seconds']:.1f} s)"
         + (f", {result['eval_compile_seconds']:.1f} s eval step" if result["eval_per_chip_bytes"] else "")),
    ]
    if result["effort"] != "full":
        lines.insert(2, "memory plan of the fast compile: an upper estimate of the job's "
                        "(--effort=full compiles exactly as the job does)")
    if result.get("fast_attempt"):
        fast = result["fast_attempt"]
        lines.insert(2, (f"the fast compile's plan ({_gib(fast['per_chip_bytes']['total'])} per chip) did not fit; "
                         f"recompiled as the job compiles ({fast['compile_seconds']:.1f} s fast + this)"))
    if result["compiler_refused"]:
        lines.insert(2, f"the compiler refused the program: {result['compiler_refused']}")
    return "\n".join(lines)


def does_not_fit_line(result: dict, config) -> str:
    need, have = result["per_chip_bytes"]["total"], result["hbm_bytes"]
    remat = config.model.remat
    hint = (f"try --config.model.remat={NEXT_REMAT[remat]}" if remat in NEXT_REMAT
            else f"try --config.train.microbatches={config.train.microbatches * 2}")
    plan = " (the fast compile's plan; --effort=full for the job's)" if result.get("effort") == "fast" else ""
    return (f"needs {need / GIB:.1f} GiB per chip of {have / GIB:.0f} GiB on {result['topology']}{plan}; "
            f"{hint} or a larger slice")


# ---------------------------------------------------------------------------------------------
# The whole answer for one target (the command line: gpt1_jax/cli/aot.py)
# ---------------------------------------------------------------------------------------------

def run(config, topology: str, num_slices: int = 1, num_gpus: int = 1, num_hosts: int = 1,
        argv: list[str] | None = None, effort: str = "auto", eval_step: bool = True) -> dict:
    """Compiles for `topology` and returns the report (see the module docstring)."""
    if effort not in (*EFFORTS, "auto"):
        raise ConfigError(f"effort={effort!r}; expected one of {[*EFFORTS, 'auto']}")
    target = resolve_target(topology, num_slices, num_gpus, num_hosts)
    lowered = lower_steps(config, target.devices, eval_step)
    first = "fast" if effort == "auto" else effort
    result = report(config, target, compile_lowered(lowered, EFFORTS[first]), list(argv or []), first)
    if effort == "auto" and not result["fits"]:
        # The fast plan over-states memory: a program it does not fit may still fit as the job
        # compiles it, so the answer "does not fit" always comes from the full compile.
        fast = {k: result[k] for k in ("per_chip_bytes", "compile_seconds", "compile_cpu_seconds")}
        result = report(config, target, compile_lowered(lowered, EFFORTS["full"]), list(argv or []), "full")
        result["fast_attempt"] = fast
    return result
