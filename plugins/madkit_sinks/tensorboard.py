"""``tensorboard``: scalars, sample grids and the run's hyperparameters as TensorBoard event files.

View with ``tensorboard --logdir runs``. Scalars keep the trainer's names (``loss``, ``loss/hidden``,
``lr``, ``grad_norm``, ``images_per_s``, ``mem_gb``), so TensorBoard groups loss terms together;
``madkit eval`` adds ``eval/<metric>/<settings>`` at the checkpoint's step. The resolved spec goes
to the HPARAMS tab (one entry per dotted key) and, whole, to the TEXT tab.

Needs the ``tensorboard`` package (``pip install 'madkit[tensorboard]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from madkit import errors
from madkit.interfaces import Sink, SpecProblem
from madkit.spec_loading import flatten

# what the HPARAMS tab lists next to the hyperparameters of each run
HPARAM_METRICS = ("loss", "grad_norm")


def missing_package(package: str, extra: str, sink: str) -> list[SpecProblem]:
    """A problem naming the install command when ``package`` cannot be imported."""
    missing = errors.missing_package(package, extra, f"the {sink} sink")
    return [SpecProblem("", missing)] if missing else []


def plain_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """Flattened spec values TensorBoard (and trackers) accept: numbers, strings, bools; lists as text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten(config).items()}


@attrs.frozen
class TensorBoardConfig:
    subdir: str = "tensorboard"  # inside the run folder
    flush_secs: int = 30  # how often pending events reach the disk

    def build(self, run_dir: str | Path) -> TensorBoardSink:
        return TensorBoardSink(Path(run_dir) / self.subdir, self.flush_secs)

    def check(self, context: dict[str, Any]) -> list[SpecProblem]:
        return missing_package("tensorboard", "tensorboard", "tensorboard")


class TensorBoardSink(Sink):
    def __init__(self, log_dir: Path, flush_secs: int = 30):
        # imported here: tensorboard is only needed when this sink is used
        errors.require_package("tensorboard", "tensorboard", "the tensorboard sink")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def log_image(self, step: int, tag: str, image_uint8_hwc) -> None:
        image = torch.as_tensor(image_uint8_hwc)
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"log_image expects uint8 [H, W, C] with C in 1, 3, 4; got {image.dtype} {tuple(image.shape)}"
            )
        self._writer.add_image(tag, image.numpy(), global_step=step, dataformats="HWC")

    def log_config(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        from madkit.experiment_spec import dumps_toml

        # written into this run's own event file (SummaryWriter.add_hparams would start a separate run)
        experiment, session_start, session_end = hparams(plain_hparams(config), dict.fromkeys(HPARAM_METRICS, 0.0))
        writer = self._writer.file_writer
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)
        self._writer.add_text("config", "```toml\n" + dumps_toml(config) + "```")

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
