"""Test-wide setup: 8 simulated CPU devices, so sharding tests run on one machine.

XLA reads the flag once, when the first JAX backend starts, so it is set here, before
any test module imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pathlib
import shutil
import tempfile

import pytest

import jobs

_OWN_CACHE = pytest.StashKey[str]()
pytest_plugins = ["gcs"]  # the local GCS server fixtures (tests/gcs.py)

REPO = jobs.REPO
# The real task data (GLUE, Story Cloze) that may not be bundled: ../shared/data beside the
# checkout, or wherever GPT1_JAX_SHARED_DATA points.
SHARED_DATA = pathlib.Path(os.environ.get("GPT1_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    # Slow tests run by default (CI included); `-m "not slow"` skips them locally.
    config.addinivalue_line("markers", "slow: a long test (minutes on 2 CPU cores); runs by default")
    # One persistent XLA cache for the session's job processes (jobs.env), removed at its end;
    # this process's own programs are not cached (tests read their compiled HLO and memory).
    if not os.environ.get(jobs.SESSION_CACHE):
        os.environ[jobs.SESSION_CACHE] = tempfile.mkdtemp(prefix="gpt1_jax-tests-xla-")
        config.stash[_OWN_CACHE] = os.environ[jobs.SESSION_CACHE]


def pytest_unconfigure(config):
    if config.stash.get(_OWN_CACHE, None):
        shutil.rmtree(config.stash[_OWN_CACHE], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    # With pytest-xdist (`-n 2 --dist loadgroup`), tests that share a costly fixture share a
    # worker, so it is built once, not once per worker: the session-wide trained run, and the
    # module-wide fixtures a test module defines for itself (a trained run, exported weights).
    for item in items:
        if "pretrained" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("pretrained"))
        elif _uses_own_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def _uses_own_module_fixture(item) -> bool:
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is None or getattr(item, "module", None) is None:
        return False
    return any(definitions[-1].scope == "module" and
               getattr(definitions[-1].func, "__module__", None) == item.module.__name__
               for definitions in fixture_info.name2fixturedefs.values())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder holding book.txt (the first 40,000 characters of a bundled book); jobs keep
    their token cache beside it in cache/."""
    from gpt1_jax import assets
    directory = tmp_path_factory.mktemp("corpus")
    text = assets.book_files()[0].read_text(encoding="utf-8")[:40_000]
    (directory / "book.txt").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """A tiny pretraining workdir (3 steps, a checkpoint at each) on a slice of one book."""
    from gpt1_jax import assets
    workdir = tmp_path_factory.mktemp("pretrain")
    corpus = workdir / "book.txt"
    corpus.write_text(assets.book_files()[1].read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    jobs.main("--config=configs/tiny.py", f"--workdir={workdir}",
              "--config.train.num_steps=3", "--config.train.batch_size=4",
              "--config.train.eval_batches=1", "--config.checkpoint.every_steps=1",
              "--config.data.val_fraction=0.1", f"--config.data.text_files={corpus}",
              f"--config.data.cache_dir={workdir / 'cache'}")
    return workdir


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real task data; a clear failure (not a skip) when it is missing."""
    if not (SHARED_DATA / "glue").is_dir():
        pytest.fail(f"the real task data is missing: expected {SHARED_DATA}/glue "
                    f"(set GPT1_JAX_SHARED_DATA to the folder holding glue/ and story_cloze/)")
    return SHARED_DATA
