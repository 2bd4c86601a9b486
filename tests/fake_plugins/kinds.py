"""Tiny ``test-*`` kinds for the interfaces that have no built-in plugin in these tests' scope.

They exist to exercise spec structuring, cross-field checks and the CLI. ``build`` returns a
``Built`` record of the config and the runtime arguments it was given, so tests can assert that
madkit.build passes each interface its documented runtime arguments; nothing here trains or samples.
"""

from __future__ import annotations

from typing import Any

import attrs

from madkit.hookspecs import hookimpl
from madkit.interfaces import SpecProblem
from madkit.spec import slot

DISTRIBUTION = "madkit-test-fakes"  # the distribution name tests install these kinds under
ENTRY_POINT = "test-fakes"  # the plugin (entry point) name


@attrs.frozen
class Built:
    config: Any
    runtime: dict[str, Any]


@attrs.frozen
class BlankDataConfig:
    """Square RGB images of ``size`` pixels; ``classes`` labels (0 = unconditional)."""

    size: int  # required: there is no sensible default image size
    classes: int = 0
    hflip: bool = False

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def num_classes(self) -> int:
        return self.classes

    def build(self) -> Built:
        return Built(self, {})


@attrs.frozen
class PixelCodecConfig:
    """Latents are images downsampled by ``factor`` with ``channels`` channels."""

    factor: int = 1
    channels: int = 3

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return (self.channels, image_shape[1] // self.factor, image_shape[2] // self.factor)

    def check(self, context: dict[str, Any]):
        if "image_shape" in context and context["image_shape"][1] % self.factor:
            size = context["image_shape"][1]
            yield SpecProblem("factor", f"factor {self.factor} does not divide the image size {size}")

    def build(self) -> Built:
        return Built(self, {})


@attrs.frozen
class TinyModelConfig:
    """A model slot with a nested partitioner slot, like the real madformer config."""

    partitioner: slot("partitioner")  # type: ignore[valid-type]
    depth: int = 2
    diffusion_depth: int = 1
    width: int = 8

    def check(self, context: dict[str, Any]):
        if self.diffusion_depth > self.depth:
            yield SpecProblem("diffusion_depth", f"{self.diffusion_depth} diffusion layers > depth {self.depth}")
        if "latent_shape" in context:
            _, h, w = context["latent_shape"]
            for problem in self.partitioner.problems((h, w)):
                yield SpecProblem(f"partitioner.{problem.path}".rstrip("."), problem.message)

    def build(self, latent_shape, num_classes, registry) -> Built:
        return Built(self, {"latent_shape": latent_shape, "num_classes": num_classes, "registry": registry})


@attrs.frozen
class LinearScheduleConfig:
    steps: int = 1000

    def build(self) -> Built:
        return Built(self, {})


@attrs.frozen
class EulerSamplerConfig:
    steps: int = 10
    guidance: float = 1.0

    def build(self, schedule) -> Built:
        return Built(self, {"schedule": schedule})


KINDS = {
    ("data", "test-blank"): BlankDataConfig,
    ("codec", "test-pixels"): PixelCodecConfig,
    ("model", "test-tiny"): TinyModelConfig,
    ("schedule", "test-linear"): LinearScheduleConfig,
    ("sampler", "test-euler"): EulerSamplerConfig,
}


@hookimpl
def madkit_register(registry):
    for (interface, kind), config_cls in KINDS.items():
        registry.register(interface, kind, config_cls)
