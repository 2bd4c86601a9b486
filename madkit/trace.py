"""A generation trace: the image appearing block by block, and optionally each block being denoised.

``TraceCollector`` watches generation through ``GenerationObserver``s (one per batch) and turns
what it saw into one ``Trace`` per image: frames [F, 3, H, W] in [-1, 1]. Mode ``"blocks"``: frame 0
is blank (grey) and frame k holds the first k blocks in generation order, so the last frame is the
image. Mode ``"steps"``: before each block's finished frame, one frame per denoising step showing
that block's current clean-sample estimate (``Sampler.denoised``) beside the finished blocks.
Unfinished blocks are grey (0 in [-1, 1]). A trace is written as an animated GIF and a strip PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import torch

from madkit.atomic_files import writing_atomically
from madkit.generation import block_pixels, num_blocks, to_uint8_hwc
from madkit.interfaces import Codec, GenerationObserver, GenerativeModel

MODES = ("blocks", "steps")
MIN_SIDE = 128  # a written frame is enlarged by a whole factor (nearest pixels) to at least this
FRAME_MS, LAST_FRAME_MS = 250, 1500


class TraceError(ValueError):
    """A trace mode that does not exist."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise TraceError(f"trace mode {mode!r} does not exist; use one of {', '.join(MODES)}")
    return mode


@attrs.frozen
class Trace:
    """One image's trace: ``frames`` [F, 3, H, W] in [-1, 1]; ``captions[f]`` says what frame f shows."""

    frames: torch.Tensor
    captions: tuple[str, ...]
    per_row: int  # frames per strip row: blank + the blocks, or one block's steps and its finished frame
    strip_skips_blank: bool = False  # a steps strip starts each row at a block's first step

    def save_gif(self, path: str | Path) -> Path:
        """An animated GIF that loops, the finished image held longest."""
        pictures = [_enlarged(frame) for frame in self.frames]
        durations = [FRAME_MS] * (len(pictures) - 1) + [LAST_FRAME_MS]
        path = Path(path)
        with writing_atomically(path) as tmp:
            pictures[0].save(tmp, format="gif", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
        return path

    def save_strip(self, path: str | Path) -> Path:
        """Every frame side by side, ``per_row`` to a row (for print)."""
        from torchvision.utils import make_grid, save_image

        frames = self.frames[1:] if self.strip_skips_blank else self.frames
        grid = make_grid((frames + 1) / 2, nrow=self.per_row, padding=2, pad_value=1.0)
        scale = max(1, math.ceil(MIN_SIDE / 2 / max(self.frames.shape[-2:])))
        grid = grid.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        path = Path(path)
        with writing_atomically(path) as tmp:
            save_image(grid, tmp, format="png")
        return path


def _enlarged(frame: torch.Tensor):
    from PIL import Image

    scale = max(1, math.ceil(MIN_SIDE / max(frame.shape[-2:])))
    return Image.fromarray(to_uint8_hwc(frame.repeat_interleave(scale, -2).repeat_interleave(scale, -1)).numpy())


class _BatchRecorder(GenerationObserver):
    """What one batch's generation showed: (block, step or None, latents on the CPU)."""

    def __init__(self, steps: bool):
        self.wants_steps = steps
        self.seen: list[tuple[int, int | None, torch.Tensor]] = []

    def block_finished(self, block: int, latents: torch.Tensor) -> None:
        self.seen.append((block, None, latents.float().cpu()))

    def step(self, block: int, step: int, latents: torch.Tensor) -> None:
        self.seen.append((block, step, latents.float().cpu()))


class TraceCollector:
    """Hand ``observer_for`` to ``generate_latents`` / ``generate_images``; after each batch,
    ``pop(indices)`` decodes its traces (and forgets them, so memory holds one batch at a time)."""

    def __init__(self, model: GenerativeModel, codec: Codec, image_hw: tuple[int, int], mode: str = "blocks"):
        self.codec, self.mode = codec, check_mode(mode)
        self.device = next(model.parameters()).device  # where the codec was moved to, beside the model
        self.blocks = block_pixels(model, image_hw)  # [H, W]
        self.num_blocks = num_blocks(model)
        self._recorders: dict[tuple[int, ...], _BatchRecorder] = {}

    def observer_for(self, indices: list[int]) -> GenerationObserver:
        recorder = _BatchRecorder(self.mode == "steps")
        self._recorders[tuple(indices)] = recorder
        return recorder

    def batches(self) -> list[list[int]]:
        """The index lists of the batches recorded and not yet popped, in generation order."""
        return [list(idx) for idx in self._recorders]

    @torch.no_grad()
    def pop(self, indices: list[int]) -> list[Trace]:
        """The traces of the batch generated for ``indices``, in that order."""
        seen = self._recorders.pop(tuple(indices)).seen
        n = len(indices)
        decoded = [self.codec.decode(latents[:n].to(self.device)).float().clamp(-1, 1).cpu() for _, _, latents in seen]
        frames, captions = [torch.zeros_like(decoded[0])], ["nothing generated yet"]
        for (block, step, _), images in zip(seen, decoded):
            # finished blocks < block, and block itself (its estimate or its final value); grey after it
            shown = (self.blocks <= block).to(images.dtype)
            frames.append(images * shown)
            captions.append(f"block {block + 1}/{self.num_blocks}" + (f", step {step + 1}" if step is not None else ""))
        stacked = torch.stack(frames, 1)  # [n, F, 3, H, W]
        steps = self.mode == "steps"
        per_row = _steps_per_block(seen) + 1 if steps else self.num_blocks + 1
        return [Trace(stacked[i], tuple(captions), per_row, steps) for i in range(n)]


def _steps_per_block(seen) -> int:
    return sum(1 for block, step, _ in seen if block == seen[-1][0] and step is not None)
