"""Importing the MADFormer authors' released checkpoint into a madkit run folder.

The released file (``ckpts.pt`` of the Hugging Face repo ``JunhaoC/MADFormer-FFHQ``) is a torch pickle
of a dict: ``model`` (raw weights), ``ema`` (EMA weights), ``opt``, ``lrs`` and ``args`` (an
``argparse.Namespace`` of the training arguments); any of them may be missing. It is read with
``torch.load(weights_only=True)`` allowing only ``argparse.Namespace`` besides tensors and plain
containers, so a hostile pickle is refused before anything in it runs. Names may carry a ``module.``
(DDP) or ``_orig_mod.`` (torch.compile) prefix.

Every tensor is mapped through the model's ``reference_layout()`` and checked against the model the
spec builds (names both ways, shapes); the stored ``args`` must agree with the spec's geometry. Only
then is a normal run folder written, atomically (a temp folder renamed into place)::

    RUN/config.resolved.toml, versions.json, metrics.jsonl (empty), samples/
    RUN/checkpoints/00000000/ema.safetensors    the file's 'ema' (or 'model' when it has no 'ema')
                             model.safetensors  the file's 'model' (or the EMA weights when it has none)
                             state.pt           step 0, the resolved spec, versions, provenance (source
                                                file name, sha256, weights used, the args it carried)

The folder holds no optimizer state: it samples, evaluates and exports like any run, but training
cannot resume from it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import attrs
import torch

from madkit.engine.checkpoints import save_checkpoint, unwrapped_name
from madkit.engine.checkpoints.run_folder import RunDir, collect_versions
from madkit.errors import UserError
from madkit.interfaces import ReferenceLayout

WEIGHT_KEYS = ("ema", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 4  # names listed per problem; the count says how many more


class ReferenceImportError(UserError, ValueError):
    """The file is not the released checkpoint, or not one that fits the spec; nothing was written."""


@attrs.frozen
class ImportResult:
    run_dir: Path
    weights_key: str  # which entry of the file the EMA weights came from
    raw_key: str | None  # which entry the raw weights came from (None: the file has only one set)
    tensors: int
    values: int
    sha256: str


# --------------------------------------------------------------------------- reading
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_load(path: Path, mmap: bool) -> Any:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_reference_file(path: Path) -> dict[str, Any]:
    """The unpickled top-level dict, loaded without running any code from the file."""
    try:
        try:
            # memory-mapped: the optimizer state the file also holds is never read into memory
            obj = _safe_load(path, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = _safe_load(path, mmap=False)  # a legacy (non-zip) torch file
    except pickle.UnpicklingError as exc:
        # torch names the blocked global in words that change between versions ("Unsupported global:
        # GLOBAL x", "unsupported GLOBAL x whose module ... is blocked"); both say GLOBAL and the name
        text = str(exc)
        refused = re.search(r"GLOBAL\s+([\w.]+)", text)
        if refused:
            raise ReferenceImportError(
                f"{path}: refused: its pickle asks for {refused.group(1)}, which a weights-only load never runs "
                "(nothing in the file was executed); the released checkpoint needs only tensors and "
                "argparse.Namespace"
            ) from None
        # torch wraps the unpickler's own reason in advice to load with weights_only=False: keep the reason
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
        why = reason.group(1).strip() if reason else _first_line(exc)
        raise ReferenceImportError(f"{path}: not a torch checkpoint ({why})") from None
    except Exception as exc:
        raise ReferenceImportError(
            f"{path}: cannot be read as a torch checkpoint ({_first_line(exc)}); is the download complete? "
            "compare its sha256 with the hub's"
        ) from None
    if not isinstance(obj, dict) or not any(isinstance(obj.get(k), dict) for k in WEIGHT_KEYS):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ReferenceImportError(
            f"{path}: not a MADFormer reference checkpoint: expected a dict with 'ema' and/or 'model' weights, "
            f"found {found}"
        )
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def unwrapped(state: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """Names without DDP / torch.compile wrappers; a non-tensor or a name clash is refused."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ReferenceImportError(f"{where}: entry {name!r} is a {type(value).__name__}, not a tensor")
        bare = str(name)
        while bare.startswith(_WRAPPER_PREFIXES):
            bare = bare.split(".", 1)[1]
        bare = unwrapped_name(bare)
        if bare in out:
            raise ReferenceImportError(f"{where}: two entries are both {bare!r} once prefixes are removed")
        out[bare] = value
    return out


def plain_args(args: Any) -> dict[str, Any]:
    """The training arguments as plain data (provenance and checks)."""
    if args is None:
        return {}
    items = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    plain = (bool, int, float, str, type(None))
    return {str(k): (v if isinstance(v, plain) else str(v)) for k, v in items.items()}


