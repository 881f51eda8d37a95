"""Nothing left behind by a killed job, and files readable as the user's umask says:
`kill -9` while the token cache is built, or inside a scratch folder (sentencepiece's corpus
dump), leaves files that the next run removes; written files get 0o666 & ~umask."""
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from gpt1_jax.data import corpus
from gpt1_jax.storage import rundir

REPO = pathlib.Path(__file__).resolve().parents[1]

# Builds a token cache with a tokenizer that hangs once it is called: killed there, the
# build has opened its temporary .npy beside the cache.
HANG_WHILE_TOKENIZING = """
import sys, time
from gpt1_jax.data import corpus

class Hanging:
    vocab_size = 256
    def encode_batch(self, texts, progress):
        print("tokenizing", flush=True)
        time.sleep(600)
    def fingerprint(self):
        return "bytes-v1"

corpus.build_or_load_token_cache(corpus.TextFilesCorpus([sys.argv[1]]), Hanging(), sys.argv[2],
                                 progress=False)
"""

HANG_IN_SCRATCH = """
import sys, time
from gpt1_jax.storage import rundir

with rundir.scratch_directory("sentencepiece") as scratch:
    with open(f"{scratch}/corpus.txt", "wb") as f:
        f.write(b"x" * 100_000)
    print(scratch, flush=True)
    time.sleep(600)
"""


class BytesTokenizer:
    vocab_size = 256

    def encode_batch(self, texts, progress):
        return [list(t.encode("utf-8")) for t in texts]

    def fingerprint(self):
        return "bytes-v1"


def start_and_kill_9(script: str, *args, env=None) -> str:
    """Runs `script` until it prints its first line, kills it with SIGKILL; returns the line."""
    child = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO,
                             env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().strip()
        assert line, child.communicate(timeout=60)[1][-3000:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    return line


@pytest.fixture
def book(tmp_path) -> pathlib.Path:
    path = tmp_path / "book.txt"
    path.write_text("Call me Ishmael. Some years ago, never mind how long precisely.\n")
    return path


def test_a_build_killed_mid_tokenization_leaves_temp_files_that_the_rebuild_removes(book, tmp_path):
    cache_dir = tmp_path / "cache"
    start_and_kill_9(HANG_WHILE_TOKENIZING, book, cache_dir)
    leftovers = [p.name for p in cache_dir.iterdir() if p.name.endswith(rundir.TEMP_SUFFIX)]
    assert leftovers, "the killed build left no temporary file: this test kills it too early"

    cache = corpus.build_or_load_token_cache(corpus.TextFilesCorpus([book]), BytesTokenizer(), cache_dir,
                                             progress=False)
    assert bytes(np.asarray(cache.tokens, np.uint8)) == book.read_bytes()
    names = sorted(p.name for p in cache_dir.iterdir())
    assert not [name for name in names if name.endswith(rundir.TEMP_SUFFIX)], names
    assert {f"{cache.metadata['key']}.npy", f"{cache.metadata['key']}.json"} <= set(names)


def test_a_scratch_folder_of_a_killed_job_is_removed_by_the_next(tmp_path, monkeypatch):
    root = tmp_path / "cache_root"
    monkeypatch.setenv(rundir.CACHE_ROOT_ENV, str(root))
    killed = pathlib.Path(start_and_kill_9(HANG_IN_SCRATCH, env={rundir.CACHE_ROOT_ENV: str(root)}))
    assert (killed / "corpus.txt").stat().st_size == 100_000  # what a kill used to leave in /tmp
    with rundir.scratch_directory("sentencepiece") as live:
        assert not killed.exists() and not pathlib.Path(f"{killed}.lock").exists()
        # A live job's folder is never taken: its lock is held.
        with rundir.scratch_directory("other") as other:
            assert pathlib.Path(live).is_dir() and pathlib.Path(other).is_dir()
    assert not list((root / "scratch").iterdir())  # each removed at its end


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_get_the_mode_of_the_users_umask(book, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        cache = corpus.build_or_load_token_cache(corpus.TextFilesCorpus([book]), BytesTokenizer(),
                                                 tmp_path / "cache", progress=False)
        rundir.write_json(tmp_path / "run" / rundir.SUMMARY, {"step": 1})
        rundir.upload_file(book, tmp_path / "run" / "copy.txt")
    finally:
        os.umask(old)
    assert rundir.umask() == old  # read without being changed
    for path in (cache.path, cache.path.with_suffix(".json"), tmp_path / "run" / rundir.SUMMARY,
                 tmp_path / "run" / "copy.txt"):
        assert path.stat().st_mode & 0o777 == mode, path
