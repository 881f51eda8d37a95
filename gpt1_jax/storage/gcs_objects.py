"""One GCS object changed only under generation preconditions: the requests the gs://
workdir lease (workdir.py) is made of. Part of the storage owner beside `rundir`: the one
place the google-cloud-storage client is built.

GCS makes each request atomic: `create` succeeds only while no object exists, `replace`
and `delete` only while the object is still the generation the caller last saw. A request
whose precondition fails raises `Changed`; network or service trouble raises one of
`transient_errors()`; the caller decides what either means.
"""
import dataclasses
import datetime
import os

from gpt1_jax.errors import UserError


class Changed(Exception):
    """The object is not (or no longer) what the request's precondition required."""


@dataclasses.dataclass(frozen=True)
class Version:
    generation: int
    data: bytes
    updated: datetime.datetime | None  # when GCS wrote this generation


def transient_errors() -> tuple[type[Exception], ...]:
    """What a GCS request may raise when the network or the service is in trouble
    (requests' errors are OSErrors)."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions
    return exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError


def split_url(url: str) -> tuple[str, str]:
    """gs://bucket/a/b/ -> ("bucket", "a/b"); UserError without a bucket."""
    bucket, _, name = url.removeprefix("gs://").partition("/")
    if not bucket:
        raise UserError(f"{url}: no bucket name")
    return bucket, name.strip("/")


class GcsObject:
    """The object at `url` (gs://bucket/name)."""

    def __init__(self, url: str, timeout_secs: float = 20.0):
        self.url = url
        self._bucket_name, self._name = split_url(url)
        self._timeout = timeout_secs
        self._bucket = None

    def _blob(self, generation=None):
        if self._bucket is None:
            from google.cloud import storage  # only gs:// workdirs need it
            # With STORAGE_EMULATOR_HOST set the client is anonymous; a project is still required.
            client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "gpt1-jax")
            self._bucket = client.bucket(self._bucket_name)
        return self._bucket.blob(self._name, generation=generation)

    def create(self, data: bytes) -> int:
        """Writes `data` if no object exists; returns its generation. Changed otherwise."""
        return self.replace(data, generation=0)

    def replace(self, data: bytes, generation: int) -> int:
        """Writes `data` if the object is at `generation` (0: absent); returns the new one."""
        from google.api_core import exceptions
        blob = self._blob()
        try:
            blob.upload_from_string(data, content_type="application/json",
                                    if_generation_match=generation, timeout=self._timeout)
        except (exceptions.PreconditionFailed, exceptions.NotFound) as e:
            raise Changed(str(e)) from e
        return blob.generation

    def delete(self, generation: int) -> None:
        """Deletes the object if it is at `generation`. Changed otherwise."""
        from google.api_core import exceptions
        try:
            self._blob().delete(if_generation_match=generation, timeout=self._timeout)
        except (exceptions.PreconditionFailed, exceptions.NotFound) as e:
            raise Changed(str(e)) from e

    def read(self) -> Version | None:
        """The object's current generation and bytes, read as one version; None when absent."""
        from google.api_core import exceptions
        while True:
            blob = self._bucket_blob_now()
            if blob is None:
                return None
            try:
                data = blob.download_as_bytes(if_generation_match=blob.generation,
                                              timeout=self._timeout)
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                continue  # replaced or deleted between the two requests
            return Version(blob.generation, data, blob.updated)

    def _bucket_blob_now(self):
        self._blob()  # makes the bucket
        return self._bucket.get_blob(self._name, timeout=self._timeout)
