"""``hf-disk``: a Hugging Face dataset written with ``save_to_disk`` (e.g. FFHQ-1024, ``webp`` images).

Images are decoded here rather than by ``datasets`` (the column is read with ``decode=False``), so a
corrupt image is reported with its row and path and ``on_bad_image`` applies. ``num_classes`` comes
from the config, or from the label column's ``ClassLabel`` in the saved metadata (a small JSON
file, no data read).

Needs the optional ``datasets`` package: ``pip install 'madkit[datasets]'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import attrs
from PIL import Image

from madkit.errors import missing_package, require_package
from madkit.interfaces import SpecProblem
from madkit.validators import non_negative
from madkit_data.base import ImageSource, IndexedImages
from madkit_data.decoding import BadImageError, decode_image, on_bad_image_field
from madkit_data.transforms import ImageTransform, crop_field, hflip_field, resolution_field


@attrs.frozen
class HFDiskConfig:
    path: str  # the folder save_to_disk wrote (required)
    split: str = "train"  # used when the folder holds a DatasetDict; ignored for a single Dataset
    image_column: str = "image"
    label_column: str = ""  # empty: unconditional (every label 0)
    # number of classes (a key distinct from the num_classes() method); 0: from the ClassLabel feature
    classes: int = attrs.field(default=0, validator=non_negative)
    resolution: int = resolution_field(256)
    crop: str = crop_field()
    hflip: bool = hflip_field()
    on_bad_image: str = on_bad_image_field()

    def build(self) -> HFDiskSource:
        for problem in self.check({}):
            raise ValueError(f"data.{problem.path}: {problem.message}")
        return HFDiskSource(self)

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    def num_classes(self) -> int:
        if not self.label_column:
            return 0
        if self.classes:
            return self.classes
        try:
            feature = saved_features(Path(self.path).expanduser(), self.split).get(self.label_column, {})
        except SpecProblem:
            return 0  # check() reports it
        return len(feature.get("names", ())) if feature.get("_type") == "ClassLabel" else 0

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]:
        if not context.get("check_resources", True):
            return
        if (missing := missing_package("datasets", "datasets", "the hf-disk data source")) is not None:
            yield SpecProblem("kind", missing)
        root = Path(self.path).expanduser()
        if not root.is_dir():
            yield SpecProblem(
                "path", f"{str(root)!r} is not a folder; set data.path to a folder written by save_to_disk"
            )
            return
        try:
            features = saved_features(root, self.split)
        except SpecProblem as problem:
            yield problem
            return
        for key in ("image_column", "label_column"):
            column = getattr(self, key)
            if column and column not in features:
                yield SpecProblem(key, f"no column {column!r} in {str(root)!r}; columns: {', '.join(features)}")
        if self.label_column in features and not self.classes:
            if features[self.label_column].get("_type") != "ClassLabel":
                yield SpecProblem(
                    "classes",
                    f"column {self.label_column!r} is not a ClassLabel, so the number of classes is unknown; "
                    f"set data.classes",
                )


def saved_features(root: Path, split: str) -> dict[str, dict]:
    """Column name -> feature description, from the metadata save_to_disk writes (no data read).

    Raises ``SpecProblem`` (key ``split`` or ``path``) when the folder does not hold such a dataset."""
    folder = root
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise SpecProblem(
                "split", f"no split {split!r} in {str(root)!r}; set data.split to one of: {', '.join(splits)}"
            )
        folder = root / split
    info = folder / "dataset_info.json"
    if not info.is_file():
        raise SpecProblem("path", f"{str(root)!r} holds no dataset saved with save_to_disk (no {info.name})")
    return json.loads(info.read_text()).get("features", {})


def import_datasets():
    return require_package("datasets", "datasets", "the hf-disk data source")


class HFDiskSource(ImageSource):
    def __init__(self, config: HFDiskConfig):
        datasets = import_datasets()
        self.config = config
        loaded = datasets.load_from_disk(str(Path(config.path).expanduser()))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[config.split]
        columns = [config.image_column] + ([config.label_column] if config.label_column else [])
        table = loaded.select_columns(columns)
        if isinstance(table.features[config.image_column], datasets.Image):
            table = table.cast_column(config.image_column, datasets.Image(decode=False))
        self.table = table
        transform = ImageTransform(config.resolution, config.crop, config.hflip)
        super().__init__(transform, config.num_classes(), config.on_bad_image)

    def dataset(self, augment: bool = True) -> HFDiskImages:
        return HFDiskImages(self, augment)

    def describe(self) -> str:
        return f"hf-disk {self.config.path} [{self.config.split}] ({len(self.table)} images)"


class HFDiskImages(IndexedImages):
    def __init__(self, source: HFDiskSource, augment: bool):
        super().__init__(source.transform, augment, source.on_bad_image, source.skips)
        self.table, self.config = source.table, source.config

    def __len__(self) -> int:
        return len(self.table)

    def load(self, index: int) -> tuple[Image.Image, int]:
        row = self.table[index]
        value = row[self.config.image_column]
        name = f"{self.config.path} row {index}"
        if isinstance(value, dict):  # the Image feature undecoded: {"bytes": ..., "path": ...}
            name += f" ({value['path']})" if value.get("path") else ""
            data = value.get("bytes") or value.get("path")
        else:
            data = value
        if isinstance(data, Image.Image):
            image = data
        elif isinstance(data, (bytes, bytearray, str)):
            image = decode_image(data, name)
        else:
            raise BadImageError(
                name, f"{name}: column {self.config.image_column!r} holds {type(data).__name__}, not an image"
            )
        label = int(row[self.config.label_column]) if self.config.label_column else 0
        return image, label
