"""Sample-quality metrics for generated images against a reference, with any extractor and metrics.

    compute_metrics(generated, reference, metrics=["fid", "kid"], extractor="inception") -> dict

- generated: uint8 [n, 3, H, W] tensor, or a folder of images;
- reference: a folder of images; a statistics file (.npz written by ``madkit fid-stats``); a spec
  (.toml) whose [data] table names a data source; a data config or DataSource; a uint8 tensor; a
  FeatureSet; or None when every metric is unary (``is``);
- metrics / extractor: kinds ("fid"), tables ({"kind": "kid", "subsets": 10}), configs or built objects.

The result is plain data: metric values plus the extractor's name and both sets' sizes and content
hashes, e.g. {"fid": 12.3, "extractor": "openmoji-proxy-1a2b3c4d", "num_generated": 1000, ...}.
Images are compared as uint8 (what a saved PNG holds): ``to_uint8`` is the one quantization for
generated samples and reference data alike.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from madkit.atomic_files import writing_atomically
from madkit.errors import ConfigError
from madkit.image_depth import to_8bit
from madkit.interfaces import DataSource, FeatureExtractor, FeatureSet, Metric
from madkit.registry import Registry
from madkit.spec import Problems, SpecError, make_converter, slot, structure
from madkit.spec_loading import SpecLoadError, load_raw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
STATS_FORMAT, STATS_VERSION = "madkit-fid-stats", 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [0, 255], rounded to nearest (values outside are clipped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# --------------------------------------------------------------------------- image sets
@attrs.frozen
class ImageSet:
    """A set of uint8 images read in batches; ``data`` is the data config it came from, if any."""

    source: str
    batches: Callable[[int], Iterator[torch.Tensor]]  # batch_size -> uint8 [b, 3, H, W] batches, fixed order
    data: Any = None


def tensor_images(images: torch.Tensor, source: str = "tensor") -> ImageSet:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ConfigError(
            f"{source}: expected uint8 images [n, 3, H, W], got {images.dtype} {tuple(images.shape)}; "
            f"convert [-1, 1] floats with madkit.engine.evaluation.evaluate.to_uint8"
        )
    return ImageSet(source, lambda b: iter(images.split(b)))


def folder_images(folder: str | Path) -> ImageSet:
    """Every image file directly inside ``folder`` (sorted by name), as RGB; all must share one size."""
    from PIL import Image

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")

    def read(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return torch.from_numpy(np.array(to_8bit(image).convert("RGB"))).permute(2, 0, 1)

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        size = None
        for start in range(0, len(files), batch_size):
            images = [read(p) for p in files[start : start + batch_size]]
            for path, image in zip(files[start : start + batch_size], images):
                size = size or image.shape
                if image.shape != size:
                    raise ConfigError(
                        f"{path}: {image.shape[2]}x{image.shape[1]} pixels, but earlier images in {folder} are "
                        f"{size[2]}x{size[1]}; all images of a set must share one size"
                    )
            yield torch.stack(images)

    return ImageSet(f"folder {folder} ({len(files)} images)", batches)


def deterministic_dataset(source: DataSource) -> Dataset:
    """The source's dataset without random augmentation (no flips, center crops) where the source
    offers that view (``dataset(augment=False)``, as madkit's built-in sources do): statistics must
    not change from one run to the next."""
    if "augment" in inspect.signature(source.dataset).parameters:
        return source.dataset(augment=False)
    return source.dataset()


def data_images(data: Any, num: int = 0, seed: int = 0) -> ImageSet:
    """A data source's images through ``to_uint8``: all of them, or a seeded random ``num`` (the first
    ``num`` of an iterable dataset). ``data`` is a data config (built here) or a DataSource."""
    from madkit.build import build_part

    config = data if attrs.has(type(data)) else None
    source: DataSource = build_part(Registry.load, "data", data) if config is not None else data
    if not isinstance(source, DataSource):
        raise TypeError(f"expected a data config or a DataSource, got {type(data).__name__}")

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        dataset = deterministic_dataset(source)
        if num and hasattr(dataset, "__len__") and num < len(dataset):
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num]
            dataset = Subset(dataset, order.tolist())
        seen = 0
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0):
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            images = to_uint8(images)[: num - seen if num else None]
            seen += len(images)
            yield images
            if num and seen >= num:
                return

    return ImageSet(f"data {source.describe()}" + (f" ({num} images, seed {seed})" if num else ""), batches, config)


def as_images(images: Any) -> ImageSet:
    """A uint8 tensor or a folder path as an ImageSet."""
    if isinstance(images, ImageSet):
        return images
    if isinstance(images, torch.Tensor):
        return tensor_images(images)
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        return folder_images(images)
    raise ValueError(f"expected a uint8 image tensor [n, 3, H, W] or a folder of images, got {images!r:.200}")


# --------------------------------------------------------------------------- features
@torch.no_grad()
def extract(extractor: FeatureExtractor, images: ImageSet, batch_size: int = 64) -> FeatureSet:
    """Features of every image, and a sha256 over the uint8 pixels (independent of ``batch_size``)."""
    digest = hashlib.sha256()
    parts: dict[str, list[torch.Tensor]] = {}
    count = 0
    bar = tqdm(unit="img", desc=f"features ({extractor.name})", disable=None, file=sys.stderr)
    for batch in images.batches(batch_size):
        bar.update(len(batch))
        for image in batch:
            digest.update(f"{tuple(image.shape)};".encode())
            digest.update(image.contiguous().numpy().tobytes())
        for role, values in extractor.features(batch).items():
            parts.setdefault(role, []).append(values)
        count += len(batch)
    bar.close()
    if count == 0:
        raise ConfigError(f"{images.source}: no images")
    features = {role: torch.cat(values) for role, values in parts.items()}
    return FeatureSet(extractor.name, count, digest.hexdigest(), images.source, features)


def save_reference(path: str | Path, features: FeatureSet, keep_features: bool = False) -> None:
    """Write reference statistics (.npz): mu, sigma, extractor name, image count, content hash, and
    with ``keep_features`` the features themselves (KID and PRC need them). Atomic."""
    mu, sigma = features.pool_statistics()
    arrays: dict[str, np.ndarray] = {
        "format": np.array(STATS_FORMAT),
        "version": np.array(STATS_VERSION),
        "extractor": np.array(features.extractor),
        "count": np.array(features.count),
        "content_hash": np.array(features.content_hash),
        "source": np.array(features.source),
        "mu": mu,
        "sigma": sigma,
    }
    if keep_features:
        arrays.update({f"features_{role}": values.numpy() for role, values in features.features.items()})
    path = Path(path)
    with writing_atomically(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz"
        np.savez(f, **arrays)


def load_reference(path: str | Path) -> FeatureSet:
    """Read a statistics file written by ``save_reference``; every problem names the file and the fix."""
    fix = "write it with `madkit fid-stats DATA_SPEC --out FILE.npz`"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except FileNotFoundError:
        raise ConfigError(f"reference statistics {str(path)!r} not found; {fix}") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable .npz statistics file ({exc}); {fix}") from None
    if str(arrays.get("format", "")) != STATS_FORMAT:
        raise ConfigError(f"{path}: not a madkit statistics file (it lacks format = {STATS_FORMAT!r}); {fix}")
    missing = [k for k in ("version", "extractor", "count", "content_hash", "source", "mu", "sigma") if k not in arrays]
    if missing:
        raise ConfigError(f"{path}: statistics file lacks {missing}; {fix}")
    if int(arrays["version"]) != STATS_VERSION:
        raise ConfigError(
            f"{path}: statistics version {int(arrays['version'])}, this madkit reads {STATS_VERSION}; {fix}"
        )
    mu, sigma, count = arrays["mu"], arrays["sigma"], int(arrays["count"])
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ConfigError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together (want [f] and [f, f])")
    features = {
        k.removeprefix("features_"): torch.from_numpy(v) for k, v in arrays.items() if k.startswith("features_")
    }
    if any(len(v) != count for v in features.values()):
        raise ConfigError(f"{path}: stored features do not hold count = {count} rows")
    source = f"stats {path} (of {arrays['source']})"
    return FeatureSet(str(arrays["extractor"]), count, str(arrays["content_hash"]), source, features, (mu, sigma))


# --------------------------------------------------------------------------- resolving inputs
def load_data_config(spec: str | Path, sets: Sequence[str] = (), registry: Registry | None = None) -> Any:
    """The data config of a spec's [data] table (extends and ``--set data.key=value`` honoured); the
    rest of the spec is not read, so a file holding only a [data] table is a valid DATA_SPEC."""
    registry = registry or Registry.load()
    try:
        raw, provenance = load_raw(spec, list(sets))
    except SpecLoadError as exc:
        raise SpecError([str(exc)]) from None
    if not isinstance(raw.get("data"), dict):
        raise SpecError([f'{spec}: data: missing; add a [data] table naming a data source, e.g. kind = "openmoji"'])
    try:
        return structure(make_converter(registry), raw["data"], slot("data"), "data")
    except Problems as exc:
        raise SpecError(
            [f"{provenance.source_of(tuple(p.path.split('.')))}: {p.path}: {p.message}" for p in exc.problems]
        ) from None


def _config(value: Any, interface: str, where: str, registry: Callable[[], Registry]) -> Any:
    """A kind name or a {kind = ...} table structured into that kind's config; configs pass through."""
    if isinstance(value, str):
        value = {"kind": value}
    if isinstance(value, dict):
        try:
            return structure(make_converter(registry()), value, slot(interface), where)
        except Problems as exc:
            raise SpecError([f"{p.path}: {p.message}" for p in exc.problems]) from None
    if attrs.has(type(value)) and callable(getattr(value, "build", None)):
        return value
    raise TypeError(f"{where}: expected a {interface} kind, a table with kind = ..., or a config; got {value!r:.200}")


