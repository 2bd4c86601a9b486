"""Assemble a checked spec into live components: the only place configs meet runtime arguments."""

from __future__ import annotations

import attrs

from madkit.experiment_spec import ExperimentSpec, spec_context
from madkit.interfaces import Codec, DataSource, GenerativeModel, NoiseSchedule, Sampler
from madkit.registry import Registry


@attrs.define
class Experiment:
    spec: ExperimentSpec
    registry: Registry
    codec: Codec
    model: GenerativeModel
    schedule: NoiseSchedule
    sampler: Sampler
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    num_classes: int
    _data: DataSource | None = None

    @property
    def data(self) -> DataSource:
        """Built on first use: sampling from a checkpoint must not need the training data."""
        if self._data is None:
            self._data = self.spec.data.build()
        return self._data


def build_experiment(spec: ExperimentSpec, registry: Registry, device: str = "cpu", meta: bool = False) -> Experiment:
    """Build codec, model, schedule and sampler. ``meta=True`` builds the model without memory."""
    context = spec_context(spec, registry)
    if "latent_shape" not in context:
        raise ValueError(
            "the data config must define image_shape() and the codec config latent_shape(image_shape) "
            "so the model can be sized without reading data"
        )
    image_shape, latent_shape = context["image_shape"], context["latent_shape"]
    schedule = spec.schedule.build()
    sampler = spec.sampler.build(schedule=schedule)
    codec = spec.codec.build()
    with _device_context("meta" if meta else device):
        model = spec.model.build(latent_shape=latent_shape, num_classes=context["num_classes"], registry=registry)
    return Experiment(
        spec, registry, codec, model, schedule, sampler, image_shape, latent_shape, context["num_classes"]
    )


def _device_context(device: str):
    import torch

    return torch.device(device)
