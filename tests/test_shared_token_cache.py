"""One token cache for all hosts: a job of several processes without `data.cache_dir` keeps
its token cache in `<workdir>/token_cache/` (here on gs://), built once by process 0; the
other processes read it from there and never tokenize, nor hash the corpus themselves."""
import pytest

import jobs
from gpt1_jax.storage import rundir

pytestmark = pytest.mark.slow

PAIR = [*jobs.TINY_MODEL, "--config.train.batch_size=8", "--config.train.log_every_steps=1",
        "--config.train.eval_batches=1", "--config.train.eval_every_steps=0",
        "--config.optimizer.warmup_steps=2", "--config.data.val_fraction=0.1",
        "--config.train.num_steps=2", "--config.train.sample_tokens=0"]


def test_process_1_of_a_2_process_job_reads_process_0s_cache_from_the_bucket(corpus, gcs_bucket_url, tmp_path):
    workdir = gcs_bucket_url
    address = f"127.0.0.1:{jobs.free_port()}"
    processes = [
        jobs.start(jobs.argv("configs/tiny.py", workdir, *PAIR, f"--config.data.text_files={corpus / 'book.txt'}",
                             "--config.distributed.initialize=True",
                             f"--config.distributed.coordinator_address={address}",
                             "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                             "--config.distributed.heartbeat_timeout_secs=20"),
                   # Each process its own local cache root, as each host of a pod has its own disk.
                   jobs.env(2, **{rundir.CACHE_ROOT_ENV: str(tmp_path / f"host{i}")}))
        for i in range(2)]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=400)
            results.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for i, (status, stderr) in enumerate(results):
        assert status == 0, f"process {i}:\n{stderr[-3000:]}"
    (_, stderr0), (_, stderr1) = results

    cache_dir = rundir.path(workdir) / rundir.TOKEN_CACHE
    [key] = [name.removesuffix(".json") for name in rundir.list_names(cache_dir) if name.endswith(".json")
             and ".reference." not in name]
    assert f"{key}.npy" in rundir.list_names(cache_dir)
    assert "tokenized text files [book.txt]" in stderr0  # process 0 built it
    assert "tokenized" not in stderr1, stderr1[-3000:]  # process 1 never did
    assert "token cache: read process 0's text files [book.txt]" in stderr1, stderr1[-3000:]
    # Process 1's disk holds only the copy it downloaded, no cache it built.
    assert not (tmp_path / "host1" / "tokens").exists()
    [copy] = (tmp_path / "host1" / "remote").glob(f"*/{key}.npy")
    assert copy.read_bytes() == (cache_dir / f"{key}.npy").read_bytes()
