"""``folder``: every image under a directory, recursively, in sorted path order.

With ``class_subfolders = true`` the first-level subfolder names the class (``root/cat/x.png`` ->
class "cat"); classes are the sorted first-level subfolder names, so labels do not depend on which
files happen to be readable. Hidden files and folders (names starting with ".") are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import attrs
from PIL import Image

from madkit.interfaces import SpecProblem
from madkit_data.base import ImageSource, IndexedImages
from madkit_data.decoding import decode_image, on_bad_image_field
from madkit_data.transforms import ImageTransform, crop_field, hflip_field, resolution_field

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@attrs.frozen
class FolderConfig:
    root: str  # the directory to read (required)
    resolution: int = resolution_field(256)
    crop: str = crop_field()
    hflip: bool = hflip_field()
    class_subfolders: bool = False  # true: the first-level subfolder is the label
    on_bad_image: str = on_bad_image_field()

    def build(self) -> FolderSource:
        return FolderSource(self)

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    def num_classes(self) -> int:
        """Number of first-level subfolders (a directory listing, no image is read); 0 without labels."""
        root = Path(self.root).expanduser()
        if not self.class_subfolders or not root.is_dir():
            return 0  # check() reports the missing folder
        return len(class_names(root))

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]:
        if not context.get("check_resources", True):
            return []
        root = Path(self.root).expanduser()
        return folder_problems(root, list_images(root) if root.is_dir() else [], self.class_subfolders)


def folder_problems(root: Path, files: list[Path], class_subfolders: bool) -> list[SpecProblem]:
    """What makes ``root`` unusable as a ``folder`` source (paths relative to the data table)."""
    if not root.exists():
        return [SpecProblem("root", f"folder {str(root)!r} does not exist; set data.root to a folder of images")]
    if not root.is_dir():
        return [SpecProblem("root", f"{str(root)!r} is a file, not a folder; set data.root to a folder of images")]
    if not files:
        return [SpecProblem("root", f"no images ({', '.join(EXTENSIONS)}) under {str(root)!r}; check data.root")]
    loose = [f for f in files if len(f.parts) == 1] if class_subfolders else []
    if loose:
        return [
            SpecProblem(
                "class_subfolders",
                f"{len(loose)} image(s) sit directly in {str(root)!r} (e.g. {loose[0]}) and so have no "
                f"class folder; move them into a subfolder or set data.class_subfolders = false",
            )
        ]
    return []


def class_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(root: Path) -> list[Path]:
    """Image paths relative to ``root``, sorted (by POSIX path, so every OS agrees)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        found += [rel / f for f in filenames if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return sorted(found, key=lambda p: p.as_posix())


class FolderSource(ImageSource):
    def __init__(self, config: FolderConfig):
        self.config = config
        self.root = Path(config.root).expanduser()
        self.files = list_images(self.root) if self.root.is_dir() else []
        for problem in folder_problems(self.root, self.files, config.class_subfolders):
            raise ValueError(f"data.{problem.path}: {problem.message}")
        self.classes = class_names(self.root) if config.class_subfolders else []
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index[f.parts[0]] for f in self.files] if config.class_subfolders else [0] * len(self.files)
        transform = ImageTransform(config.resolution, config.crop, config.hflip)
        super().__init__(transform, len(self.classes), config.on_bad_image)

    def dataset(self, augment: bool = True) -> FolderImages:
        return FolderImages(self, augment)

    def describe(self) -> str:
        classes = f", {len(self.classes)} classes" if self.classes else ""
        return f"folder {self.root} ({len(self.files)} images{classes})"


class FolderImages(IndexedImages):
    def __init__(self, source: FolderSource, augment: bool):
        super().__init__(source.transform, augment, source.on_bad_image, source.skips)
        self.root, self.files, self.labels = source.root, source.files, source.labels

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path = self.root / self.files[index]
        return decode_image(path, str(path)), self.labels[index]
