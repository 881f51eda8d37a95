"""The workdir lock: flock on local disks, a warning where flock is missing, the gs:// lease
(against a real GCS server) that dies with its holder only after its TTL, and storage
without a lock (s3://, az://, hdfs://) refused before anything is created."""
import errno
import fcntl
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

import jobs
from gcs import BUCKET
from gpt1_jax.storage import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from gpt1_jax.storage import workdir
lock = workdir.WorkdirLock(sys.argv[1], ttl_secs=float(sys.argv[2]))
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def hold_in_child(workdir, ttl_secs=60.0) -> subprocess.Popen:
    """A process that claims `workdir` and then sleeps (until killed)."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(ttl_secs)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    if line.strip() != "locked":
        child.kill()
        raise AssertionError(f"the holder did not lock: {line}{child.communicate()[1][-2000:]}")
    return child


def kill_9(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL


# --- local disks ---------------------------------------------------------------------------------

def test_local_lock_refuses_a_second_holder_until_the_first_dies(tmp_path):
    workdir = tmp_path / "run"
    child = hold_in_child(workdir)
    try:
        with pytest.raises(workdir_lib.WorkdirLockedError) as refused:
            workdir_lib.WorkdirLock(workdir).acquire()
        assert f"pid {child.pid} on {socket.gethostname()}" in str(refused.value)
    finally:
        kill_9(child)
    with workdir_lib.WorkdirLock(workdir) as lock:
        assert (workdir / workdir_lib.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
        assert not lock.lost()


def test_without_flock_support_the_job_warns_and_runs_unlocked(tmp_path, monkeypatch, caplog):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", no_flock)
    workdir = tmp_path / "nfs3"
    with caplog.at_level(logging.WARNING, logger="gpt1_jax.storage.workdir"), \
            workdir_lib.WorkdirLock(workdir):
        assert f"pid {os.getpid()} " in (workdir / workdir_lib.LOCK_FILE).read_text()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "does not support flock" in warnings[0], warnings
    assert "WITHOUT a workdir lock" in warnings[0]


def test_other_flock_errors_still_refuse_to_start(tmp_path, monkeypatch):
    def broken(fd, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(workdir_lib.WorkdirError, match="cannot lock"):
        workdir_lib.WorkdirLock(tmp_path).acquire()


def test_local_lock_file_gets_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with workdir_lib.WorkdirLock(tmp_path / "run"):
            mode = (tmp_path / "run" / workdir_lib.LOCK_FILE).stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o640


# --- storage without a lock ----------------------------------------------------------------------

@pytest.mark.parametrize("url", ["s3://bucket/run", "az://container/run", "hdfs://namenode/run"])
def test_a_workdir_on_storage_without_a_lock_is_refused_creating_nothing(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scheme = url.split("://")[0]
    with pytest.raises(workdir_lib.WorkdirError, match=f"{scheme}://"):
        workdir_lib.WorkdirLock(url).acquire()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("url", ["s3://bucket/run", "hdfs://namenode/run"])
def test_a_job_in_a_workdir_without_a_lock_is_one_error_line(url, tmp_path):
    # Run from an empty folder (the repository on PYTHONPATH): a local `s3:` or `hdfs:` folder
    # would appear there.
    result = subprocess.run(
        [sys.executable, "-m", "gpt1_jax.cli.main", f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={url}"],
        cwd=tmp_path, env=jobs.env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, jobs.output(result)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and f"{url.split('://')[0]}://" in lines[-1], jobs.output(result)
    assert "Traceback" not in result.stderr and sum(line.startswith("error:") for line in lines) == 1
    assert not list(tmp_path.iterdir())
    assert not (REPO / f"{url.split('://')[0]}:").exists()


# --- gs:// leases --------------------------------------------------------------------------------

def lease_object(url: str):
    from google.cloud import storage
    name = url.removeprefix(f"gs://{BUCKET}/") + "/" + workdir_lib.LOCK_FILE
    return storage.Client().bucket(BUCKET).get_blob(name)


def test_gs_lease_refuses_a_second_job_until_released(gcs_bucket_url):
    first = workdir_lib.WorkdirLock(gcs_bucket_url, ttl_secs=30)
    first.acquire()
    record = json.loads(lease_object(gcs_bucket_url).download_as_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["expires_at"] > time.time() + 20
    with pytest.raises(workdir_lib.WorkdirLockedError) as refused:
        workdir_lib.WorkdirLock(gcs_bucket_url, ttl_secs=30).acquire()
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(refused.value)
    first.release()
    assert lease_object(gcs_bucket_url) is None
    with workdir_lib.WorkdirLock(gcs_bucket_url + "/", ttl_secs=30) as second:  # same workdir
        assert not second.lost()
    assert lease_object(gcs_bucket_url) is None


def test_gs_lease_of_a_killed_job_is_taken_over_after_its_ttl(gcs_bucket_url, caplog):
    ttl = 2.0
    child = hold_in_child(gcs_bucket_url, ttl_secs=ttl)
    try:
        with pytest.raises(workdir_lib.WorkdirLockedError) as refused:
            workdir_lib.WorkdirLock(gcs_bucket_url, ttl_secs=ttl).acquire()
        assert f"pid {child.pid} on {socket.gethostname()}" in str(refused.value)
    finally:
        kill_9(child)
    killed_at = time.time()
    expires_at = json.loads(lease_object(gcs_bucket_url).download_as_text())["expires_at"]
    taker = workdir_lib.WorkdirLock(gcs_bucket_url, ttl_secs=ttl)
    refusals = 0
    while True:
        try:
            with caplog.at_level(logging.WARNING, logger="gpt1_jax.storage.workdir"):
                taker.acquire()
            break
        except workdir_lib.WorkdirLockedError:
            refusals += 1
            assert time.time() < killed_at + 3 * ttl, "the dead job's lease never expired"
            time.sleep(0.2)
    try:
        assert time.time() >= expires_at  # not before the dead holder's lease ran out
        assert refusals >= 1 or killed_at >= expires_at - 0.5
        assert any("took over the expired lease" in r.getMessage() and f"pid {child.pid} " in
                   r.getMessage() for r in caplog.records)
        assert json.loads(lease_object(gcs_bucket_url).download_as_text())["pid"] == os.getpid()
    finally:
        taker.release()


@pytest.mark.slow
def test_gs_lease_renewal_keeps_a_live_holder_and_reports_a_takeover(gcs_bucket_url, caplog):
    ttl = 1.5
    told = []
    holder = workdir_lib.WorkdirLock(gcs_bucket_url, ttl_secs=ttl, on_lost=told.append)
    holder.acquire()
    try:
        first_generation = lease_object(gcs_bucket_url).generation
        time.sleep(2.5 * ttl)  # well past the first expiry time: only renewal keeps it
        assert lease_object(gcs_bucket_url).generation != first_generation
        with pytest.raises(workdir_lib.WorkdirLockedError):
            workdir_lib.WorkdirLock(gcs_bucket_url, ttl_secs=ttl).acquire()
        assert not holder.lost()

        # Another job overwrites the lease (as a taker would after a missed renewal).
        blob = lease_object(gcs_bucket_url)
        intruder = {"pid": 1, "host": "elsewhere", "started": "then",
                    "expires_at": time.time() + 600}
        blob.upload_from_string(json.dumps(intruder), if_generation_match=blob.generation)
        with caplog.at_level(logging.ERROR, logger="gpt1_jax.storage.workdir"):
            deadline = time.time() + 3 * ttl
            while not holder.lost() and time.time() < deadline:
                time.sleep(0.1)
        assert holder.lost()
        assert any("lost the workdir lease" in r.getMessage() and "pid 1 on elsewhere" in
                   r.getMessage() for r in caplog.records)
        assert len(told) == 1 and "pid 1 on elsewhere" in told[0]  # the job is told, once
    finally:
        holder.release()
    # Release leaves the other job's lease alone.
    assert json.loads(lease_object(gcs_bucket_url).download_as_text())["host"] == "elsewhere"


def test_gs_lease_ttl_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(workdir_lib.LEASE_TTL_ENV, "2.5")
    assert workdir_lib.WorkdirLock("gs://b/run")._claim.ttl_secs == 2.5
    assert workdir_lib.WorkdirLock("gs://b/run", ttl_secs=7)._claim.ttl_secs == 7
    monkeypatch.delenv(workdir_lib.LEASE_TTL_ENV)
    assert workdir_lib.WorkdirLock("gs://b/run")._claim.ttl_secs == 60
    assert workdir_lib.WorkdirLock("gs://b/run").path == "gs://b/run/.lock"
