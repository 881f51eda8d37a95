"""The run directory: the name of every file a job keeps, and how each is written.

A workdir (and `init_from`, `data.text_files`, `data.cache_dir`) is a local path or a
`gs://bucket/prefix`; both go through `etils.epath` (gcsfs for gs://; orbax's TensorStore
speaks gs:// itself). `pathlib.Path("gs://b/run")` would be the local folder `gs:/b/run`,
so nothing in the project builds run paths any other way than `path()` here.

    <workdir>/
      .lock              the job holding the workdir (workdir.py)
      checkpoints/<step>/  orbax training checkpoints (checkpoint.py)
      export/            params-only export: params/, model.json, tokenizer/ (task.json)
      tokenizer/         the tokenizer the run used
      metrics.jsonl      one JSON object per logged step
      summary.json       the run's figures
      tensorboard/       the same scalars for TensorBoard
      curves.png         training curves, redrawn at every evaluation
      predictions/       fine-tuning: one file per evaluated split
      zero_shot.json/png the zero-shot curves over a run's checkpoints

Writes are whole or absent: a local file goes through a temporary file and a rename; an
object store replaces an object in one upload, never showing part of it. Object stores
cannot append, so metrics.jsonl is rewritten whole at every log (it stays small).
"""
import contextlib
import glob
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from etils import epath

from gpt1_jax.errors import DataError

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

_REMOTE_PREFIXES = ("gs://", "s3://")


def is_remote(p) -> bool:
    return os.fspath(p).startswith(_REMOTE_PREFIXES)


def path(p) -> epath.Path:
    """`p` as an epath: gs:// stays remote; a local path is expanded (~) and made absolute."""
    text = os.fspath(p)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


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


def write_bytes(p, data: bytes) -> None:
    """Writes `data` to `p` whole: readers see the old contents or the new, never part."""
    p = path(p)
    if is_remote(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)  # one object upload
        return
    os.makedirs(p.parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def save_tokenizer(tokenizer, directory) -> None:
    """`tokenizer.save(directory)` with its config file written last and whole, so a job
    killed mid-save leaves no tokenizer that looks complete."""
    directory = path(directory)
    with tempfile.TemporaryDirectory(prefix="gpt1_jax-tokenizer-") as tmp:
        tokenizer.save(tmp)
        names = sorted(os.listdir(tmp), key=lambda name: name == TOKENIZER_CONFIG)
        for name in names:
            with open(os.path.join(tmp, name), "rb") as f:
                write_bytes(directory / name, f.read())


def has_tokenizer(directory) -> bool:
    return (path(directory) / TOKENIZER_CONFIG).exists()


def render_png(figure) -> bytes:
    """A matplotlib figure as PNG bytes (to `write_bytes` anywhere)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


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
