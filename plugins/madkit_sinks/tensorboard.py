"""``tensorboard``: scalars and sample grids as TensorBoard event files in RUN/tensorboard/.

View with ``tensorboard --logdir runs``. Scalars keep the trainer's names (``loss``, ``loss/hidden``,
``lr``, ``grad_norm``, ``images_per_s``, ``mem_gb``), so TensorBoard groups loss terms together.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from madkit.interfaces import Sink


@attrs.frozen
class TensorBoardConfig:
    subdir: str = "tensorboard"  # inside the run folder
    flush_secs: int = 30  # how often pending events reach the disk

    def build(self, run_dir: str | Path) -> TensorBoardSink:
        return TensorBoardSink(Path(run_dir) / self.subdir, self.flush_secs)


class TensorBoardSink(Sink):
    def __init__(self, log_dir: Path, flush_secs: int = 30):
        # imported here: tensorboard is only needed when this sink is used
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

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
