"""Evaluation records: the files under ``RUN/eval/`` and how they are read and written.

    RUN/eval/<name>.json          the metric values by name ("fid": 12.3), "extractor", and everything
                                  needed to reproduce them (checkpoint, weights, sampler, steps, seed,
                                  num, reference and its content hash, cost, versions)
    RUN/eval/<name>.parts/        with --shard i/k only: shard-<i>-of-<k>.pt, each shard's features;
                                  the shard that completes the set writes <name>.json

Readers (sweeps, the protocol, reports, studies, model cards) go through ``read_eval_records``,
which checks every field they use and names a damaged file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from madkit.errors import UserError

EVAL_DIR = "eval"
COST_KEYS = ("nfe", "layer_passes", "sample_flops_per_image")


def read_eval_jsons(folder: str | Path) -> list[dict[str, Any]]:
    """Every JSON object under ``folder``/eval: eval records and the FID protocol's summaries. JSON
    that is neither (notes a person left there) is skipped; a damaged file, or a record without what
    readers use, is a UserError naming it (see ``read_eval_json``)."""
    found = [read_eval_json(path) for path in sorted((Path(folder) / EVAL_DIR).glob("*.json"))]
    return [r for r in found if isinstance(r, dict)]


def read_eval_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every eval record under ``folder``/eval."""
    return [r for r in read_eval_jsons(folder) if isinstance(r.get("metric_values"), dict)]


# what readers of eval records use, as (dotted key, accepted type)
_EVAL_FIELDS = (
    ("metric_values", dict), ("extractor", str), ("checkpoint.step", int), ("checkpoint.weights", str),
    ("sampling.sampler", str), ("sampling.steps", int), ("sampling.num", int),
)


def read_eval_json(path: Path) -> Any:
    """One file of eval/: its JSON, with an eval record (a dict holding ``metric_values``) checked for
    every field readers use; unreadable or damaged, a UserError that names the file and the key."""
    fix = "delete it, or write it again with `madkit eval RUN --force`"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file, so not a madkit eval record; {fix}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {fix}") from None
    if not (isinstance(record, dict) and "metric_values" in record):
        return record
    for key, kind in _EVAL_FIELDS:
        value: Any = record
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if value is None else f"{type(value).__name__} {value!r:.40}"
            raise UserError(f"{path}: {key}: expected {kind.__name__}, found {found}; not a madkit eval record; {fix}")
    return record
