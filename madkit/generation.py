"""Generating images: per-image randomness, batching, sharding and decoding.

Image i's noise comes from its own generator seeded from (seed, i), so a set of images does not depend
on the batch size or on how indices are split across processes (``shard=(i, k)`` takes every k-th
index starting at i). Labels of class-conditional models cycle through the classes (i mod classes)
unless given.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from madkit import rng
from madkit.errors import ConfigError
from madkit.interfaces import Codec, GenerationObserver, GenerativeModel, Sampler


def shard_indices(num: int, shard: tuple[int, int] = (0, 1)) -> list[int]:
    i, k = shard
    if not (k >= 1 and 0 <= i < k):
        raise ConfigError(f"shard {i}/{k} is invalid: need 0 <= i < k")
    return list(range(i, num, k))


def parse_shard(text: str) -> tuple[int, int]:
    """'i/k' -> (i, k)."""
    try:
        i, k = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/k such as 0/4") from None
    shard_indices(0, (i, k))
    return i, k


class GuidanceError(ValueError):
    """Classifier-free guidance was asked of a model that has no classes."""


UNCONDITIONAL = "this model does not use class labels (it was not trained class-conditional)"


def check_guidance(guidance: float | None, conditional: bool) -> None:
    """Refuse a guidance scale other than 1 for a model that ignores labels: it would silently do nothing."""
    if guidance is not None and guidance != 1.0 and not conditional:
        raise GuidanceError(
            f"guidance {guidance:g} needs a class-conditional model, but {UNCONDITIONAL}; leave guidance at 1 (off)"
        )


def check_labels(labels, num: int | None, num_classes: int, conditional: bool) -> torch.Tensor | None:
    """``labels`` (a sequence or tensor of class indices, or None) as a long tensor, checked against
    the model's classes and the image count."""
    if labels is None:
        return None
    if not conditional or not num_classes:
        raise ValueError(f"labels were given, but {UNCONDITIONAL}")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if num is not None and len(labels) != num:
        raise ValueError(f"{len(labels)} labels for {num} images; give one label per image")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"label {int(bad[0])} is out of range: this model has classes 0..{num_classes - 1}")
    return labels


def default_labels(indices: Sequence[int], num_classes: int) -> torch.Tensor | None:
    return torch.tensor([i % num_classes for i in indices]) if num_classes else None


@torch.no_grad()
def generate_latents(
    model: GenerativeModel,
    sampler: Sampler,
    indices: Sequence[int],
    seed: int,
    num_classes: int = 0,
    batch: int = 16,
    steps: int | None = None,
    guidance: float | None = None,
    use_cache: bool = True,
    labels: torch.Tensor | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    progress: bool = False,
    prefix: torch.Tensor | None = None,
    keep: int = 0,
    observer_for: Callable[[list[int]], GenerationObserver] | None = None,
    stream: tuple[str | int, ...] = ("sample",),
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, latents [len, c, h, w]) batch by batch.

    Completion: ``prefix`` [len(indices), c, h, w] latents whose first ``keep`` blocks each image
    keeps (``GenerativeModel.generate``). ``observer_for(batch_indices)`` gives the observer of one
    batch (a trace); it may see more rows than the batch has (a lone image runs as a pair of copies).
    ``stream``: image i's generator is seeded from (seed, *stream, i), ("sample", i) by default."""
    check_guidance(guidance, model.class_conditional)
    device = next(model.parameters()).device
    labels = default_labels(indices, num_classes) if labels is None else labels
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(indices), batch), disable=None if progress else True, desc="generate"):
            idx = list(indices[start : start + batch])
            # A chunk of one image runs as a pair of copies: on the CPU a one-row matmul takes BLAS's
            # matrix-vector path, which rounds differently from the matrix-matrix path every larger
            # chunk takes, and image i must not depend on the batch size or the shard it falls in.
            run = idx * 2 if len(idx) == 1 else idx
            generators = [rng.generator(seed, *stream, i, device=device) for i in run]
            lab = labels[start : start + batch].to(device) if labels is not None else None
            if lab is not None and len(run) > len(idx):
                lab = lab.repeat(len(run))
            # only what is used is passed on: a third-party model without completion or observers still samples
            extra = {}
            if prefix is not None and keep:
                rows = prefix[start : start + batch].to(device)
                extra.update(prefix=rows.repeat(len(run) // len(idx), 1, 1, 1), keep=keep)
            if observer_for is not None:
                extra["observer"] = observer_for(idx)
            with autocast():
                latents = model.generate(
                    sampler, generators, labels=lab, steps=steps, guidance=guidance, use_cache=use_cache, **extra
                )
            yield idx, latents[: len(idx)].float()
    finally:
        model.train(was_training)


def generate_images(
    model: GenerativeModel, sampler: Sampler, codec: Codec, indices: Sequence[int], seed: int, **kwargs
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, images [len, 3, H, W] in [-1, 1] on the CPU) batch by batch."""
    for idx, latents in generate_latents(model, sampler, indices, seed, **kwargs):
        yield idx, codec.decode(latents).float().clamp(-1, 1).cpu()


def block_pixels(model: GenerativeModel, image_hw: tuple[int, int]) -> torch.Tensor:
    """[H, W] long: the generation-order block of each image pixel (``block_index`` scaled up)."""
    index = model.block_index()
    h, w = index.shape
    H, W = image_hw
    if H % h or W % w:
        raise ValueError(f"image {H}x{W} is not a whole multiple of the latent grid {h}x{w}")
    return index.repeat_interleave(H // h, 0).repeat_interleave(W // w, 1)


def num_blocks(model: GenerativeModel) -> int:
    return int(model.block_index().max()) + 1


def to_uint8_hwc(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