def _lazy(registry: Registry | None) -> Callable[[], Registry]:
    """The registry, loaded on first need: objects passed in ready-built need no plugins at all."""
    loaded = registry

    def get() -> Registry:
        nonlocal loaded
        if loaded is None:
            loaded = Registry.load()
        return loaded

    return get


def with_proxy_data(table: dict[str, Any], data: Any, registry: Registry) -> dict[str, Any]:
    """``table`` with a ``data`` table added where a ``proxy`` extractor could not learn from the
    evaluation's own data: OpenMoji data with fewer than two classes (one group, or labels = false,
    as in the quickstart) gets a proxy trained on every OpenMoji group at the same resolution."""
    if table.get("kind") != "proxy" or "data" in table:
        return table
    try:
        if registry.kind_of("data", data) != "openmoji":
            return table
    except LookupError:  # a data config no plugin registered (built by hand): nothing to say about it
        return table
    classes = data.num_classes() if callable(getattr(data, "num_classes", None)) else 0
    if classes >= 2:
        return table
    return {**table, "data": {"kind": "openmoji", "resolution": data.resolution}}


def resolve_extractor(extractor: Any, registry: Registry | None = None, data: Any = None) -> FeatureExtractor:
    """A built extractor from a kind, table, config or extractor; ``data`` is the data config an
    extractor that learns from data (the proxy) trains on unless its own config names one."""
    return _resolve_extractor(extractor, _lazy(registry), data)


