"""What sampling, evaluation and sweeps load: a run folder, a checkpoint folder or an export folder.

``resolve_weights(path)`` says which it is and where outputs about it belong; ``load_for_inference``
rebuilds the experiment from the spec stored with the weights and loads them. ``madkit sample``,
``eval`` and ``sweep`` go through these two functions only, so any folder one accepts, all accept.

    run folder         RUN/checkpoints/<latest step>/ (EMA or raw weights); outputs under RUN/
    checkpoint folder  RUN/checkpoints/<step>/; outputs under RUN/ (a loose one: under itself)
    export folder      ``madkit export`` output (EMA weights only); outputs under runs/exports/<its name>
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from madkit.engine.checkpoints import export_format as export
from madkit.engine.checkpoints import loading
from madkit.engine.checkpoints.layout import CHECKPOINTS
from madkit.engine.checkpoints.saving import load_unwrapped
from madkit.errors import UserError
from madkit.interfaces import INTERFACES


@attrs.frozen
class WeightsSource:
    """Weights to sample from, and how outputs about them are filed."""

    path: Path  # the checkpoint folder or the export folder
    kind: str  # "checkpoint" | "export"
    step: int  # the training step the weights are from (0 when unknown)
    home: Path  # where samples/ and eval/ go
    label: str  # names output folders: the checkpoint folder's name, or "export"


def resolve_weights(path: str | Path) -> WeightsSource:
    """The weights ``path`` names: an export folder, a checkpoint folder or a run folder's latest checkpoint."""
    path = Path(path)
    if export.is_export(path):
        return WeightsSource(path, "export", export.read_export(path).step, export_outputs(path), "export")
    ckpt = loading.resolve_checkpoint(path)
    home = ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt
    return WeightsSource(ckpt, "checkpoint", int(ckpt.name) if ckpt.name.isdigit() else 0, home, ckpt.name)


EXPORT_OUTPUTS = Path("runs") / "exports"


def export_outputs(folder: Path) -> Path:
    """Where samples and evaluations of an export go: ``runs/exports/<name>`` under the working folder,
    never the export itself (it may be a read-only hub snapshot, and it is what gets shared). A hub
    snapshot (``models--owner--name/snapshots/<revision>``) is named after its repository."""
    folder = Path(folder).resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return EXPORT_OUTPUTS / folder.parent.parent.name.removeprefix("models--")
    return EXPORT_OUTPUTS / folder.name


def load_for_inference(
    source: str | Path | WeightsSource, registry, use_ema: bool = True, device: torch.device | str = "cpu"
):
    """Rebuild the experiment from the spec stored with the weights and load them.

    Returns ``(experiment, model)``; ``model`` (eval mode, on ``device``) is ``experiment.model``.
    ``source`` is a run, checkpoint or export folder, or what ``resolve_weights`` made of one.
    """
    from madkit.build import build_experiment
    from madkit.experiment_spec import structure_spec
    from madkit.spec import SpecError

    src = source if isinstance(source, WeightsSource) else resolve_weights(source)
    raw_spec, shapes_file = stored_spec(src, use_ema)
    try:
        spec = structure_spec(raw_spec, registry)
    except SpecError as exc:
        if src.kind == "export" and (hint := _missing_plugins(src.path, registry)):
            raise MissingPluginError(f"{src.path} needs plugins that are not installed: {hint}") from exc
        raise
    experiment = build_experiment(spec, registry, device=str(device))
    model = experiment.model
    loading.check_compatible(shapes_file, model, raw_spec, f"the spec stored in {src.path}", raw_spec)
    load_unwrapped(model, read_weights(src, use_ema, device))
    model.eval()
    return experiment, model


def load_newest_for_inference(
    path: str | Path, registry, use_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[WeightsSource, Any, torch.nn.Module]:
    """``load_for_inference`` of what ``path`` names, safe on a live run: when training prunes the
    checkpoint being read, the newer one is read instead. Returns ``(source, experiment, model)``."""
    def load(src: WeightsSource):
        return (src, *load_for_inference(src, registry, use_ema=use_ema, device=device))

    return loading.reading_newest(path, resolve_weights, load)


class MissingPluginError(UserError):
    """An export names component kinds no installed plugin registers; the message says what to install."""


def _missing_plugins(folder: Path, registry) -> str:
    """``pip install`` lines for the kinds an export records (provenance "plugins") that ``registry``
    lacks; empty when it records none or lacks none."""
    needed = export.read_export(folder).provenance.get("plugins") or {}
    missing = {}
    for key, owner in needed.items():
        interface, _, kind = key.partition(" ")
        if interface in INTERFACES and kind not in registry.kinds(interface):
            missing.setdefault((owner.get("distribution"), owner.get("version")), []).append(f"{interface} {kind!r}")
    return "; ".join(
        f"{', '.join(kinds)} from {dist} {version} (pip install '{dist}=={version}')"
        for (dist, version), kinds in sorted(missing.items())
    )


def stored_spec(src: WeightsSource, use_ema: bool = True) -> tuple[dict, Path]:
    """(the resolved spec stored with the weights, what ``loading.check_compatible`` reads shapes from)."""
    if src.kind == "export":
        if not use_ema:
            raise loading.CheckpointError(f"{src.path} is an export and holds only the EMA weights; drop --raw")
        manifest = export.read_export(src.path)
        return manifest.spec, manifest.weights_file
    return loading.stored_spec(src.path), src.path


def read_weights(src: WeightsSource, use_ema: bool = True, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    if src.kind == "export":
        return export.load_export_weights(src.path, device)
    return loading.load_weights(src.path, use_ema, device)
