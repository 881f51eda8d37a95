"""The device mesh and the mapping of logical parameter axes onto it.

The model names the axes of every parameter ("vocab", "embed", "heads", "mlp", ...);
`logical_axis_rules` (from the config) say which mesh axes each logical axis is split
over. A mesh axis that does not divide a dimension is dropped for that parameter
(e.g. GPT-1's 40,478-row vocabulary over a tensor axis of 4), so any rule set is valid
on any mesh: the layout degrades to replication, never to an error.
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gpt1_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# The batch is split over every data-parallel axis; FSDP shards the weights' "embed"
# dimension; tensor parallelism splits heads, the FFN width and the vocabulary.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),   # the stacked-blocks axis of model.scan_layers: every device holds all layers
)


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves the mesh axis sizes; one size of -1 takes the remaining devices."""
    unknown = [name for name in MESH_AXES if sizes.get(name, 1) == -1]
    if len(unknown) > 1:
        raise ConfigError(f"mesh: only one axis may be -1, got {unknown}")
    known = int(np.prod([sizes.get(n, 1) for n in MESH_AXES if n not in unknown]))
    if unknown:
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices are not divisible by the fixed axes {sizes}")
        sizes = {**sizes, unknown[0]: num_devices // known}
    shape = tuple(int(sizes.get(n, 1)) for n in MESH_AXES)
    if int(np.prod(shape)) != num_devices:
        raise ConfigError(f"mesh: axes {dict(zip(MESH_AXES, shape))} need {int(np.prod(shape))} "
                         f"devices but {num_devices} are available")
    return shape


def make_mesh(sizes: dict[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices, with Auto axes for GSPMD."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    try:
        device_grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        # Topology-aware placement is unavailable for some device kinds (e.g. CPU
        # processes); the plain order is always valid.
        device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_axes_for(logical_name, rules: dict) -> tuple[str, ...]:
    if logical_name is None:
        return ()
    if logical_name not in rules:
        raise ConfigError(f"sharding: logical axis {logical_name!r} has no rule in "
                         f"logical_axis_rules {sorted(rules)}")
    target = rules[logical_name]
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_mesh_spec(logical: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                         rules: Sequence[tuple]) -> PartitionSpec:
    """Mesh PartitionSpec for one array from its logical axis names.

    Mesh axes that do not divide the dimension, or are already used by an earlier
    dimension, are left out (that dimension is then replicated over them).
    """
    rules = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
        axes = []
        for axis in _mesh_axes_for(name, rules):
            size = mesh.shape[axis]
            group = int(np.prod([mesh.shape[a] for a in axes])) * size
            if axis not in used and size > 1 and dim % group == 0:
                axes.append(axis)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def tree_shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple]) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

    Unboxed leaves (step counters, RNG keys, optimizer counts) are replicated.
    """
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = logical_to_mesh_spec(leaf.names, leaf.value.shape, mesh, rules)
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map(one, boxed_tree,
                                  is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _batch_axes(mesh: Mesh, rules: Sequence[tuple]) -> tuple[str, ...]:
    return tuple(a for a in _mesh_axes_for("batch", dict(rules)) if mesh.shape[a] > 1)


def data_parallel_size(mesh: Mesh, rules: Sequence[tuple]) -> int:
    """How many ways the batch is split: a global batch size must be a multiple of it."""
    return int(np.prod([mesh.shape[a] for a in _batch_axes(mesh, rules)]))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple], ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, ...] batch: rows over the axes of the "batch" rule."""
    axes = _batch_axes(mesh, rules)
    first = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def assemble_batch(read_rows: Callable[[slice], np.ndarray], sharding: NamedSharding,
                   global_shape: tuple[int, ...]) -> jax.Array:
    """The global batch as one sharded array, each process reading only the rows its own
    devices hold: `read_rows(rows)` returns the batch's rows `rows` (a slice), whole.

    Which rows a process needs follows from where the sharding puts them, so any mesh
    layout across hosts (a `tensor` or `fsdp` axis spanning processes included) gets
    consistent data; a row block replicated on several local devices is read once.
    """
    cache: dict[tuple, np.ndarray] = {}

    def shard(index: tuple) -> np.ndarray:
        rows = index[0] if index else slice(None)
        key = (rows.start, rows.stop, rows.step)
        if key not in cache:
            cache[key] = read_rows(rows)
        return cache[key][(slice(None),) + tuple(index[1:])]
    return jax.make_array_from_callback(global_shape, sharding, shard)
