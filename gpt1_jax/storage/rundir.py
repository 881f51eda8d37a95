"""The run directory and the one owner of storage: the name of every file a job keeps,
and how each is read, listed and written, locally and on gs://.

A workdir (and `init_from`, `data.text_files`, `data.cache_dir`) is a local path or a
`gs://bucket/prefix`; both go through `etils.epath` (gcsfs for gs://; orbax's TensorStore
speaks gs:// itself). `pathlib.Path("gs://b/run")` would be the local folder `gs:/b/run`,
so nothing in the project builds run paths any other way than `path()` here. Storage
clients (fsspec, gcsfs, google-cloud-storage) are used here and in `gcs_objects` (the
conditional requests of the gs:// workdir lease) only.

    <workdir>/
      .lock              the job holding the workdir (workdir.py)
      token_cache/       the token cache of a multi-host job without data.cache_dir
      checkpoints/<step>/  orbax training checkpoints (checkpoint.py)
      export/            params-only export: params/, model.json, tokenizer/ (task.json)
      tokenizer/         the tokenizer the run used
      metrics.jsonl      one JSON object per logged step
      summary.json       the run's figures
      tensorboard/       the same scalars for TensorBoard
      curves.png         training curves, redrawn at every evaluation
      predictions/       fine-tuning: one file per evaluated split
      zero_shot.json/png the zero-shot curves over a run's checkpoints

Writes are whole or absent: a local file goes through a temporary file beside it
(`.<name>.<random>.tmp`) and a rename, and gets the mode the user's umask gives a new file;
an object store replaces an object in one upload, never showing part of it. Object stores
cannot append, so metrics.jsonl is rewritten whole at every log (it stays small). A
process killed mid-write leaves its temporary file behind: `remove_temp_files` clears them
where a lock says no writer is alive (the token cache does).

Local caches and scratch space live under one root, `$GPT1_JAX_CACHE` or
`~/.cache/gpt1_jax` (`cache_root()`): tokens/, remote/ (local mirrors of gs:// token
caches), scratch/ (`scratch_directory`: removed at exit, or by the next job after a kill).
"""
import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

from etils import epath

from gpt1_jax.errors import DataError, UserError

CHECKPOINTS = "checkpoints"
EXPORT = "export"
TOKENIZER = "tokenizer"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TENSORBOARD = "tensorboard"
CURVES = "curves.png"
PREDICTIONS = "predictions"
ZERO_SHOT_JSON = "zero_shot.json"
ZERO_SHOT_PNG = "zero_shot.png"
EXPORT_PARAMS = "params"        # inside an export
EXPORT_MODEL_JSON = "model.json"
EXPORT_TASK_JSON = "task.json"  # fine-tuned exports: the task and its max_len
TOKENIZER_CONFIG = "tokenizer.json"  # written last: its presence marks a whole tokenizer
TOKENIZER_SETTINGS = "settings.json"  # the settings a tokenizer was built from
TOKEN_CACHE = "token_cache"

CACHE_ROOT_ENV = "GPT1_JAX_CACHE"
DEFAULT_CACHE_ROOT = "~/.cache/gpt1_jax"
TEMP_SUFFIX = ".tmp"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme(p) -> str:
    """The URL scheme of `p` ("gs" for gs://bucket/x), "" for a local path."""
    match = _SCHEME.match(os.fspath(p))
    return match.group(1).lower() if match else ""


def is_remote(p) -> bool:
    return scheme(p) != ""


def path(p) -> epath.Path:
    """`p` as an epath: gs:// stays remote; a local path is expanded (~) and made absolute.
    A scheme epath has no file system for is a UserError naming the path."""
    text = os.fspath(p)
    if is_remote(text):
        try:
            return epath.Path(text)
        except (KeyError, ValueError, NotImplementedError) as e:
            raise UserError(f"{text}: no storage for {scheme(text)}:// (use a local path or "
                            f"gs://)") from e
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def cache_root() -> epath.Path:
    """The local root of caches and scratch space: $GPT1_JAX_CACHE or ~/.cache/gpt1_jax."""
    return path(os.environ.get(CACHE_ROOT_ENV) or DEFAULT_CACHE_ROOT)


def list_names(directory) -> list[str]:
    """The names directly under `directory` (local or gs://; [] when it does not exist),
    listed afresh: gcsfs caches listings, and another process may have written since."""
    directory = path(directory)
    if not is_remote(directory):
        return os.listdir(directory) if directory.is_dir() else []
    import fsspec
    fs, inner = fsspec.core.url_to_fs(os.fspath(directory))
    try:
        entries = fs.ls(inner, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries]


