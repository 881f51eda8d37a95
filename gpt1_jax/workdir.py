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
finds out at its next renewal, logs an error and `lost()` turns True; its writes are not
fenced. Expiry is judged by the taker's clock against the holder's, so hosts' clocks must
agree to well within the TTL (NTP does). After a `kill -9` a restart waits up to one TTL
(60 s by default; `ttl_secs=` or the environment variable GPT1_JAX_LEASE_TTL_SECS).

Multi-process jobs (jax.distributed) share one workdir, so only process 0 claims it:
its processes must not refuse each other. If process 0 is refused it exits, and the
distributed runtime ends the other processes when they lose their coordinator.
"""
import datetime
import errno
import fcntl
import functools
import json
import logging
import os
import pathlib
import socket
import threading
import time
import uuid

from gpt1_jax.errors import UserError

LOCK_FILE = ".lock"
DEFAULT_LEASE_TTL_SECS = 60.0
LEASE_TTL_ENV = "GPT1_JAX_LEASE_TTL_SECS"
# flock's answers that mean "this file system cannot lock", not "someone holds the lock".
_NO_FLOCK_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}

log = logging.getLogger(__name__)


class WorkdirError(UserError, RuntimeError):
    """A workdir this job cannot use."""


class WorkdirLockedError(WorkdirError):
    """The workdir is claimed by another live job."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` creates the workdir if needed and claims it.

    `workdir` is a local path or a gs:// URL (str, pathlib or etils.epath path). Raises
    WorkdirError when the workdir cannot be created or written, and WorkdirLockedError,
    naming the holder, when a live job holds it. `ttl_secs` is the gs:// lease's lifetime.
    """

    def __init__(self, workdir, ttl_secs: float | None = None):
        self.workdir = workdir
        name = os.fspath(workdir)
        if name.startswith("gs://"):
            self._claim = _GcsLease(name, _lease_ttl(ttl_secs))
        else:
            self._claim = _FileLock(pathlib.Path(name))

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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkdirError(f"workdir {self.workdir} is not writable: {e.strerror} "
                               f"({e.filename or self.path})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno in _NO_FLOCK_ERRNOS:
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

def _split_gs(url: str) -> tuple[str, str]:
    """gs://bucket/a/b/ -> ("bucket", "a/b")."""
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    if not bucket:
        raise WorkdirError(f"workdir {url}: no bucket name")
    return bucket, prefix.strip("/")


def _storage_client():
    from google.cloud import storage  # only gs:// workdirs need it
    # With STORAGE_EMULATOR_HOST set the client is anonymous; a project is still required.
    return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "gpt1-jax")


def _transient_errors() -> tuple[type[Exception], ...]:
    """What a GCS request may raise when the network or the service is in trouble
    (requests' errors are OSErrors)."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions
    return exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError


def _describe(record: dict) -> str:
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"started {record.get('started', '?')}")


class _GcsLease:
    def __init__(self, url: str, ttl_secs: float):
        self.workdir = url.rstrip("/")
        self.path = f"{self.workdir}/{LOCK_FILE}"
        self.ttl_secs = ttl_secs
        self._bucket_name, prefix = _split_gs(url)
        self._object_name = f"{prefix}/{LOCK_FILE}" if prefix else LOCK_FILE
        self._bucket = None
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

    def _write(self, if_generation_match: int) -> int:
        """Writes our record if the object's generation is `if_generation_match` (0: absent);
        returns the new generation. Raises PreconditionFailed otherwise."""
        blob = self._bucket.blob(self._object_name)
        blob.upload_from_string(self._record(), content_type="application/json",
                                if_generation_match=if_generation_match,
                                timeout=max(5.0, self.ttl_secs / 3))
        return blob.generation

    def _read(self):
        """(generation, record) of the lease object now, or None when there is none."""
        from google.api_core import exceptions
        while True:
            blob = self._bucket.get_blob(self._object_name)
            if blob is None:
                return None
            try:
                text = blob.download_as_text(if_generation_match=blob.generation)
                break
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                continue  # replaced or deleted between the two requests
        try:
            record = json.loads(text)
        except ValueError:
            record = {}
        if not isinstance(record, dict) or "expires_at" not in record:
            # Not written by this module: judge it by its age, as a lease written then.
            updated = blob.updated.timestamp() if blob.updated else time.time()
            record = {"expires_at": updated + self.ttl_secs}
        return blob.generation, record

    def acquire(self) -> None:
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions
        try:
            self._bucket = _storage_client().bucket(self._bucket_name)
            self._generation = self._claim()
        except WorkdirError:
            raise
        except (exceptions.GoogleAPICallError, auth_exceptions.GoogleAuthError) as e:
            raise WorkdirError(f"workdir {self.workdir} is not writable: cannot create "
                               f"{self.path}: {e}") from e
        self._stop.clear()
        self._lost.clear()
        self._thread = threading.Thread(target=self._renew_until_released, daemon=True,
                                        name=f"workdir-lease {self.workdir}")
        self._thread.start()

    def _claim(self) -> int:
        from google.api_core import exceptions
        for _ in range(5):  # each retry follows a change by another job; a few suffice
            try:
                return self._write(if_generation_match=0)
            except exceptions.PreconditionFailed:
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
                generation = self._write(if_generation_match=generation)
            except exceptions.PreconditionFailed:
                continue  # renewed, released or taken by another job in between
            log.warning("took over the expired lease %s of %s (expired %.0f s ago)",
                        self.path, _describe(record), -remaining)
            return generation
        raise WorkdirLockedError(f"workdir {self.workdir}: its lease {self.path} keeps "
                                 f"changing; another job is claiming it")

    def _renew_until_released(self) -> None:
        from google.api_core import exceptions
        while not self._stop.wait(self.ttl_secs / 3):
            try:
                self._generation = self._write(if_generation_match=self._generation)
            except (exceptions.PreconditionFailed, exceptions.NotFound):
                current = self._read_quietly()
                if current is not None and current[1].get("token") == self._token:
                    self._generation = current[0]  # a retried renewal of ours
                    continue
                holder = _describe(current[1]) if current else "nobody (deleted)"
                log.error("lost the workdir lease %s: it is now held by %s; another job may be "
                          "writing to %s", self.path, holder, self.workdir)
                self._lost.set()
                return
            except _transient_errors() as e:  # network trouble: try again at the next tick
                log.warning("could not renew the workdir lease %s (%s); retrying", self.path, e)

    def _read_quietly(self):
        try:
            return self._read()
        except _transient_errors():  # the renewal thread only reports; it must not die here
            return None

    def release(self) -> None:
        from google.api_core import exceptions
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._lost.is_set():
            return
        try:
            self._bucket.blob(self._object_name).delete(if_generation_match=self._generation)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            log.warning("the workdir lease %s was no longer ours at release; left as it is",
                        self.path)
        except _transient_errors() as e:
            log.warning("could not delete the workdir lease %s (%s); it expires in %.0f s",
                        self.path, e, self.ttl_secs)

    def lost(self) -> bool:
        return self._lost.is_set()


def exclusive(job):
    """Decorates a job `job(config, workdir, ...)` so that it runs holding the workdir's
    lock (process 0 only, see the module docstring)."""
    @functools.wraps(job)
    def run(config, workdir, *args, **kwargs):
        import jax  # imported here so that the lock itself needs only the standard library
        if jax.process_index() != 0:
            return job(config, workdir, *args, **kwargs)
        with WorkdirLock(workdir):
            return job(config, workdir, *args, **kwargs)
    return run
