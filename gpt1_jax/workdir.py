"""One job per workdir: a job claims `<workdir>/.lock` before it writes anything there.

The claim is an advisory `fcntl.flock` on the lock file, held for the whole job. The
kernel drops it when the process ends in any way (exit, exception, `kill -9`), so a lock
left by a dead job never blocks a restart: only a live holder does. The file's text
(pid, host, start time) is for humans: it names the holder when a second job is refused,
and it may outlive its holder.

Multi-process jobs (jax.distributed) share one workdir, so only process 0 claims it:
its processes must not refuse each other. If process 0 is refused it exits, and the
distributed runtime ends the other processes when they lose their coordinator.
`flock` reaches across hosts on NFSv4 and most cluster file systems; where it does not,
the lock still guards against two jobs started on the same host.
"""
import datetime
import errno
import fcntl
import functools
import os
import pathlib
import socket

LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
    """A workdir this job cannot use."""


class WorkdirLockedError(WorkdirError):
    """The workdir is claimed by another live job."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` creates the workdir if needed and claims it.

    Raises WorkdirError when the workdir cannot be created or written, and
    WorkdirLockedError, naming the holder, when a live job holds it.
    """

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_FILE
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
        except OSError as e:
            holder = _read_text(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirError(f"cannot lock {self.path}: {e.strerror}") from e
            raise WorkdirLockedError(
                f"workdir {self.workdir} is in use by another job ({holder or 'holder unknown'}); "
                f"wait for it to end or choose another workdir") from None
        # Written only once the lock is ours, so the text names the live holder.
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        # The file stays: deleting it would let a job that opened it just before the
        # delete and a job that creates a fresh one both hold "the" lock.
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_text(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


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