def expand_patterns(patterns: str, what: str) -> list[epath.Path]:
    """Comma-separated paths or globs, local or gs://, -> the matching files, sorted per
    pattern. FileNotFoundError names `what` (the flag or config key) and the pattern."""
    found: list[epath.Path] = []
    for pattern in (p.strip() for p in patterns.split(",")):
        if is_remote(pattern):
            import fsspec  # gcsfs registers the gs:// protocol with fsspec
            fs, inner = fsspec.core.url_to_fs(pattern)
            scheme = pattern.split("://", 1)[0]
            matches = sorted(f"{scheme}://{m}" for m in fs.glob(inner) if fs.isfile(m))
        else:
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {pattern!r}")
        found.extend(path(m) for m in matches)
    return found


def umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode `open(..., "w")` gives a new file: mkstemp's 0600 would hide run files from
    other users and services (TensorBoard) that can read the folder."""
    return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_local_file(p) -> Iterator[BinaryIO]:
    """`with atomic_local_file(p) as f:` writes a local file whole: into a temporary file
    beside `p` (`.<name>.<random>.tmp`), synced and renamed onto `p` when the block ends; on
    an exception it is removed and `p` is untouched."""
    p = path(p)
    os.makedirs(p.parent, exist_ok=True)
    tmp = os.fspath(p.parent / f".{p.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def temp_files(p) -> list[epath.Path]:
    """The temporary files `atomic_local_file(p)` leaves when its process is killed."""
    p = path(p)
    pattern = re.compile(rf"\.{re.escape(p.name)}\.[0-9a-f]{{12}}{re.escape(TEMP_SUFFIX)}")
    return [p.parent / name for name in list_names(p.parent) if pattern.fullmatch(name)]


def remove_temp_files(p) -> int:
    """Removes what killed writers of `p` left; only for a caller that knows no writer of `p`
    is alive (it holds their lock). Returns how many it removed."""
    removed = 0
    for leftover in temp_files(p):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)
            removed += 1
    return removed


@contextlib.contextmanager
def _remote_write(p) -> Iterator[None]:
    """An object store's failed upload as an OSError that names the object and its bucket: the
    client's own error is often just the request URL (a missing bucket: `error: http://...`)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001  (gcsfs's HttpError is no OSError)
        text = os.fspath(p)
        bucket = text.split("://", 1)[0] + "://" + text.split("://", 1)[1].split("/", 1)[0]
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"cannot write {text}: does the bucket {bucket} exist, and may this machine write "
                      f"to it? ({type(e).__name__}: {cause[:200]})") from e


def write_bytes(p, data: bytes) -> None:
    """Writes `data` to `p` whole: readers see the old contents or the new, never part."""
    p = path(p)
    if is_remote(p):
        with _remote_write(p):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)  # one object upload
        return
    with atomic_local_file(p) as f:
        f.write(data)


def move_aside(p, suffix: str) -> epath.Path:
    """Renames `p` (a file or folder, local or gs://: there a copy and a delete) to the first
    free name of `<p><suffix>`, `<p><suffix>.1`, ... beside it, and returns that path. Nothing
    is deleted: a step set aside twice keeps both copies."""
    p = path(p)
    target, n = p.parent / f"{p.name}{suffix}", 0
    while target.exists():
        n += 1
        target = p.parent / f"{p.name}{suffix}.{n}"
    p.rename(target)
    return target


def upload_file(local, p) -> None:
    """Copies the local file `local` to `p` whole (one object upload on gs://)."""
    p = path(p)
    if not is_remote(p):
        with open(local, "rb") as source, atomic_local_file(p) as f:
            shutil.copyfileobj(source, f, length=1 << 22)
        return
    with _remote_write(p), open(local, "rb") as source:
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("wb") as out:
            shutil.copyfileobj(source, out, length=1 << 22)


def download_file(p, local) -> None:
    """Copies `p` (local or gs://) to the local file `local`, whole or not at all."""
    with path(p).open("rb") as source, atomic_local_file(local) as f:
        shutil.copyfileobj(source, f, length=1 << 22)


