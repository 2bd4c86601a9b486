"""The Python API: what the command line does, for scripts and notebooks (see docs/api.md).

    import madkit
    pipe = madkit.load("runs/quickstart")              # a run, checkpoint or export folder, a hub id
    images = pipe.generate(16, seed=0)                 # 16 PIL images
    experiment = madkit.experiment("experiments/quickstart.toml", sets=["train.steps=10"])
    result = madkit.train({"extends": "experiments/quickstart.toml", "train": {"steps": 10}}, out="runs/q")

Everything here is a thin layer over the engine; the command line calls the same functions.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from madkit.build import Experiment, build_experiment
from madkit.engine import checkpoints
from madkit.engine.checkpoints import export_format
from madkit.engine.checkpoints.weights import (
    WeightsSource,
    load_newest_for_inference,
)
from madkit.engine.distributed import resolve_device
from madkit.engine.packaging import export
from madkit.engine.packaging.hub import push_folder, resolve_pretrained
from madkit.experiment_spec import LoadedSpec, load_spec
from madkit.generation import to_uint8_hwc
from madkit.registry import Registry
from madkit.threads import apply_threads, count_problem

SpecSource = str | Path | Mapping[str, Any] | LoadedSpec
OUTPUTS = ("pil", "tensor", "uint8")


def _loaded(spec: SpecSource, sets: Sequence[str] | None, registry: Registry) -> LoadedSpec:
    if isinstance(spec, LoadedSpec):
        if sets:
            raise ValueError("sets apply while a spec is read; pass the file or dict instead of a LoadedSpec")
        return spec
    return load_spec(spec, list(sets or []), registry)


def experiment(
    spec: SpecSource, sets: Sequence[str] | None = None, device: str = "cpu", registry: Registry | None = None
) -> Experiment:
    """The experiment a spec describes (a TOML file, a dict of the same tables, or a ``LoadedSpec``),
    checked like ``madkit validate`` and built with fresh weights: model, schedule, sampler, and data
    and codec on first use. ``sets`` are ``--set`` overrides (``"train.lr=1e-3"``)."""
    registry = registry or Registry.load()
    return build_experiment(_loaded(spec, sets, registry).spec, registry, device=device)


def train(
    spec: SpecSource,
    out: str | Path | None = None,
    sets: Sequence[str] | None = None,
    stop_after: int | None = None,
    allow_changes: bool = False,
    registry: Registry | None = None,
):
    """Train like ``madkit run``: into ``out`` (default ``runs/<name>``), resuming from its latest
    checkpoint when it has one. Returns a ``TrainResult`` (run folder, step, checkpoint, samples)."""
    from madkit.engine.training.loop import train as run_training

    registry = registry or Registry.load()
    loaded = _loaded(spec, sets, registry)
    out = Path(out) if out is not None else Path("runs") / loaded.spec.name
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is a file; a run needs a folder")
    return run_training(loaded, registry, out, stop_after=stop_after, allow_changes=allow_changes)


class Pipeline:
    """A trained model ready to generate images.

    ``experiment`` holds the spec it was trained with and its parts (``experiment.codec``,
    ``experiment.sampler``, ``experiment.num_classes``); ``model`` is in eval mode on ``device``.
    """

    def __init__(self, experiment: Experiment, model: torch.nn.Module, source: WeightsSource, weights: str):
        self.experiment, self.model, self.weights_source, self.weights = experiment, model, source, weights

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        weights: str = "ema",
        device: str = "auto",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        registry: Registry | None = None,
        threads: int | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> Pipeline:
        """Load a run folder (its latest checkpoint), a checkpoint folder, an export folder
        (``save_pretrained``, ``madkit export``) or a Hugging Face hub id (``owner/name``, optionally
        ``@revision``; fetched into the hub cache, or read from it when ``HF_HUB_OFFLINE=1``).
        ``weights`` is ``"ema"`` (what training samples from) or ``"raw"`` (checkpoints only).
        ``threads``: torch's CPU threads, as ``--threads`` (madkit.threads); None leaves the process's
        setting alone (a library does not change globals unasked). ``torch_dtype``: as in diffusers,
        the weights' dtype (``torch.bfloat16`` halves their memory; see ``to``)."""
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source must be a folder path or a hub id (str or Path), got {type(source).__name__}")
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        if threads is not None:
            if problem := count_problem(threads):
                raise ValueError(f"threads {problem}")
            apply_threads(threads, "threads=")
        registry = registry or Registry.load()
        local = resolve_pretrained(source, revision=revision, cache_dir=cache_dir)
        src, experiment_, model = load_newest_for_inference(
            local, registry, use_ema=weights == "ema", device=resolve_device(device)
        )
        pipe = cls(experiment_, model, src, weights)
        return pipe.to(torch_dtype) if torch_dtype is not None else pipe

    @property
    def source(self) -> str:
        return str(self.weights_source.path)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write this model as an export folder (EMA weights, their spec and provenance, a model card)
        that ``from_pretrained`` and every ``madkit`` command load; ``folder`` must be new or empty."""
        if self.weights != "ema":
            raise ValueError("an export holds the EMA weights; load the pipeline with weights='ema' to save it")
        src = self.weights_source
        if src.kind == "checkpoint":
            return export.export_checkpoint(src.path, folder, self.experiment.registry)
        manifest = export_format.read_export(src.path)
        card = (src.path / export_format.CARD_FILE).read_text() if (src.path / export_format.CARD_FILE).is_file() else ""
        weights = checkpoints.unwrapped_state_dict(self.model)
        needed = export.plugins_needed(self.experiment.spec, self.experiment.registry)
        provenance = {**manifest.provenance, "plugins": needed}
        return export.write_export(folder, weights, manifest.spec, provenance, card)

    def push_to_hub(
        self, repo_id: str, *, private: bool | None = None, token: str | None = None, message: str | None = None
    ) -> str:
        """Upload this model's export to the hub model repository ``repo_id`` (created if missing);
        returns the commit's URL. Credentials: ``token`` or the usual ``huggingface-cli login``."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "export")
            return push_folder(folder, repo_id, private=private, token=token, message=message)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, *args: Any, **kwargs: Any) -> Pipeline:
        """Move and/or cast the weights like ``nn.Module.to`` (``pipe.to("cuda")``,
        ``pipe.to(torch.bfloat16)``, ``pipe.to("cuda", torch.float16)``); returns the pipeline.

        With bf16 or fp16 weights, generation runs under autocast in that dtype: the matmuls in low
        precision, the residual streams and the noise in fp32 (as in bf16 training), images in fp32."""
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"weights must stay floating point, got {dtype}")
        self.model.to(*args, **kwargs)
        if isinstance(self.experiment.codec, torch.nn.Module):
            self.experiment.codec.to(*args, **kwargs)
        return self

    def __call__(
        self,
        num_images: int | None = None,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        class_labels: Sequence[int] | torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        seed: int | None = None,
        sampler: str | None = None,
        batch_size: int = 16,
        progress: bool = False,
    ):
        """diffusers' calling convention over ``generate``: returns an ``ImagePipelineOutput``
        (``.images``), or a one-tuple with ``return_dict=False``.

        ``generator``: one ``torch.Generator``; the images' seed is drawn from it, so the same
        generator state gives the same images (madkit seeds image i from (seed, i), so a list of
        generators, one per image, has no meaning here: pass ``seed`` or one generator).
        ``output_type``: ``"pil"``, ``"np"`` (float [n, H, W, 3] in [0, 1]) or ``"pt"`` (float
        [n, 3, H, W] in [0, 1]), as diffusers returns them."""
        from diffusers import ImagePipelineOutput

        if isinstance(generator, (list, tuple)):
            raise ValueError("pass one torch.Generator (or seed=): madkit seeds image i from (seed, i), so "
                             "one generator per image has no meaning")
        if generator is not None and seed is not None:
            raise ValueError("pass generator or seed, not both")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        images = self.generate(
            num_images, labels=class_labels, seed=seed or 0, steps=num_inference_steps, guidance=guidance_scale,
            sampler=sampler, batch=batch_size, output="pil" if output_type == "pil" else "tensor", progress=progress,
        )
        if output_type != "pil":
            images = (images + 1) / 2  # diffusers' [0, 1]
            images = images.permute(0, 2, 3, 1).numpy() if output_type == "np" else images
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @property
    def num_classes(self) -> int:
        return self.experiment.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.experiment.image_shape

    def generate(
        self,
        num: int | None = None,
        *,
        labels: Sequence[int] | torch.Tensor | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        batch: int = 16,
        output: str = "pil",
        progress: bool = False,
        trace: bool | str = False,
    ):
        """``num`` images (or one per entry of ``labels``); image i's noise comes from (seed, i), so
        the same call gives the same images whatever ``batch`` is, and ``madkit sample`` with the
        same settings writes the same pixels.

        ``labels``: class indices for a class-conditional model (default: image i gets class
        i mod num_classes). ``steps``, ``guidance``: override the spec's sampler (guidance needs a
        class-conditional model). ``sampler``: another sampler kind, e.g. ``"ddim"``.
        ``output``: ``"pil"`` (a list of PIL images), ``"tensor"`` (float [n, 3, H, W] in [-1, 1]) or
        ``"uint8"`` ([n, 3, H, W]).
        ``trace``: True or ``"blocks"`` (the image appearing block by block) or ``"steps"`` (also
        each block's clean-sample estimate per denoising step): returns (images, traces), one
        ``madkit.trace.Trace`` per image (``.frames``, ``.save_gif(path)``, ``.save_strip(path)``).
        """
        from madkit.trace import TraceCollector

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        collector = None
        if trace:
            collector = TraceCollector(self.model, self.experiment.codec.to(self.device), self.image_shape[1:],
                                       "blocks" if trace is True else trace)
        with self._autocast():
            images = self.experiment.generate(
                num, steps=steps, seed=seed, guidance=guidance, batch=batch, model=self.model, progress=progress,
                labels=labels, sampler=sampler, observer_for=collector and collector.observer_for,
            ).float()
        images = _as_output(images, output)
        if collector is None:
            return images
        traces = [t for idx in collector.batches() for t in collector.pop(idx)]
        return images, traces

    def complete(
        self,
        images,
        keep: int,
        *,
        num: int = 1,
        labels: Sequence[int] | torch.Tensor | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        batch: int = 16,
        resize: bool = False,
    ):
        """Complete real images: keep each image's first ``keep`` blocks (in the partitioner's
        order) exactly, as the run's codec encodes them, and generate the rest ``num`` times.

        ``images``: file paths, PIL images or a float tensor [n, 3, H, W] in [-1, 1], at the model's
        size (``resize=True`` centre-crops and scales others). ``labels``, ``steps``, ``guidance``,
        ``sampler``: as in ``generate``. Completion c of image i draws its noise from
        (seed, "complete", c, i). Returns a ``madkit.completion.Completion``: ``.completions``
        [n, num, 3, H, W] in [-1, 1], ``.kept`` (the kept blocks, the rest grey), ``.originals``;
        ``madkit.completion.save_completion(result, folder)`` writes rows and a grid."""
        from madkit.completion import complete, load_images

        pixels = load_images(images, self.image_shape, resize)
        chosen = self.experiment.make_sampler(sampler)[0]
        with self._autocast():
            return complete(
                self.model, chosen, self.experiment.codec.to(self.device), pixels, keep, num=num, seed=seed,
                num_classes=self.num_classes, labels=labels, steps=steps, guidance=guidance, batch=batch,
            )

    def _autocast(self):
        low = self.dtype in (torch.bfloat16, torch.float16)
        return torch.autocast(self.device.type, dtype=self.dtype) if low else contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"Pipeline({self.source!r}, {self.weights} weights, images {self.image_shape}, {self.num_classes} classes)"


def _as_output(images: torch.Tensor, output: str):
    if output == "tensor":
        return images
    uint8 = torch.stack([to_uint8_hwc(image) for image in images])  # [n, H, W, 3]
    if output == "uint8":
        return uint8.permute(0, 3, 1, 2).contiguous()
    from PIL import Image

    return [Image.fromarray(image.numpy()) for image in uint8]


def load(source: str | Path, **kwargs: Any) -> Pipeline:
    """``Pipeline.from_pretrained(source, ...)``."""
    return Pipeline.from_pretrained(source, **kwargs)
