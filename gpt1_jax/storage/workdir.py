"""One job per workdir: a job claims `<workdir>/.lock` before it writes anything there.

What the claim guarantees depends on where the workdir is:

Local disks (and NFSv4, GPFS, BeeGFS, Lustre mounted with `flock`): an advisory
`fcntl.flock` on the lock file, held for the whole job. While a job holds it, no second
job that claims the same workdir starts. The kernel drops it when the process ends in any
way (exit, exception, `kill -9`), so a lock left by a dead job never blocks a restart:
only a live holder does. The file's text (pid, host, start time) is for humans: it names
the holder when a second job is refused, and it may outlive its holder.

Cluster file systems without `flock` (NFSv3 without lockd, Lustre without `flock`, some
FUSE mounts): where `flock` fails with ENOLCK, EOPNOTSUPP, ENOSYS or EINVAL, the job logs
a warning naming the file system problem and runs WITHOUT a lock: nothing stops a second
job in the same workdir, so the user must. Where such a file system accepts `flock` but
keeps it on one host (Lustre `localflock`, FUSE without lock support), the lock guards
only against a second job on the same host.

gs:// (any workdir whose name starts with gs://): a lease, the object `<workdir>/.lock`
holding JSON (pid, host, start time, `expires_at`). It is created only if absent
(`if_generation_match=0`), renewed every ttl/3 seconds by a daemon thread only if it is
unchanged since our last write (`if_generation_match=<our generation>`), and deleted on
release only if it is still ours. A second job refuses to start while the lease has not
expired; once it has (its holder died, e.g. `kill -9`, and stopped renewing), one job takes
it over: the takeover is conditional on the expired generation, so of two racing takers
exactly one wins. GCS makes every step atomic; what the lease cannot promise is that a
holder is never overtaken while alive: a holder that cannot renew for a whole TTL
(network outage, a paused process) may see a second job take the workdir over. The first
finds out at its next renewal, logs an error, `lost()` turns True and `on_lost(message)` is
called: the job (main.py) turns it into a stop that fails at its next step, before any
further checkpoint. Writes between the takeover and that step are not fenced. Expiry is
judged by the taker's clock against the holder's, so hosts' clocks must agree to well
within the TTL (NTP does). After a `kill -9` a restart waits up to one TTL (60 s by default;
`ttl_secs=` or the environment variable GPT1_JAX_LEASE_TTL_SECS).

Any other scheme (s3://, az://, hdfs://, ...) has no lease here: the claim is refused
with a WorkdirError before anything is created, locally or remotely.

Multi-process jobs (jax.distributed) share one workdir, so only process 0 claims it:
its processes must not refuse each other. If process 0 is refused it exits, and the
distributed runtime ends the other processes when they lose their coordinator.
"""
import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Callable

from gpt1_jax.errors import UserError
from gpt1_jax.storage import gcs_objects, rundir

LOCK_FILE = ".lock"
DEFAULT_LEASE_TTL_SECS = 60.0
LEASE_TTL_ENV = "GPT1_JAX_LEASE_TTL_SECS"

log = logging.getLogger(__name__)


class WorkdirError(UserError, RuntimeError):
    """A workdir this job cannot use."""


class WorkdirLockedError(WorkdirError):
    """The workdir is claimed by another live job."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` creates the workdir if needed and claims it.

    `workdir` is a local path or a gs:// URL (str, pathlib or etils.epath path). Raises
    WorkdirError when the workdir cannot be created or written, or is on storage without a
    lock here, and WorkdirLockedError, naming the holder, when a live job holds it.
    `ttl_secs` is the gs:// lease's lifetime; `on_lost(message)` is called (from the
    lease's thread) if another job takes the workdir over.
    """

    def __init__(self, workdir, ttl_secs: float | None = None,
                 on_lost: Callable[[str], None] | None = None):
        self.workdir = workdir
        name = os.fspath(workdir)
        kind = rundir.scheme(name)
        if kind == "gs":
            self._claim = _GcsLease(name, _lease_ttl(ttl_secs), on_lost)
        elif not kind:
            self._claim = _FileLock(pathlib.Path(os.fspath(rundir.path(name))))
        else:
            raise WorkdirError(f"workdir {name}: no workdir lock for {kind}:// storage, so two "
                               f"jobs could write it at once; use a local path or gs://")

    @property
    def path(self):
        """Where the claim lives: a local path or a gs:// URL."""
        return self._claim.path

    def acquire(self) -> None:
        self._claim.acquire()

    def release(self) -> None:
        self._claim.release()

    def lost(self) -> bool:
        """True once another job has taken the workdir over (only a gs:// lease can be lost)."""
        return self._claim.lost()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _lease_ttl(ttl_secs: float | None) -> float:
    if ttl_secs is None:
        ttl_secs = float(os.environ.get(LEASE_TTL_ENV, DEFAULT_LEASE_TTL_SECS))
    if ttl_secs <= 0:
        raise WorkdirError(f"the workdir lease's TTL must be positive, got {ttl_secs}")
    return ttl_secs


def _now_text() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# --- local and shared file systems: flock --------------------------------------------------------

