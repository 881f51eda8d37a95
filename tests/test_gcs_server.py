"""The gs:// stack this project relies on, against a real (fake-gcs-server) GCS server:
etils.epath through gcsfs, orbax checkpoints through TensorStore, and google-cloud-storage's
create-if-absent, each in this process and, for the environment, in a child process."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gcs import BUCKET, gcs_env


def test_epath_reads_writes_lists_and_removes_on_gs(gcs_bucket_url):
    root = epath.Path(gcs_bucket_url)
    assert not root.exists()
    (root / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "run" / "checkpoints" / "2" / "state").write_bytes(b"\x00\x01")
    (root / "run" / "summary.json").write_text("{}")

    assert root.exists() and root.is_dir()
    assert (root / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (root / "run" / "checkpoints" / "2" / "state").read_bytes() == b"\x00\x01"
    assert (root / "run" / "checkpoints").is_dir()
    assert not (root / "run" / "summary.json").is_dir()
    assert sorted(p.name for p in (root / "run").glob("*.json*")) == ["metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in (root / "run").iterdir()) == ["checkpoints", "metrics.jsonl",
                                                                "summary.json"]

    (root / "run" / "checkpoints").rmtree()
    assert not (root / "run" / "checkpoints").exists()
    assert (root / "run" / "metrics.jsonl").exists()
    (root / "run").rmtree()
    assert not root.exists()


def test_child_processes_inherit_the_server(gcs_bucket_url):
    path = epath.Path(gcs_bucket_url) / "from_parent.txt"
    path.write_text("parent")
    child = ("import sys; from etils import epath; p = epath.Path(sys.argv[1]); "
             "print(p.read_text()); (p.parent / 'from_child.txt').write_text('child')")
    # Only the variables gcs_env() names: a job started with a hand-built environment works.
    env = {"PATH": "/usr/bin:/bin", **gcs_env()}
    result = subprocess.run([sys.executable, "-c", child, str(path)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "parent"
    assert (path.parent / "from_child.txt").read_text() == "child"


def _state(step: int, sharding: NamedSharding) -> dict:
    return {"params": {"w_DxF": jax.device_put(jnp.arange(64.0).reshape(8, 8) * step, sharding),
                       "b_F": jnp.full((8,), step, jnp.float32)},
            "step": jnp.asarray(step, jnp.int32)}


def test_orbax_checkpoint_manager_saves_and_restores_sharded_state_on_gs(gcs_bucket_url):
    devices = np.array(jax.devices()[:4]).reshape(2, 2)
    sharding = NamedSharding(Mesh(devices, ("data", "fsdp")), PartitionSpec("data", "fsdp"))
    directory = epath.Path(gcs_bucket_url) / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    with ocp.CheckpointManager(directory, options=options) as manager:
        for step in (1, 2, 3):
            manager.save(step, args=ocp.args.StandardSave(_state(step, sharding)))
        manager.wait_until_finished()
        assert manager.all_steps() == [2, 3]

    # A step that was being written when its job died: data but no commit marker.
    unfinished = directory / "4" / "default"
    unfinished.mkdir(parents=True)
    (unfinished / "_METADATA").write_text("{}")

    with ocp.CheckpointManager(directory, options=options) as manager:
        assert manager.all_steps() == [2, 3]
        assert manager.latest_step() == 3
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(0, sharding))
        restored = manager.restore(3, args=ocp.args.StandardRestore(abstract))
    expected = _state(3, sharding)
    np.testing.assert_array_equal(restored["params"]["w_DxF"], expected["params"]["w_DxF"])
    np.testing.assert_array_equal(restored["params"]["b_F"], expected["params"]["b_F"])
    assert int(restored["step"]) == 3
    assert restored["params"]["w_DxF"].sharding == sharding
    # OCDBT: the arrays live in the step's key-value store, not one folder per array.
    assert (directory / "3" / "default" / "manifest.ocdbt").exists()


def test_create_if_absent_refuses_a_second_create(gcs_bucket_url):
    from google.api_core import exceptions
    from google.cloud import storage
    bucket = storage.Client().bucket(BUCKET)
    name = gcs_bucket_url.removeprefix(f"gs://{BUCKET}/") + "/.lock"
    first = bucket.blob(name)
    first.upload_from_string("first", if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob(name).upload_from_string("second", if_generation_match=0)
    # Replacing needs the current generation; a stale one is refused as well.
    current = first.generation
    bucket.blob(name).upload_from_string("third", if_generation_match=current)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob(name).upload_from_string("fourth", if_generation_match=current)
    assert bucket.blob(name).download_as_text() == "third"
