"""Evaluating one point (``madkit eval``): a checkpoint (EMA or raw weights) sampled with one sampler
at one step count.

Evaluating a point generates ``num`` images (image i from the seed pair (seed, i), so batch size and
sharding never change an image), embeds them with a feature extractor, compares them with a
reference and writes ``RUN/eval/<name>.json`` (records.py); with ``--shard i/k`` each shard keeps its
features under ``RUN/eval/<name>.parts/`` and the shard that completes the set writes the record.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

import madkit
from madkit.atomic_files import atomic_write
from madkit.build import build_experiment
from madkit.engine.checkpoints.read_lease import FolderMoved, read_lease
from madkit.engine.checkpoints.weights import WeightsSource, load_for_inference, resolve_weights, stored_spec
from madkit.engine.evaluation.evaluate import (
    extract,
    reference_images,
    resolve_extractor,
    resolve_metrics,
    to_uint8,
    with_proxy_data,
)
from madkit.engine.evaluation.caveats import describe_floor, measure_floor
from madkit.engine.evaluation.records import COST_KEYS, EVAL_DIR, read_eval_json
from madkit.engine.evaluation.shard_parts import combine_parts, image_digest, read_part
from madkit.errors import ConfigError, UserError
from madkit.experiment_spec import structure_spec
from madkit.generation import check_guidance, generate_images, shard_indices
from madkit.interfaces import FeatureSet, GenerativeModel, Sampler
from madkit.logs import get_logger
from madkit.registry import Registry
from madkit.validators import folder_name_problem

logger = get_logger(__name__)

def _log(message: str) -> None:
    logger.info(message)


# --------------------------------------------------------------------------- what is evaluated
@attrs.frozen
class Request:
    """How to sample and measure; the same for every point of a sweep."""

    num: int  # images to generate
    seed: int = 0
    sampler: str | None = None  # sampler kind; None = the run's own
    guidance: float | None = None  # None = the sampler's (1.0 = off)
    use_ema: bool = True
    batch: int = 16  # images per forward pass and per extractor call (changes no image)
    metrics: tuple[str, ...] = ("fid",)
    metric_config: dict[str, dict[str, Any]] = attrs.Factory(dict)  # per metric kind, e.g. {"fid": {"bootstrap": 20}}
    extractor: dict[str, Any] | None = None  # {"kind": ..., more keys}; None = the data's default
    reference: str | None = None  # folder, .npz or .toml; None = the run's own [data]
    num_reference: int = 0  # a seeded subset of a data-source reference; 0 = all of it


class LoadedRun:
    """Weights to evaluate (a checkpoint or an export). Their stored spec is read at once (cheap: a
    checkpoint's state file is memory-mapped, so its optimizer tensors are never read); the model is
    built and its weights loaded on first use, so a point whose record is up to date costs no model load."""

    def __init__(self, source: WeightsSource, registry: Registry, use_ema: bool, device: torch.device | str):
        self.source, self.registry, self.device = source, registry, torch.device(device)
        # records go to RUN/eval for a run's checkpoints, and to the folder's own eval/ otherwise
        self.checkpoint, self.run_dir, self.step = source.path, source.home, source.step
        self.use_ema, self.weights = use_ema, "ema" if use_ema else "raw"
        self.spec = structure_spec(stored_spec(source, use_ema)[0], registry)
        self._loaded: tuple[Any, GenerativeModel] | None = None
        self._schedule: Any = None
        self._meta_model: GenerativeModel | None = None

    @property
    def data(self) -> Any:
        return self.spec.data

    @property
    def schedule(self) -> Any:
        if self._schedule is None:
            self._schedule = self.spec.schedule.build()
        return self._schedule

    def _load(self) -> tuple[Any, GenerativeModel]:
        if self._loaded is None:
            try:
                with read_lease(self.source.path):  # a live run does not prune it while it loads
                    self._loaded = load_for_inference(
                        self.source, self.registry, use_ema=self.use_ema, device=self.device
                    )
            except FolderMoved:
                raise UserError(
                    f"{self.source.path} was pruned by its live training run before it could be read; "
                    "run the same command again to evaluate the newest checkpoint"
                ) from None
        return self._loaded

    @property
    def experiment(self) -> Any:  # madkit.build.Experiment, with the weights loaded
        return self._load()[0]

    @property
    def model(self) -> GenerativeModel:
        return self._load()[1]

    @property
    def shape(self) -> GenerativeModel:
        """The loaded model, or until then a meta-device copy: for what the architecture alone decides."""
        if self._loaded is not None:
            return self._loaded[1]
        if self._meta_model is None:
            self._meta_model = build_experiment(self.spec, self.registry, meta=True).model
        return self._meta_model

    def cost(self, steps: int) -> dict[str, Any] | None:
        """The model's analytic cost at ``steps`` (None for models that do not report one)."""
        try:
            return self.shape.compute_cost(steps)
        except NotImplementedError:
            return None


def load_run(path: str | Path, registry: Registry, use_ema: bool, device: torch.device | str) -> LoadedRun:
    """A run folder (its latest checkpoint), a checkpoint folder or an export folder, ready to evaluate."""
    return LoadedRun(resolve_weights(path), registry, use_ema, device)


def point_name(run: LoadedRun, request: Request, sampler: str, steps: int, extractor_kind: str) -> str:
    """e.g. ``00002000-ema-ddim-s8-n1000-seed0-proxy``: the settings that decide the images and features."""
    name = f"{run.step:08d}-{run.weights}-{sampler}-s{steps}-n{request.num}-seed{request.seed}-{extractor_kind}"
    return name if request.guidance is None else f"{name}-g{request.guidance:g}"


# --------------------------------------------------------------------------- the evaluator
class Evaluator:
    """Evaluates points, keeping built extractors, metrics and reference features between them (a
    sweep embeds its reference once, not once per point)."""

    def __init__(self, registry: Registry, request: Request, log: Callable[[str], None] = _log):
        if request.num < 2:
            raise ConfigError(f"num = {request.num}: FID-style metrics need at least 2 generated images")
        self.registry, self.request, self.log = registry, request, log
        self.metrics = resolve_metrics(
            [{"kind": kind, **request.metric_config.get(kind, {})} for kind in request.metrics], registry
        )
        self._extractors: dict[str, Any] = {}
        self._references: dict[str, tuple[FeatureSet, dict[str, Any]]] = {}
        self._floors: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ parts
    def extractor_table(self, run: LoadedRun) -> dict[str, Any]:
        """The extractor asked for, else ``proxy`` for the embedded OpenMoji data (Inception knows
        nothing of emoji and needs downloaded weights) and ``inception`` for everything else."""
        if self.request.extractor is not None:
            table = dict(self.request.extractor)
        else:
            table = {"kind": "proxy" if self.registry.kind_of("data", run.data) == "openmoji" else "inception"}
        return with_proxy_data(table, run.data, self.registry)

    def _data_key(self, data: Any) -> dict[str, Any]:
        return {"kind": self.registry.kind_of("data", data), **attrs.asdict(data)}

    def extractor(self, run: LoadedRun):
        table = self.extractor_table(run)
        # a learning extractor (the proxy) learns from the run's data unless its table names other data
        key = json.dumps([table, self._data_key(run.data)], sort_keys=True, default=str)
        if key not in self._extractors:
            self._extractors[key] = resolve_extractor(table, self.registry, run.data)
        return self._extractors[key]

    def reference(self, run: LoadedRun, extractor) -> tuple[FeatureSet, dict[str, Any]]:
        """The reference's features and a record of what it was (path or data table, count, hash)."""
        req = self.request
        given = req.reference is not None
        described: dict[str, Any] = {"path": req.reference} if given else {"data": self._data_key(run.data)}
        key = json.dumps([described, extractor.name, req.num_reference], sort_keys=True, default=str)
        if key not in self._references:
            source = reference_images(req.reference if given else run.data, req.num_reference, self.registry)
            if isinstance(source, FeatureSet):
                if source.extractor != extractor.name:
                    raise ConfigError(
                        f"{source.source} was computed with extractor {source.extractor!r}, but this evaluation "
                        f"uses {extractor.name!r}; pass --extractor matching the statistics, or recompute them "
                        f"with `madkit fid-stats DATA_SPEC --extractor ...`"
                    )
                features = source
            else:
                self.log(f"embedding the reference {source.source} with {extractor.name}")
                features = extract(extractor, source, req.batch)
            record = {**described, "source": features.source, "num": features.count,
                      "content_hash": features.content_hash, "num_requested": req.num_reference}
            self._references[key] = (features, record)
        return self._references[key]

    def sampler(self, run: LoadedRun) -> tuple[Sampler, str]:
        """The sampler asked for, else the run's own; built from the spec alone (no model needed)."""
        if self.request.sampler is None:
            config, kind = run.spec.sampler, self.registry.kind_of("sampler", run.spec.sampler)
        else:
            config, kind = self.registry.get("sampler", self.request.sampler).config_cls(), self.request.sampler
        return config.build(schedule=run.schedule), kind

    # ------------------------------------------------------------------ one point
    def evaluate(
        self,
        run: LoadedRun,
        steps: int | None = None,
        shard: tuple[int, int] = (0, 1),
        name: str | None = None,
        force: bool = False,
        merge: bool = True,
    ) -> dict[str, Any] | None:
        """Evaluate ``run`` at ``steps`` (None: the sampler's). Returns the record written to
        RUN/eval/<name>.json, or None when this shard is done but others are still missing. With
        ``merge=False`` a shard only writes its part, even when it completes the set (under torchrun
        rank 0 merges once every rank has reported)."""
        req = self.request
        sampler, sampler_kind, steps, table, name, settings = self._point(run, steps, name)
        out = run.run_dir / EVAL_DIR / f"{name}.json"
        if not force and (old := _matching_record(out, settings)) is not None:
            self.log(f"{out} is up to date (same settings); pass --force to evaluate again")
            return old
        extractor = self.extractor(run)
        if str(req.reference or "").endswith(".npz"):
            # statistics load in an instant: refuse a mismatch before generating thousands of images
            self._check_statistics(self.reference(run, extractor)[0])
        i, k = shard
        if k == 1:
            part = self._generate(run, sampler, steps, shard_indices(req.num, shard), extractor)
            parts = [part]
        else:
            parts_dir = run.run_dir / EVAL_DIR / f"{name}.parts"
            mine = parts_dir / f"shard-{i}-of-{k}.pt"
            part = read_part(mine) if mine.is_file() else None
            if part is None or part["settings"] != settings:
                part = self._generate(run, sampler, steps, shard_indices(req.num, shard), extractor)
                part["settings"] = settings
                buffer = io.BytesIO()
                torch.save(part, buffer)
                atomic_write(mine, buffer.getvalue())
            if not merge:
                return None
            parts = [read_part(parts_dir / f"shard-{j}-of-{k}.pt") for j in range(k)]
            missing = [j for j, p in enumerate(parts) if p is None or p["settings"] != settings]
            if missing:
                self.log(f"shard {i}/{k} written to {mine}; waiting for shard(s) {missing}: "
                         f"the last shard to finish writes {out}")
                return None
        generated, seconds = combine_parts(parts, req.num, extractor.name, f"{req.num} images from {run.checkpoint}")
        reference, reference_record = self.reference(run, extractor)
        floor = self.floor(run, extractor, reference) if table.get("kind") == "proxy" else None
        values: dict[str, float] = {}
        for metric in self.metrics:
            values.update(metric.compute(generated, reference if metric.needs_reference else None))
        cost = run.cost(steps)
        record = {
            **values,
            "extractor": extractor.name,
            "metric_values": values,
            "name": name,
            "run": {"dir": str(run.run_dir), "name": run.spec.name},
            "checkpoint": {"path": str(run.checkpoint), "step": run.step, "weights": run.weights},
            "sampling": {"sampler": sampler_kind, "steps": steps, "guidance": req.guidance, "seed": req.seed,
                         "num": req.num, "batch": req.batch, "use_cache": True,
                         "image_seeds": "image i from (seed, i)"},
            "model": {k_: cost[k_] for k_ in ("parameters", "depth", "diffusion_depth", "blocks")} if cost else None,
            "cost": {k_: cost[k_] for k_ in COST_KEYS} if cost else None,
            "seconds_per_image": seconds / req.num,
            "device": str(run.device),
            "shards": k,
            "generated_hash": generated.content_hash,
            "reference": reference_record,
            "floor": floor,
            "extractor_config": table,
            "madkit_version": madkit.__version__,
            "torch_version": str(torch.__version__),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": settings,
        }
        atomic_write(out, (json.dumps(record, indent=2) + "\n").encode())
        self.log(f"{out}: " + ", ".join(f"{key} {value:.4g}" for key, value in values.items())
                 + f" ({extractor.name}){describe_floor(floor)}")
        return record

    def floor(self, run: LoadedRun, extractor, reference: FeatureSet) -> dict[str, Any] | None:
        """What held-out real images score against the run's own data (floor.py); None for another reference."""
        key = json.dumps([self._data_key(run.data), extractor.name], sort_keys=True, default=str)
        if self.request.reference is None and key not in self._floors:  # memoised: a sweep measures it once
            self._floors[key] = measure_floor(run.data, reference, extractor, self.metrics, self.request.batch)
        return self._floors.get(key)

    def _point(self, run: LoadedRun, steps: int | None, name: str | None):
        """(sampler, its kind, steps, extractor table, record name, settings): what decides a point's record."""
        req = self.request
        check_guidance(req.guidance, run.shape.class_conditional)
        sampler, sampler_kind = self.sampler(run)
        steps = steps or sampler.steps
        if steps <= 0:
            raise ConfigError(f"steps must be positive, got {steps}")
        table = self.extractor_table(run)
        name = name or point_name(run, req, sampler_kind, steps, str(table.get("kind")))
        if (problem := folder_name_problem(name)) is not None:
            raise ConfigError(f"eval --name: {problem}")
        settings = {
            "checkpoint": str(run.checkpoint.resolve()), "step": run.step, "weights": run.weights,
            "sampler": sampler_kind, "steps": steps, "guidance": req.guidance, "seed": req.seed,
            "num": req.num, "extractor": table, "metrics": sorted(req.metrics), "metric_config": req.metric_config,
            "reference": req.reference, "num_reference": req.num_reference,
        }
        return sampler, sampler_kind, steps, table, name, settings

    def existing_record(self, run: LoadedRun, steps: int | None = None, name: str | None = None) -> dict | None:
        """The point's record when one was written with exactly these settings, else None (nothing is generated)."""
        *_, name, settings = self._point(run, steps, name)
        return _matching_record(run.run_dir / EVAL_DIR / f"{name}.json", settings)

    def _check_statistics(self, reference: FeatureSet) -> None:
        needing = [m.name for m in self.metrics if m.needs_reference_features]
        if needing and not reference.features:
            raise ConfigError(
                f"metrics {needing} compare features, but {reference.source} holds only statistics; write it "
                f"with `madkit fid-stats --keep-features`, or evaluate against the data itself"
            )

    @torch.no_grad()
    def _generate(self, run: LoadedRun, sampler: Sampler, steps: int, indices: list[int], extractor) -> dict:
        """Generate and embed images ``indices``: their features, per-image digests and the generation time."""
        req, device = self.request, run.device
        features: dict[str, list[torch.Tensor]] = {}
        digests: list[str] = []
        seconds, started = 0.0, time.perf_counter()
        codec = run.experiment.codec.to(device)
        for _, images in generate_images(
            run.model, sampler, codec, indices, req.seed, num_classes=run.experiment.num_classes,
            batch=req.batch, steps=steps, guidance=req.guidance, progress=True,
        ):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - started  # generation only: embedding is not sampling cost
            uint8 = to_uint8(images)
            digests.extend(image_digest(image) for image in uint8)
            for role, values in extractor.features(uint8).items():
                features.setdefault(role, []).append(values)
            started = time.perf_counter()
        return {
            "indices": list(indices),
            "digests": digests,
            "features": {role: torch.cat(values) for role, values in features.items()},
            "seconds": seconds,
        }


def _matching_record(out: Path, settings: dict[str, Any]) -> dict | None:
    """The record at ``out`` when it was written with exactly ``settings``, else None."""
    old = read_eval_json(out) if out.is_file() else None
    return old if isinstance(old, dict) and old.get("settings") == settings else None
