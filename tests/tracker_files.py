"""Reading back what trackers wrote to disk, with no server: wandb's offline transaction log.

A ``run-<id>.wandb`` file is a 7-byte header followed by LevelDB-style log blocks of 32 KiB; each
chunk has a 7-byte header (crc32, little-endian length, type: 1 whole, 2 first, 3 middle, 4 last)
and the chunks of one record hold a serialized ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

FILE_HEADER = 7
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    pos, pending, records = FILE_HEADER, b"", []
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:  # the rest of a block too small for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        pos += CHUNK_HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += (BLOCK - pos % BLOCK) % BLOCK
            continue
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_history(folder: Path) -> list[dict[str, Any]]:
    """Every ``run.log`` row of every offline run file under ``folder``, in file order."""
    rows = []
    for path in sorted(Path(folder).rglob("run-*.wandb")):
        rows += [_items(r.history.item) for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]
    return rows


def wandb_config(folder: Path) -> dict[str, Any]:
    """The run config as the offline files record it (the last value of each key)."""
    config: dict[str, Any] = {}
    for path in sorted(Path(folder).rglob("run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "config":
                config.update(_items(record.config.update))
            elif kind == "run":
                config.update(_items(record.run.config.update))
    return config