def _resolve_extractor(extractor: Any, registry: Callable[[], Registry], data: Any) -> FeatureExtractor:
    if isinstance(extractor, FeatureExtractor):
        return extractor
    from madkit.build import build_part

    return build_part(registry, "extractor", _config(extractor, "extractor", "extractor", registry), data=data)


def resolve_metrics(metrics: Sequence[Any], registry: Registry | None = None) -> list[Metric]:
    return _resolve_metrics(metrics, _lazy(registry))


def _resolve_metrics(metrics: Sequence[Any], registry: Callable[[], Registry]) -> list[Metric]:
    if isinstance(metrics, (str, dict)):
        metrics = [metrics]
    from madkit.build import build_part

    out = [
        m if isinstance(m, Metric) else build_part(registry, "metric", _config(m, "metric", f"metrics[{i}]", registry))
        for i, m in enumerate(metrics)
    ]
    if not out:
        raise ConfigError("no metrics asked for; name at least one, e.g. metrics=['fid']")
    return out


def reference_images(reference: Any, num: int = 0, registry: Registry | None = None) -> ImageSet | FeatureSet:
    """What a reference argument names: images to embed, or features/statistics already computed."""
    return _reference(reference, num, _lazy(registry))


def _reference(reference: Any, num: int, registry: Callable[[], Registry]) -> ImageSet | FeatureSet:
    if isinstance(reference, (FeatureSet, ImageSet)):
        return reference
    if isinstance(reference, torch.Tensor):
        return tensor_images(reference, "reference tensor")
    if isinstance(reference, (str, Path)):
        path = Path(reference)
        if path.is_dir():
            return folder_images(path)
        if path.suffix == ".npz":
            return load_reference(path)
        if path.suffix == ".toml":
            return data_images(load_data_config(path, registry=registry()), num)
        raise ConfigError(
            f"reference {str(path)!r}: expected a folder of images, a .npz statistics file or a .toml spec "
            f"with a [data] table" + ("" if path.exists() else " (and it does not exist)")
        )
    if isinstance(reference, DataSource) or attrs.has(type(reference)):
        return data_images(reference, num)
    raise TypeError(f"cannot use {type(reference).__name__} as a reference")