# --------------------------------------------------------------------------- checking
def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _layer_count(names) -> int:
    return len({m.group(1) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))})


def map_weights(
    state: dict[str, torch.Tensor], layout: ReferenceLayout, own: dict[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """The file's tensors under this model's names (reshaped, cast to the model's dtypes); every
    missing, extra or misshapen tensor is reported in one message."""
    missing = [n for n in layout.tensors if n not in state]
    extra = sorted(n for n in state if n not in layout.tensors)
    reshaped = [
        f"{n} {list(state[n].shape)} (the spec's model needs {list(shape)})"
        for n, (_, shape) in layout.tensors.items()
        if n in state and tuple(state[n].shape) != shape
    ]
    problems = []
    if _layer_count(state) != _layer_count(layout.tensors):
        problems.append(f"it holds {_layer_count(state)} transformer layers, the spec {_layer_count(layout.tensors)}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} tensor(s) the spec's model does not have: {_listing(extra)}")
    if reshaped:
        problems.append(f"{len(reshaped)} tensor(s) of another shape: {_listing(reshaped)}")
    if problems:
        raise ReferenceImportError(f"{where} does not fit the spec's model: " + "; ".join(problems))
    return {
        name: state[theirs].reshape(own[name].shape).to(own[name].dtype) for theirs, (name, _) in layout.tensors.items()
    }


def check_args(args: dict[str, Any], layout: ReferenceLayout, image_size: int | None, where: str) -> None:
    """Geometry stored in the file's ``args`` against the spec's; absent arguments are not checked."""
    expected = dict(layout.args)
    if image_size is not None:
        expected["image_size"] = (image_size, "data (image size)")
    wrong = [
        f"{key} = {args[key]!r} (the spec: {value!r}, {source})"
        for key, (value, source) in expected.items()
        if key in args and not _same(args[key], value)
    ]
    if wrong:
        raise ReferenceImportError(
            f"{where}: its training arguments disagree with the spec: {'; '.join(wrong)}; import it with the "
            "spec it was trained with"
        )


def _same(stored: Any, expected: Any) -> bool:
    if isinstance(expected, bool):  # a store_true flag
        return isinstance(stored, (bool, int)) and bool(stored) == expected
    return stored == expected and not isinstance(stored, bool)


# --------------------------------------------------------------------------- the import
def import_reference(path: str | Path, loaded, registry, out: str | Path) -> ImportResult:
    """Import the file at ``path`` for the spec ``loaded`` (a ``LoadedSpec``) into the new run folder ``out``.

    Raises ``ReferenceImportError`` (nothing written) for a file that is not the released checkpoint or
    does not fit the spec."""
    from madkit.build import build_experiment

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise ReferenceImportError(f"{path}: no such file")
    if out.exists():
        raise ReferenceImportError(f"{out} already exists; import into a new run folder (--out)")
    experiment = build_experiment(loaded.spec, registry, meta=True)  # names, shapes and dtypes, no memory
    try:
        layout = experiment.model.reference_layout()
    except NotImplementedError as exc:
        raise ReferenceImportError(f"{loaded.source}: {exc}") from None
    own = experiment.model.state_dict()
    contents = read_reference_file(path)
    args = plain_args(contents.get("args"))
    h, w = experiment.image_shape[1:]
    check_args(args, layout, h if h == w else None, str(path))

    present = [k for k in WEIGHT_KEYS if isinstance(contents.get(k), dict)]
    weights_key, raw_key = present[0], ("model" if "model" in present and "ema" in present else None)
    ema = map_weights(
        unwrapped(contents[weights_key], f"{path} [{weights_key!r}]"), layout, own, f"{path} [{weights_key!r}]"
    )
    raw = (
        ema
        if raw_key is None
        else map_weights(unwrapped(contents[raw_key], f"{path} ['model']"), layout, own, f"{path} ['model']")
    )
    digest = sha256_of(path)
    provenance = {
        "source": "reference-import",
        "source_file": path.name,
        "sha256": digest,
        "weights_key": weights_key,
        "raw_weights_key": raw_key,
        "args": args,
    }
    versions = collect_versions(registry)
    state = {"step": 0, "spec": loaded.raw, "versions": versions, "provenance": provenance}
    _write_run(out, loaded.to_toml(), versions, raw, ema, state)
    return ImportResult(out, weights_key, raw_key, len(ema), sum(t.numel() for t in ema.values()), digest)


def _write_run(out: Path, toml: str, versions: dict[str, Any], raw, ema, state: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.import-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        RunDir(tmp).prepare(toml, versions, resume_step=0)
        save_checkpoint(tmp, 0, raw, ema, state, keep=1)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
