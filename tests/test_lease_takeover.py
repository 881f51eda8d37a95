"""A job that has lost its gs:// workdir lease (another job took the workdir over) stops
writing: its next step fails with one `error:` line, and no checkpoint is saved after it."""
import json
import re
import time

import pytest

import jobs
from gcs import BUCKET
from gpt1_jax.storage import workdir as workdir_lib
from gpt1_jax.train import stopping

LEASE_TTL_SECS = 3


def test_an_aborted_stop_fails_the_next_step_instead_of_saving_it():
    with stopping.StopRequested(grace_period_secs=0) as stop:
        assert stop.at_step(1) is False
        stop.abort("lost the workdir lease gs://b/run/.lock")
        with pytest.raises(stopping.AbortedError, match=r"step 2 without saving it: lost the workdir lease"):
            stop.at_step(2)


def lease_blob(url: str):
    from google.cloud import storage
    name = url.removeprefix(f"gs://{BUCKET}/") + "/" + workdir_lib.LOCK_FILE
    return storage.Client().bucket(BUCKET).get_blob(name)


@pytest.mark.slow
def test_a_job_whose_lease_is_taken_over_stops_with_an_error_and_saves_no_more(corpus, gcs_bucket_url):
    workdir = gcs_bucket_url
    argv = jobs.pretrain_argv(corpus, workdir, "--config.train.num_steps=100000",
                              "--config.checkpoint.every_steps=1", "--config.checkpoint.max_to_keep=100000")
    process = jobs.start(argv, jobs.env(GPT1_JAX_LEASE_TTL_SECS=str(LEASE_TTL_SECS)))
    try:
        jobs.wait_for(lambda: len(jobs.finished_steps(workdir)) >= 2, process, poll=0.2)
        # Another job takes the workdir over (as one would after this job missed its renewals).
        blob = lease_blob(workdir)
        intruder = {"pid": 1, "host": "elsewhere", "started": "then", "expires_at": time.time() + 600}
        blob.upload_from_string(json.dumps(intruder), if_generation_match=blob.generation)
        before = jobs.finished_steps(workdir)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == stopping.EXIT_FAILED, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"error: stopped at step (\d+) without saving it: lost the workdir lease "
                         r"\S+: it is now held by pid 1 on elsewhere.*", last)
    assert match, stderr[-3000:]
    assert "Traceback" not in stderr
    after = jobs.finished_steps(workdir)
    # Nothing saved from the step where it found out on, and nothing committed was removed.
    assert after and max(after) < int(match.group(1)), (after, last)
    assert set(before) <= set(after)
    # The other job's lease stays as it wrote it.
    assert json.loads(lease_blob(workdir).download_as_text())["host"] == "elsewhere"
