"""The experiment spec: the top-level TOML schema and ``load_spec`` that reports every problem.

    name, seed, [data], [codec], [model], [schedule], [sampler], [train], [log]

Polymorphic tables name their plugin with ``kind``; the rest of each table is that kind's config.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from madkit.interfaces import SpecProblem
from madkit.registry import Registry
from madkit.spec import (
    Problems,
    SpecError,
    StructureProblem,
    iter_configs,
    make_converter,
    slot,
    structure,
)
from madkit.spec_loading import DICT_SOURCE, Provenance, SpecLoadError, load_raw
from madkit.validators import folder_name, non_negative, positive, unit_interval, within

DEFAULTS: dict[str, Any] = {
    "codec": {"kind": "identity"},
    "schedule": {"kind": "ddpm-linear"},
    "sampler": {"kind": "dpm-solver++"},
}


@attrs.frozen
class HealthConfig:
    """The divergence guard (madkit.engine.training.health): what counts as unhealthy and what then happens."""

    action: str = attrs.field(default="stop", validator=attrs.validators.in_(("stop", "warn")))
    # the median loss of the last `window` steps above this multiple of its lowest median so far (0 = off)
    loss_factor: float = attrs.field(default=4.0, validator=non_negative)
    grad_factor: float = attrs.field(default=0.0, validator=non_negative)  # the same for the grad norm (0 = off)
    max_weight: float = attrs.field(default=1e4, validator=non_negative)  # largest |weight| allowed (0 = off)
    window: int = attrs.field(default=20, validator=positive)  # steps per running median


def _device(_inst: Any, _attribute: attrs.Attribute, value: str) -> None:
    """``train.device``: checked here so ``validate`` refuses what ``run`` would (torch knows other types)."""
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")


@attrs.frozen
class TrainConfig:
    """Optimisation, precision, checkpointing. ``batch`` is global, split into ``micro_batch`` chunks."""

    steps: int = attrs.field(default=1000, validator=positive)  # optimizer steps in total
    batch: int = attrs.field(default=64, validator=positive)  # global batch (all ranks, all micro-batches)
    micro_batch: int = attrs.field(default=0, validator=non_negative)  # per rank and pass; 0 = batch / ranks
    lr: float = attrs.field(default=3e-4, validator=positive)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = attrs.field(default=0.05, validator=non_negative)
    lr_schedule: str = attrs.field(default="wsd", validator=attrs.validators.in_(("wsd", "cosine", "constant")))
    warmup: float = attrs.field(default=0.01, validator=unit_interval)  # fraction of steps
    decay_start: float = attrs.field(default=0.85, validator=unit_interval)  # wsd: fraction where decay starts
    grad_clip: float = attrs.field(default=1.0, validator=non_negative)  # 0 disables
    ema_decay: float = attrs.field(default=0.9999, validator=unit_interval)
    # steps over which the EMA horizon 1/(1-decay) grows linearly to full (0 = full decay from step 1)
    ema_warmup: int = attrs.field(default=0, validator=non_negative)
    precision: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "fp32", "bf16", "fp16")))
    device: str = attrs.field(default="auto", validator=_device)
    # CPU threads of torch's intra-op pool; 0 = auto (OMP_NUM_THREADS if set, else the physical cores, <= 8)
    threads: int = attrs.field(default=0, validator=within(0, 4096, note="0 = auto"))
    compile: bool = False
    activation_checkpointing: bool = False
    deterministic: bool = False
    ckpt_every: int = attrs.field(default=1000, validator=positive)
    keep_ckpts: int = attrs.field(default=3, validator=positive)
    # auto: continue from the run folder's latest checkpoint | never: refuse a folder that has some |
    # a checkpoint folder: start from it when the run folder has none of its own yet
    resume: str = "auto"
    # a run, checkpoint or export folder or a hub id whose EMA weights a fresh run starts from (nothing else)
    init_from: str = ""
    ddp_find_unused: bool = False  # DDP find_unused_parameters, for models with parameters a step may not use
    # ddp: a whole copy per rank | fsdp: weights, gradients and optimizer state sharded over all ranks |
    # hsdp: sharded within groups of shard_ranks ranks, replicated across the groups (several nodes)
    strategy: str = attrs.field(default="ddp", validator=attrs.validators.in_(("ddp", "fsdp", "hsdp")))
    shard_ranks: int = attrs.field(default=0, validator=non_negative)  # hsdp group size; 0 = ranks per node
    # fsdp/hsdp: dtype the blocks are gathered in; auto = bf16 when precision is bf16, else fp32
    fsdp_param_dtype: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "fp32", "bf16")))
    log_every: int = attrs.field(default=10, validator=positive)
    sample_every: int = attrs.field(default=0, validator=non_negative)  # 0 = only at the end
    sample_num: int = attrs.field(default=16, validator=positive)
    sample_steps: int = attrs.field(default=0, validator=non_negative)  # 0 = the sampler's steps
    num_workers: int = attrs.field(default=0, validator=non_negative)
    # auto: encode the dataset once when the codec is not identity | off: encode every batch | a cache folder
    latent_cache: str = "auto"
    health: HealthConfig = attrs.Factory(HealthConfig)  # the divergence guard


@attrs.frozen
class LogConfig:
    # where metrics, sample grids and the resolved spec go besides metrics.jsonl (always written): sink
    # tables with kind and the tracker's settings ([[log.sinks]] kind = "wandb", project = "x"), or a
    # bare kind for its defaults (sinks = ["tensorboard"])
    sinks: list[slot("sink")] = attrs.Factory(list)  # type: ignore[valid-type]
    progress: bool = True  # tqdm bar on rank 0 (shown only on a terminal)
    # each sink config's own check (e.g. its tracker package is missing) runs with the others'
    # (iter_configs walks lists), so validate says so before the first checkpoint


@attrs.frozen
class ExperimentSpec:
    data: slot("data")  # type: ignore[valid-type]
    model: slot("model")  # type: ignore[valid-type]
    codec: slot("codec")  # type: ignore[valid-type]
    schedule: slot("schedule")  # type: ignore[valid-type]
    sampler: slot("sampler")  # type: ignore[valid-type]
    name: str = attrs.field(default="experiment", validator=folder_name)
    seed: int = 0
    train: TrainConfig = attrs.Factory(TrainConfig)
    log: LogConfig = attrs.Factory(LogConfig)

    def check(self, context: dict[str, Any]):
        t = self.train
        if t.micro_batch and t.batch % t.micro_batch:
            yield SpecProblem(
                "train.micro_batch", f"global batch {t.batch} is not a multiple of micro_batch {t.micro_batch}"
            )
        if t.resume not in ("auto", "never") and not Path(t.resume).exists():
            yield SpecProblem("train.resume", f"checkpoint {t.resume!r} does not exist; use 'auto' or 'never'")
        if t.init_from and context.get("check_resources", True) and not Path(t.init_from).exists():
            from madkit.hub_ids import looks_like_hub_id

            if not looks_like_hub_id(t.init_from):
                yield SpecProblem(
                    "train.init_from",
                    f"{t.init_from!r} does not exist; give a run, checkpoint or export folder, or a hub id (owner/name)",
                )
        yield from _strategy_problems(t)


def _strategy_problems(t: TrainConfig):
    sharded = t.strategy in ("fsdp", "hsdp")
    if t.shard_ranks and t.strategy != "hsdp":
        yield SpecProblem("train.shard_ranks", f"only train.strategy = 'hsdp' uses it (strategy is {t.strategy!r})")
    if sharded and t.precision == "fp16":
        yield SpecProblem(
            "train.precision", f"'fp16' is not supported with train.strategy = {t.strategy!r}; use 'bf16'"
        )
    if t.fsdp_param_dtype == "bf16" and t.precision in ("fp32", "fp16"):
        yield SpecProblem(
            "train.fsdp_param_dtype", f"'bf16' needs train.precision = 'bf16' (it is {t.precision!r}), or use 'auto'"
        )


@attrs.frozen
class LoadedSpec:
    spec: ExperimentSpec
    raw: dict[str, Any]
    source: str
    notes: tuple[str, ...] = ()  # things worth saying about how the spec was assembled (see Provenance.notes)

    def to_toml(self) -> str:
        return dumps_toml(self.raw)


def spec_context(spec: ExperimentSpec, registry: Registry) -> dict[str, Any]:
    """Derived facts that cross-field checks need (shapes), computed from configs, not data."""
    context: dict[str, Any] = {"registry": registry, "spec": spec}
    image_shape = getattr(spec.data, "image_shape", None)
    if callable(image_shape):
        context["image_shape"] = image_shape()
        latent_shape = getattr(spec.codec, "latent_shape", None)
        if callable(latent_shape):
            context["latent_shape"] = latent_shape(context["image_shape"])
    num_classes = getattr(spec.data, "num_classes", None)
    context["num_classes"] = num_classes() if callable(num_classes) else 0
    return context


def load_spec(
    path: str | Path | Mapping[str, Any],
    sets: list[str] | None = None,
    registry: Registry | None = None,
    check_resources: bool = True,
) -> LoadedSpec:
    """Read, merge, structure and check a spec; raise ``SpecError`` with every problem found.

    ``path`` is a TOML file or the spec as a dict (the same tables and keys).

    ``check_resources=False`` tells checks not to look for files (data folders, VAE weights): for
    commands that never read them, such as ``madkit flops``, and ``madkit validate --no-data``.
    """
    registry = registry or Registry.load()
    try:
        raw, provenance = load_raw(path, sets, DEFAULTS)
    except SpecLoadError as exc:
        raise SpecError([str(exc)]) from None
    conv = make_converter(registry)
    try:
        spec, problems = structure(conv, raw, ExperimentSpec), []
    except Problems as exc:
        # Keep going: the cross-field checks of the parts that did structure belong in the same report.
        spec, problems = _structure_parts(conv, raw), list(exc.problems)
        problems += _unchecked_top_level_values(raw, {p.path for p in problems})
    problems += _run_checks(spec, registry, partial=bool(problems), check_resources=check_resources)
    if problems:
        raise SpecError(_render(problems, provenance))
    # the resolved spec, with every default spelled out, as plain data
    resolved = conv.unstructure(spec)
    source = DICT_SOURCE if isinstance(path, Mapping) else str(path)
    return LoadedSpec(spec, resolved, source, tuple(provenance.notes))


def _structure_parts(conv, raw: dict[str, Any]) -> ExperimentSpec:
    """The spec with each top-level part that structures on its own, and None for the broken ones."""
    parts: dict[str, Any] = {}
    for field in attrs.fields(attrs.resolve_types(ExperimentSpec)):
        if field.name in raw:
            try:
                parts[field.name] = structure(conv, raw[field.name], field.type, field.name)
            except Problems:
                parts[field.name] = None  # already reported by the full structuring pass
        elif field.default is attrs.NOTHING:
            parts[field.name] = None
    with attrs.validators.disabled():  # a value that fails its validator is already in the report
        return ExperimentSpec(**parts)


def _unchecked_top_level_values(raw: dict[str, Any], reported: set[str]) -> list[StructureProblem]:
    """Validators of top-level values (``name``) run in ExperimentSpec's constructor, which a problem
    elsewhere stops before it runs them: run them here so one report holds every problem."""
    problems = []
    for field in attrs.fields(ExperimentSpec):
        if field.validator is None or field.name not in raw or field.name in reported:
            continue
        try:
            field.validator(None, field, raw[field.name])
        except (TypeError, ValueError) as exc:
            problems.append(StructureProblem(field.name, str(exc)))
    return problems


def _run_checks(
    spec: ExperimentSpec, registry: Registry, partial: bool, check_resources: bool = True
) -> list[StructureProblem]:
    """Every config's ``check(context)``; with ``partial``, checks that trip over a broken part are skipped.
    ``context["check_resources"]`` tells checks whether to look for files."""
    context = spec_context(spec, registry)
    context["check_resources"] = check_resources
    problems: list[StructureProblem] = []
    for cpath, config in iter_configs(spec):
        check = getattr(config, "check", None)
        if not callable(check):
            continue
        try:
            for p in check(context):
                problems.append(StructureProblem(_dotted(cpath, p.path), p.message))
        except SpecProblem as p:
            problems.append(StructureProblem(_dotted(cpath, p.path), p.message))
        except Exception:
            if not partial:
                raise
            # it needed a part (a None) or a context fact that is missing because that part is broken,
            # and that part's own problems are already in the report
    return problems


def structure_spec(raw: dict[str, Any], registry: Registry) -> ExperimentSpec:
    """A resolved spec dict (e.g. from a checkpoint) back to configs."""
    try:
        return structure(make_converter(registry), raw, ExperimentSpec)
    except Problems as exc:
        raise SpecError([f"(stored spec): {p.path}: {p.message}" for p in exc.problems]) from None


def with_current_defaults(raw: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """A stored resolved spec re-resolved by this madkit: keys added since it was written get their
    defaults, so comparing it with a new spec shows real changes only. Returned as is if it no longer
    structures (a removed key or kind)."""
    try:
        return make_converter(registry).unstructure(structure_spec(raw, registry))
    except SpecError:
        return raw


def _dotted(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix and path else prefix or path


def _render(problems: list[StructureProblem], provenance: Provenance) -> list[str]:
    lines = []
    for p in problems:
        source = provenance.source_of(tuple(p.path.split("[")[0].split(".")))
        lines.append(f"{_shortened(source, 100)}: {p.path}: {_shortened(p.message)}")
    return lines


MAX_MESSAGE = 400  # a problem's message is one line a person reads, never a value echoed whole


def _shortened(text: str, limit: int = MAX_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    keep = max(20, limit - 40)
    return f"{text[:keep]} ... ({len(text) - keep:,} more characters)"


# --------------------------------------------------------------------------- TOML writing
def dumps_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for resolved specs (tables, arrays of scalars, scalars)."""
    lines: list[str] = []
    _write_table(lines, data, ())
    text = "\n".join(lines).lstrip("\n") + "\n"
    tomllib.loads(text)  # what we write must read back
    return text


def _write_table(lines: list[str], table: dict[str, Any], prefix: tuple[str, ...]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append(f"[{'.'.join(_key(k) for k in prefix)}]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _write_table(lines, value, (*prefix, key))


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a table inside an array (log.sinks): an inline table
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
