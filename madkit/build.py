"""Assemble a checked spec into live components: the only place configs meet runtime arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from madkit.errors import ConfigError, UserError
from madkit.experiment_spec import ExperimentSpec, spec_context
from madkit.interfaces import Codec, DataSource, GenerativeModel, NoiseSchedule, Sampler
from madkit.registry import Registry


@attrs.define
class Experiment:
    spec: ExperimentSpec
    registry: Registry
    model: GenerativeModel
    schedule: NoiseSchedule
    sampler: Sampler
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    num_classes: int
    _data: DataSource | None = None
    _codec: Codec | None = None

    @property
    def data(self) -> DataSource:
        """Built on first use: sampling from a checkpoint must not need the training data."""
        if self._data is None:
            self._data = build_part(self.registry, "data", self.spec.data)
        return self._data

    @property
    def codec(self) -> Codec:
        """Built on first use: counting FLOPs must not need the VAE weights."""
        if self._codec is None:
            self._codec = build_part(self.registry, "codec", self.spec.codec)
        return self._codec

    def make_sampler(self, kind: str | None = None, **settings: Any) -> tuple[Sampler, str]:
        """(sampler, kind): the spec's own when ``kind`` is None and no ``settings`` are given, else
        ``kind`` (default: the spec's) built for this experiment's schedule. Another kind keeps the
        spec's ``steps`` and ``guidance`` unless ``settings`` say otherwise."""
        own = self.registry.kind_of("sampler", self.spec.sampler)
        if kind is None and not settings:
            return self.sampler, own
        kind = kind or own
        config_cls = self.registry.get("sampler", kind).config_cls
        names = {f.name for f in attrs.fields(config_cls)}
        keep = {n: getattr(self.spec.sampler, n) for n in ("steps", "guidance") if n in names}
        if kind == own:
            keep = attrs.asdict(self.spec.sampler, recurse=False)
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ConfigError(f"sampler {kind!r} has no setting(s) {unknown}; it has {sorted(names)}")
        return build_part(self.registry, "sampler", config_cls(**{**keep, **settings}), schedule=self.schedule), kind

    def generate(
        self,
        num: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        guidance: float | None = None,
        batch: int = 16,
        use_cache: bool = True,
        model: GenerativeModel | None = None,
        progress: bool = False,
        labels: Any = None,
        sampler: str | Sampler | None = None,
        observer_for: Callable[[list[int]], Any] | None = None,
    ):
        """Images [num, 3, H, W] in [-1, 1] on the CPU; image i's noise comes from (seed, i).

        ``labels``: one class per image (a list or tensor; ``num`` defaults to its length), for
        class-conditional models; None cycles through the classes. ``sampler``: a sampler kind
        (e.g. ``"ddim"``) or a built ``Sampler``; None uses the spec's. ``observer_for``: as in
        ``madkit.generation.generate_latents`` (a trace watches through it).
        """
        import torch

        from madkit.generation import check_labels, generate_images

        _check_int("num", num, positive=True, optional=True)
        _check_int("batch", batch, positive=True)
        _check_int("seed", seed)
        _check_int("steps", steps, positive=True, optional=True)
        model = model or self.model
        device = next(model.parameters()).device
        labels = check_labels(labels, num, self.num_classes, model.class_conditional)
        num = len(labels) if num is None and labels is not None else num
        if num is None or num <= 0:
            raise ValueError(f"num must be a positive image count, got {num}")
        if sampler is None or isinstance(sampler, str):
            sampler = self.make_sampler(sampler)[0]
        chunks = [
            images
            for _, images in generate_images(
                model, sampler, self.codec.to(device), range(num), seed, num_classes=self.num_classes,
                batch=batch, steps=steps, guidance=guidance, use_cache=use_cache, progress=progress, labels=labels,
                observer_for=observer_for,
            )
        ]
        return torch.cat(chunks)


def _check_int(name: str, value: Any, positive: bool = False, optional: bool = False) -> None:
    """Python misuse of ``generate`` as Python errors (TypeError, ValueError) naming the argument,
    before it reaches torch as an unrelated message (``range() arg 3 must not be zero``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        wanted = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r:.40}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")


def build_experiment(spec: ExperimentSpec, registry: Registry, device: str = "cpu", meta: bool = False) -> Experiment:
    """Build the model, schedule and sampler (data and codec on first use). ``meta=True`` builds the
    model on the meta device: shapes and parameter counts without memory."""
    context = spec_context(spec, registry)
    if "latent_shape" not in context:
        raise ValueError(
            "the data config must define image_shape() and the codec config latent_shape(image_shape) "
            "so the model can be sized without reading data"
        )
    image_shape, latent_shape = context["image_shape"], context["latent_shape"]
    schedule = build_part(registry, "schedule", spec.schedule)
    sampler = build_part(registry, "sampler", spec.sampler, schedule=schedule)
    with _device_context("meta" if meta else device):
        model = build_part(
            registry, "model", spec.model, latent_shape=latent_shape, num_classes=context["num_classes"],
            registry=registry,
        )
    return Experiment(spec, registry, model, schedule, sampler, image_shape, latent_shape, context["num_classes"])


class PluginBuildError(UserError):
    """A plugin's ``config.build()`` refused the config (or failed); the message names the kind and plugin."""


def build_part(registry: Registry | Callable[[], Registry], interface: str, config: Any, /, **runtime: Any) -> Any:
    """``config.build(**runtime)``; a failure that is not already a ``UserError`` becomes a
    ``PluginBuildError`` naming the spec table, the kind and the plugin that registered it.
    ``registry`` may be a function that loads it: it is needed only to name the plugin.

    A plugin's build usually raises because a value in its table cannot work here (a path, a size),
    so the user is pointed at that table; ``--debug`` shows the plugin's own traceback.
    """
    try:
        return config.build(**runtime)
    except UserError:
        raise
    except Exception as exc:
        raise PluginBuildError(f"{describe_part(registry, interface, config)} could not be built: "
                               f"{type(exc).__name__}: {exc}") from exc


def describe_part(registry: Registry | Callable[[], Registry], interface: str, config: Any) -> str:
    """"[model] kind 'madformer' (plugin models, madkit 0.1.0)", or less when the config is unregistered."""
    try:
        registry = registry() if callable(registry) else registry
        reg = registry.get(interface, registry.kind_of(interface, config))
    except (LookupError, UserError):
        return f"[{interface}] {type(config).__name__}"
    return f"[{interface}] kind {reg.kind!r} (plugin {reg.plugin}, {reg.distribution} {reg.version})".replace(" )", ")")


def _device_context(device: str):
    import torch

    return torch.device(device)
