"""Restore anywhere (issue 20, item 6): a checkpoint whose parameters are sharded across two
`jax.distributed` processes (fsdp spanning them) loads onto one device for sampling, LM
evaluation and fine-tuning, equal to the values saved.

The saved values are known independently: one process driving the same 2-device fsdp mesh
trains bit for bit like the pair (a reduction over two participants has one order), so its
checkpoint holds exactly what the pair saved. Each consumer of the pair's checkpoint, on one
device, must then do exactly what it does with the single process's checkpoint.
"""
import json
import sys

import jax
import numpy as np
import pytest

import jobs
from gpt1_jax import loading

pytestmark = pytest.mark.slow

MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=1"]
STEPS = ["--config.train.num_steps=2", "--config.checkpoint.every_steps=2"]
TIMEOUT = 600


def _model_flag(module: str) -> str:
    """The flag naming the model in gpt1_jax/cli/<module>.py (`--init_from`, or `--workdir`
    where a command still spells it so)."""
    source = (jobs.REPO / "gpt1_jax" / "cli" / f"{module}.py").read_text()
    return "init_from" if 'DEFINE_string("init_from"' in source else "workdir"


@pytest.fixture(scope="module")
def checkpoints(corpus, tmp_path_factory):
    """{"pair": step 2 written by two processes of one device each, "single": step 2 of one
    process driving the same mesh on two devices}."""
    root = tmp_path_factory.mktemp("restore_anywhere")
    pair, single = root / "pair", root / "single"
    address = f"127.0.0.1:{jobs.free_port()}"
    jobs.run_processes([jobs.pretrain_argv(corpus, pair, *MESH, *STEPS, *jobs.process_flags(address, 2, i))
                        for i in range(2)], jobs.env(1), timeout=TIMEOUT)
    jobs.run(jobs.pretrain_argv(corpus, single, *MESH, *STEPS), jobs.env(2), timeout=TIMEOUT)
    return {"pair": pair / "checkpoints" / "2", "single": single / "checkpoints" / "2"}


def test_the_pairs_parameters_are_sharded_across_its_processes(checkpoints):
    # Each process wrote the shards it held: process 1's part of the store holds array data.
    for process in (0, 1):
        data = checkpoints["pair"] / "state" / f"ocdbt.process_{process}" / "d"
        assert data.is_dir() and any(data.iterdir()), process


def test_loading_onto_one_device_gives_the_saved_values(checkpoints):
    saved = jobs.saved_state(checkpoints["single"].parent.parent, 2)
    assert jobs.saved_state(checkpoints["pair"].parent.parent, 2).keys() == saved.keys()
    loaded = loading.load(checkpoints["pair"])  # what sample, evaluate_lm and init_from call
    leaves = jax.tree_util.tree_leaves_with_path(loaded.params)
    assert len(leaves) == len([key for key in saved if key.startswith("['params']")])
    for path, value in leaves:
        assert value.sharding.device_set == {jax.local_devices()[0]}
        np.testing.assert_array_equal(np.asarray(value), saved["['params']" + jax.tree_util.keystr(path)])


def _command(module: str, step_dir, *flags) -> list[str]:
    return [sys.executable, "-m", f"gpt1_jax.cli.{module}", f"--{_model_flag(module)}={step_dir}", *flags]


def test_sampling_on_one_device_matches_the_saved_model(checkpoints):
    flags = ["--prompt=It was a dark and stormy night", "--max_new_tokens=6", "--temperature=0"]
    pair, single = (jobs.run(_command("sample", checkpoints[which], *flags), jobs.env(1)).stdout
                    for which in ("pair", "single"))
    assert pair.strip() and pair == single


def test_lm_evaluation_on_one_device_matches_the_saved_model(checkpoints, corpus):
    def scores(which) -> dict:
        result = jobs.run(_command("evaluate_lm", checkpoints[which], f"--text={corpus / 'book.txt'}"), jobs.env(1))
        record = json.loads(result.stdout.strip().splitlines()[-1])
        return {k: v for k, v in record.items() if not k.endswith("_secs") and k != "init_from"}  # not timings
    pair = scores("pair")
    assert pair["tokens"] > 0 and pair == scores("single")


def test_fine_tuning_from_it_on_one_device_trains_like_from_the_saved_model(checkpoints, shared_data, tmp_path):
    def finetune(init_from, workdir):
        jobs.main("--config=configs/finetune.py:sst2", f"--workdir={workdir}", f"--config.init_from={init_from}",
                  f"--config.data.data_dir={shared_data / 'glue'}", "--config.data.max_train_examples=16",
                  "--config.data.max_eval_examples=8", "--config.train.batch_size=4",
                  "--config.train.num_steps=2", "--config.checkpoint.every_steps=2")
        return jobs.saved_state(workdir, 2)
    jobs.assert_same_state(finetune(checkpoints["pair"], tmp_path / "pair"),
                           finetune(checkpoints["single"], tmp_path / "single"))