@contextlib.contextmanager
def file_lock(p) -> Iterator[bool]:
    """Holds an exclusive `flock` on the local file `p` (created if absent) for the block,
    waiting for another holder; yields False, unlocked, where the file system has no flock."""
    p = path(p)
    os.makedirs(p.parent, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, new_file_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in NO_FLOCK_ERRNOS:
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing drops the lock


# flock's answers that mean "this file system cannot lock", not "someone holds the lock".
NO_FLOCK_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


@contextlib.contextmanager
def scratch_directory(purpose: str) -> Iterator[str]:
    """A fresh local folder under `cache_root()/scratch/`, removed when the block ends. Its
    lock (`<folder>.lock`) is held meanwhile, so a job killed inside the block leaves a
    folder that the next call (from any job) removes, not a dump that fills the disk."""
    root = os.fspath(cache_root() / "scratch")
    os.makedirs(root, exist_ok=True)
    _sweep_scratch(root)
    while True:
        folder = os.path.join(root, f"{purpose}-{uuid.uuid4().hex[:12]}")
        lock_fd = os.open(f"{folder}.lock", os.O_RDWR | os.O_CREAT | os.O_EXCL, new_file_mode())
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno in NO_FLOCK_ERRNOS:
                break  # no flock here: nothing sweeps it either; it is removed at exit
            os.close(lock_fd)  # a sweeper took the new lock first: it removes it; start over
    try:
        # Made only once the lock is held, so no sweeper ever removes a folder in use.
        os.mkdir(folder)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{folder}.lock")
    finally:
        os.close(lock_fd)


def _sweep_scratch(root: str) -> None:
    """Removes the scratch folders under `root` whose lock no live process holds."""
    for entry in os.listdir(root):
        if not entry.endswith(".lock"):
            continue
        lock_file = os.path.join(root, entry)
        try:
            fd = os.open(lock_file, os.O_RDWR)
        except OSError:  # removed meanwhile by its owner
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live job, or no flock here: leave it
            os.close(fd)
            continue
        try:
            shutil.rmtree(lock_file.removesuffix(".lock"), ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_file)
        finally:
            os.close(fd)


def write_text(p, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def write_json(p, value: Any) -> None:
    write_text(p, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(p, what: str = "file") -> Any:
    """The JSON in `p`; DataError naming the file when it is not valid JSON."""
    p = path(p)
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: {what} is not valid JSON: {e}") from e


def update_summary(workdir, values: dict, write: bool) -> dict:
    """Merges `values` (None values left out) into `<workdir>/summary.json`; only the
    process with `write` writes. Returns the merged summary."""
    p = path(workdir) / SUMMARY
    summary = read_json(p, "the run summary") if p.exists() else {}
    summary.update({k: v for k, v in values.items() if v is not None})
    if write:
        write_json(p, summary)
    return summary


def save_tokenizer(tokenizer, directory, settings: dict | None = None) -> None:
    """`tokenizer.save(directory)` with its config file written last and whole, so a job
    killed mid-save leaves no tokenizer that looks complete; `settings` (what it was built
    from) go to TOKENIZER_SETTINGS before it."""
    directory = path(directory)
    with scratch_directory("tokenizer") as tmp:
        tokenizer.save(tmp)
        names = sorted(os.listdir(tmp), key=lambda name: name == TOKENIZER_CONFIG)
        for name in names:
            if name == TOKENIZER_CONFIG and settings is not None:
                write_json(directory / TOKENIZER_SETTINGS, settings)
            with open(os.path.join(tmp, name), "rb") as f:
                write_bytes(directory / name, f.read())


def has_tokenizer(directory) -> bool:
    return (path(directory) / TOKENIZER_CONFIG).exists()


@contextlib.contextmanager
def local_mirror(directory) -> Iterator[str]:
    """A local folder whose files are copied into `directory` when `sync(local)` is called
    and on exit; `directory` itself when it is local. For writers that need a local file
    system (TensorBoard's event files)."""
    directory = path(directory)
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)
        yield os.fspath(directory)
        return
    local = tempfile.mkdtemp(prefix="gpt1_jax-mirror-")
    try:
        yield local
        sync(local, directory)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def sync(local: str, directory) -> None:
    """Copies every file under `local` to the same relative path under `directory`."""
    directory = path(directory)
    if not is_remote(directory) and os.path.samefile(local, directory):
        return
    for root, _, files in os.walk(local):
        for name in files:
            source = os.path.join(root, name)
            with open(source, "rb") as f:
                write_bytes(directory / os.path.relpath(source, local), f.read())
