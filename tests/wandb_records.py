"""Reads W&B offline run files (`run-<id>.wandb`) back, for tests: wandb 0.31 ships no Python
reader, and `wandb sync` needs a server. The file is a 7-byte header (":W&B", a 2-byte magic,
a version byte) then LevelDB log records (32 KiB blocks; a 7-byte header per fragment: CRC,
length, type) whose payloads are `wandb_internal_pb2.Record` protobufs."""
import json
import pathlib
import struct

from wandb.proto import wandb_internal_pb2

HEADER_LEN, BLOCK_LEN, FRAGMENT_HEADER_LEN = 7, 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path) -> list:
    data = pathlib.Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, offset = [], b"", HEADER_LEN
    while offset + FRAGMENT_HEADER_LEN <= len(data):
        room = BLOCK_LEN - offset % BLOCK_LEN
        if room < FRAGMENT_HEADER_LEN:  # the block's tail is padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + FRAGMENT_HEADER_LEN])
        payload = data[offset + FRAGMENT_HEADER_LEN:offset + FRAGMENT_HEADER_LEN + length]
        offset += FRAGMENT_HEADER_LEN + length
        if kind == 0 and length == 0:
            break
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def run_id(path) -> str:
    return next(r.run.run_id for r in records(path) if r.WhichOneof("record_type") == "run")


def history(path) -> list[dict]:
    """The rows logged, in order: {key: value}."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records(path) if r.WhichOneof("record_type") == "history"]


def config(path) -> dict:
    """The run's config as last recorded."""
    found = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for item in items:
            found[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return found
