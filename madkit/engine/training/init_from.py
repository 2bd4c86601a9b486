"""``train.init_from``: start a fresh run from trained weights, and nothing else.

Unlike resuming (``train.resume``), which restores the optimizer, the step, the schedules and the
random state, this only loads weights: the new run starts at step 0 with a fresh optimizer and its
own spec (another learning rate, dataset or step count, for fine-tuning). The source is a run folder,
a checkpoint folder, an export folder or a hub id (see madkit.engine.packaging.hub); its EMA weights are used, the
ones sampling uses, and the new run's EMA starts from them too. A run folder that already holds
checkpoints resumes from them instead, so rerunning a fine-tuning command continues it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from madkit.engine import checkpoints
from madkit.engine.checkpoints.weights import read_weights, resolve_weights, stored_spec
from madkit.engine.packaging.hub import resolve_pretrained


def initialize_from(
    model: nn.Module, source: str, spec_raw: dict, spec_source: str, device: torch.device,
    load: Callable[[nn.Module, dict[str, torch.Tensor]], None] = checkpoints.load_unwrapped,
) -> Path:
    """Load ``source``'s EMA weights into ``model``; returns the checkpoint or export folder used.
    Shapes must match the model the current spec builds (``IncompatibleCheckpointError``).
    ``load(model, weights)`` puts them in (a sharded model keeps its slices: sharded_build.py)."""
    src = resolve_weights(resolve_pretrained(source))
    stored, shapes_file = stored_spec(src)
    checkpoints.check_compatible(shapes_file, model, spec_raw, spec_source, stored)
    load(model, read_weights(src, True, device))
    return src.path
