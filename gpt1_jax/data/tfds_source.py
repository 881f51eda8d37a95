"""A prepared TFDS split opened for random access (`tfds.data_source`, array_record, no
TensorFlow), never downloading at run time; each way it cannot be opened is one DataError that
says where TFDS looked.

gs:// data directories are refused: without TensorFlow's file systems the array_record reader
opens gs:// paths itself, does not honour a GCS emulator, and blocks in C++ (no output, no
SIGTERM) for as long as it retries; measured: no answer within 12 minutes.
"""
from gpt1_jax.errors import DataError


def open_split(name: str, split: str, data_dir: str | None, what: str = ""):
    """The random-access source of `name`'s `split` in `data_dir` (None: TFDS's default).
    `what` names the dataset in messages as the user gave it (default: "TFDS dataset NAME")."""
    what = what or f"TFDS dataset {name!r}"
    if data_dir and "://" in str(data_dir):
        raise DataError(f"{what} in {data_dir}: TFDS data must be on a local disk here (the "
                        "array_record reader cannot read remote paths without TensorFlow); copy the "
                        "prepared dataset to a local directory and point the data dir at it")
    import tensorflow_datasets as tfds  # only jobs that read TFDS pay for its import

    from_where = f"in {data_dir}" if data_dir else "in TFDS's default data dir"
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"{what}: TFDS knows no such dataset (looked {from_where} and among the "
                        "registered builders)") from None
    except (ValueError, NotImplementedError, AssertionError, FileNotFoundError) as error:
        builder = tfds.builder(name, data_dir=data_dir or None)
        if not builder.is_prepared():
            raise DataError(
                f"{what}: not prepared in {builder.data_dir} (nothing is downloaded at run "
                f"time; prepare it first: tfds build {name} --file_format=array_record"
                f"{' --data_dir=' + data_dir if data_dir else ''})") from None
        splits = list(builder.info.splits)
        if split.split("[", 1)[0] not in splits:
            raise DataError(f"{what} in {builder.data_dir} has no split {split!r}; its splits: "
                            f"{', '.join(splits)}") from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{what} split {split!r} in {builder.data_dir}: {first_line}") from None