# --------------------------------------------------------------------------- the entry point
def compute_metrics(
    generated: torch.Tensor | str | Path | ImageSet,
    reference: Any = None,
    metrics: Sequence[Any] = ("fid",),
    extractor: Any = "inception",
    *,
    data: Any = None,
    num_reference: int = 0,
    batch_size: int = 64,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Metrics of ``generated`` against ``reference`` (see the module docstring), as plain data.

    ``data``: the data config a learning extractor (proxy) trains on; defaults to the reference's own
    data config when the reference is a data source. ``num_reference``: a seeded random subset of a
    data-source reference (0 = all of it).
    """
    get_registry = _lazy(registry)
    metric_objs = _resolve_metrics(metrics, get_registry)
    unary = all(not m.needs_reference for m in metric_objs)
    if reference is None and not unary:
        needing = [m.name for m in metric_objs if m.needs_reference]
        raise ConfigError(f"metrics {needing} compare against a reference: pass a folder, a .npz file or a data spec")
    ref = None if reference is None else _reference(reference, num_reference, get_registry)
    if data is None and isinstance(ref, ImageSet):
        data = ref.data
    feature_extractor = _resolve_extractor(extractor, get_registry, data)
    if isinstance(ref, FeatureSet) and ref.extractor != feature_extractor.name:
        # checked before any image is embedded: statistics of another network cannot be compared
        raise ConfigError(
            f"{ref.source} was computed with extractor {ref.extractor!r}, but this evaluation uses "
            f"{feature_extractor.name!r}; evaluate with the extractor that made them, or recompute them "
            f"with `madkit fid-stats DATA_SPEC --extractor ...`"
        )

    generated_set = extract(feature_extractor, as_images(generated), batch_size)
    result: dict[str, Any] = {
        "extractor": feature_extractor.name,
        "num_generated": generated_set.count,
        "generated_hash": generated_set.content_hash,
    }
    reference_set = extract(feature_extractor, ref, batch_size) if isinstance(ref, ImageSet) else ref
    if reference_set is not None:
        result.update(
            reference=reference_set.source,
            num_reference=reference_set.count,
            reference_hash=reference_set.content_hash,
        )
    for metric in metric_objs:
        values = metric.compute(generated_set, reference_set)
        if clash := set(values) & set(result):
            raise ValueError(f"metric {metric.name!r} returned keys {sorted(clash)} that another result already uses")
        result.update(values)
    return result