class _FileLock:
    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.path = workdir / LOCK_FILE
        self._fd = None

    def acquire(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, rundir.new_file_mode())
        except OSError as e:
            raise WorkdirError(f"workdir {self.workdir} is not writable: {e.strerror} "
                               f"({e.filename or self.path})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno in rundir.NO_FLOCK_ERRNOS:
                log.warning("the file system of %s does not support flock (%s): this job runs "
                            "WITHOUT a workdir lock, so make sure no other job uses %s",
                            self.path, e.strerror or errno.errorcode.get(e.errno, e.errno),
                            self.workdir)
                locked = False
            else:
                holder = _read_text(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise WorkdirError(f"cannot lock {self.path}: {e.strerror}") from e
                raise WorkdirLockedError(
                    f"workdir {self.workdir} is in use by another job "
                    f"({holder or 'holder unknown'}); wait for it to end or choose another "
                    f"workdir") from None
        # Written only once the lock is ours, so the text names the live holder.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {_now_text()}"
                      f"{'' if locked else ' (not locked: no flock here)'}\n".encode(), 0)
        self._fd = fd
        self._locked = locked

    def release(self) -> None:
        # The file stays: deleting it would let a job that opened it just before the
        # delete and a job that creates a fresh one both hold "the" lock.
        if self._fd is not None:
            if self._locked:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def lost(self) -> bool:
        return False


def _read_text(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


# --- gs://: a lease object ------------------------------------------------------------------------

def _describe(record: dict) -> str:
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"started {record.get('started', '?')}")


class _GcsLease:
    def __init__(self, url: str, ttl_secs: float, on_lost: Callable[[str], None] | None = None):
        self.workdir = url.rstrip("/")
        self.path = f"{self.workdir}/{LOCK_FILE}"
        gcs_objects.split_url(url)  # a bucket is named
        self.ttl_secs = ttl_secs
        self._on_lost = on_lost
        self._object = gcs_objects.GcsObject(self.path, timeout_secs=max(5.0, ttl_secs / 3))
        self._token = uuid.uuid4().hex  # tells our own lease from another job's
        self._started = _now_text()
        self._generation = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": self._started, "token": self._token,
                           "renewed_at": now, "expires_at": now + self.ttl_secs,
                           "ttl_secs": self.ttl_secs}).encode()

    def _read(self):
        """(generation, record) of the lease object now, or None when there is none."""
        version = self._object.read()
        if version is None:
            return None
        try:
            record = json.loads(version.data)
        except ValueError:
            record = {}
        if not isinstance(record, dict) or "expires_at" not in record:
            # Not written by this module: judge it by its age, as a lease written then.
            updated = version.updated.timestamp() if version.updated else time.time()
            record = {"expires_at": updated + self.ttl_secs}
        return version.generation, record

    def acquire(self) -> None:
        try:
            self._generation = self._claim()
        except gcs_objects.transient_errors() as e:
            raise WorkdirError(f"workdir {self.workdir} is not writable: cannot create "
                               f"{self.path}: {e}") from e
        self._stop.clear()
        self._lost.clear()
        self._thread = threading.Thread(target=self._renew_until_released, daemon=True,
                                        name=f"workdir-lease {self.workdir}")
        self._thread.start()

    def _claim(self) -> int:
        for _ in range(5):  # each retry follows a change by another job; a few suffice
            try:
                return self._object.create(self._record())
            except gcs_objects.Changed:
                pass
            current = self._read()
            if current is None:
                continue  # released in between: try to create it again
            generation, record = current
            if record.get("token") == self._token:
                return generation  # our create landed, and its answer was lost and retried
            remaining = record["expires_at"] - time.time()
            if remaining > 0:
                raise WorkdirLockedError(
                    f"workdir {self.workdir} is in use by another job ({_describe(record)}; "
                    f"its lease {self.path} expires in {remaining:.0f} s unless renewed); "
                    f"wait for it to end or choose another workdir")
            try:
                generation = self._object.replace(self._record(), generation)
            except gcs_objects.Changed:
                continue  # renewed, released or taken by another job in between
            log.warning("took over the expired lease %s of %s (expired %.0f s ago)",
                        self.path, _describe(record), -remaining)
            return generation
        raise WorkdirLockedError(f"workdir {self.workdir}: its lease {self.path} keeps "
                                 f"changing; another job is claiming it")

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.ttl_secs / 3):
            try:
                self._generation = self._object.replace(self._record(), self._generation)
            except gcs_objects.Changed:
                current = self._read_quietly()
                if current is not None and current[1].get("token") == self._token:
                    self._generation = current[0]  # a retried renewal of ours
                    continue
                holder = _describe(current[1]) if current else "nobody (deleted)"
                message = (f"lost the workdir lease {self.path}: it is now held by {holder}; "
                           f"another job may be writing to {self.workdir}")
                log.error("%s", message)
                self._lost.set()
                if self._on_lost is not None:
                    self._on_lost(message)
                return
            except gcs_objects.transient_errors() as e:  # network trouble: retry at the next tick
                log.warning("could not renew the workdir lease %s (%s); retrying", self.path, e)

    def _read_quietly(self):
        try:
            return self._read()
        except gcs_objects.transient_errors():  # the renewal thread only reports; it must not die here
            return None

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._lost.is_set():
            return
        try:
            self._object.delete(self._generation)
        except gcs_objects.Changed:
            log.warning("the workdir lease %s was no longer ours at release; left as it is",
                        self.path)
        except gcs_objects.transient_errors() as e:
            log.warning("could not delete the workdir lease %s (%s); it expires in %.0f s",
                        self.path, e, self.ttl_secs)

    def lost(self) -> bool:
        return self._lost.is_set()
