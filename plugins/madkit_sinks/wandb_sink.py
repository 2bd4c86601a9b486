"""``wandb``: metrics, sample grids and the resolved spec in a Weights & Biases run.

Configured in the spec (``[[log.sinks]] kind = "wandb"`` with ``project``, ``entity``, ``mode``,
``tags``) or the way wandb is everywhere, through its environment: ``WANDB_PROJECT`` (default
``madkit``), ``WANDB_ENTITY``, ``WANDB_MODE`` (``offline`` keeps the run on disk under RUN/wandb/, to
upload later with ``wandb sync``), ``WANDB_API_KEY``; a value the spec sets wins. The run is named after the run
folder; its id is kept in RUN/wandb/madkit-run-id so a resumed training and a later ``madkit eval``
add to the same wandb run. Every record carries the training step as ``step``, the x-axis of all
charts, so evaluations of earlier checkpoints land at their own step.

Needs the ``wandb`` package (``pip install 'madkit[wandb]'``). madkit's own console log
(RUN/train.log) stays the record of the console: wandb's console capture is off.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from madkit.errors import require_package
from madkit.interfaces import Sink, SpecProblem
from madkit_sinks.tensorboard import missing_package, plain_hparams

ID_FILE = "madkit-run-id"
MODES = ("", "online", "offline", "disabled")
STEP_KEY = "step"


@attrs.frozen
class WandbConfig:
    subdir: str = "wandb"  # inside the run folder: wandb's files and the run id
    # "" for each of these: wandb's environment (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE), else its default
    project: str = ""  # the environment's WANDB_PROJECT, else "madkit"
    entity: str = ""
    mode: str = attrs.field(default="", validator=attrs.validators.in_(MODES))
    tags: list[str] = attrs.Factory(list)

    def build(self, run_dir: str | Path) -> WandbSink:
        return WandbSink(Path(run_dir), self)

    def check(self, context: dict[str, Any]) -> list[SpecProblem]:
        return missing_package("wandb", "wandb", "wandb")


class WandbSink(Sink):
    def __init__(self, run_dir: Path, config: WandbConfig):
        self._wandb = wandb = require_package("wandb", "wandb", "the wandb sink")
        folder = run_dir / config.subdir
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        try:
            self.run = wandb.init(
                project=config.project or os.environ.get("WANDB_PROJECT") or "madkit",
                entity=config.entity or None,
                mode=config.mode or None,
                tags=list(config.tags) or None,
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(folder),
                settings=wandb.Settings(console="off", silent=True),
            )
        except wandb.errors.UsageError as exc:  # typically: not logged in, no terminal to ask on
            raise RuntimeError(
                f"wandb could not start a run ({exc}); log in with `wandb login`, or set WANDB_MODE=offline to "
                f"keep the run in {folder} and upload it later with `wandb sync`"
            ) from None
        id_file.write_text(run_id + "\n")
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({**scalars, STEP_KEY: step})

    def log_image(self, step: int, tag: str, image_uint8_hwc) -> None:
        pixels = np.asarray(image_uint8_hwc)
        self.run.log({tag: self._wandb.Image(pixels, caption=f"step {step}"), STEP_KEY: step})

    def log_config(self, config: dict[str, Any]) -> None:
        # allow_val_change: a resumed run with --allow-changes records the new values
        self.run.config.update(plain_hparams(config), allow_val_change=True)

    def close(self) -> None:
        self.run.finish()
