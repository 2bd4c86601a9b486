"""Metrics and feature extractors (plugins/madkit_metrics, madkit/engine/evaluation/evaluate.py, madkit fid-stats).

The offline proxy extractor is trained once per module on a synthetic labelled data set (coloured
circles, squares, triangles and crosses on random backgrounds) made here, so nothing depends on
downloaded weights or on another plugin's data.
"""

from __future__ import annotations

import itertools
import math
import urllib.error

import attrs
import madkit_metrics.plugin
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from madkit_metrics.extractors.inception import ExtractorUnavailable, InceptionConfig
from madkit_metrics.extractors.proxy import ProxyConfig
from madkit_metrics.fid import Fid
from madkit_metrics.kid import KidConfig
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from madkit.cli import main
from madkit.engine.evaluation.evaluate import (
    compute_metrics,
    data_images,
    extract,
    load_reference,
    save_reference,
    tensor_images,
    to_uint8,
)
from madkit.hookspecs import hookimpl
from madkit.interfaces import DataSource, FeatureExtractor, FeatureSet
from madkit.registry import Registry
from madkit.spec import SpecError


# --------------------------------------------------------------------------- a labelled toy data set
def make_shapes(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 3, size, size] in [-1, 1] and labels [n] in 0..3: circle, square, triangle, cross."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape):
        return torch.rand(*shape, generator=g)

    labels = torch.randint(0, 4, (n,), generator=g)
    cy, cx = (0.35 + 0.3 * u(n, 1, 1)) * size, (0.35 + 0.3 * u(n, 1, 1)) * size
    r = (0.22 + 0.16 * u(n, 1, 1)) * size
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dy, dx = yy - cy, xx - cx
    masks = torch.stack(
        [
            dx**2 + dy**2 <= r**2,
            torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r,
            (dy.abs() <= 0.8 * r) & (dx.abs() <= (dy + 0.8 * r) / 2),
            ((dx.abs() <= 0.3 * r) & (dy.abs() <= r)) | ((dy.abs() <= 0.3 * r) & (dx.abs() <= r)),
        ],
        dim=1,
    )
    mask = masks[torch.arange(n), labels].unsqueeze(1)
    foreground, background = u(n, 3, 1, 1) * 2 - 1, u(n, 3, 1, 1) * 2 - 1
    return torch.where(mask, foreground, background), labels


class ShapesSource(DataSource):
    def __init__(self, config: ShapesConfig):
        self.config = config
        self.image_shape = (3, config.size, config.size)
        self.num_classes = 4 if config.labelled else 0

    def dataset(self) -> Dataset:
        images, labels = make_shapes(self.config.num, self.config.size, self.config.seed)
        return TensorDataset(images, labels if self.config.labelled else torch.zeros_like(labels))

    def describe(self) -> str:
        return f"shapes ({self.config.num} at {self.config.size}px)"


@attrs.frozen
class ShapesConfig:
    num: int = 800
    size: int = 16
    seed: int = 0
    labelled: bool = True

    def build(self) -> ShapesSource:
        return ShapesSource(self)


class ShapesPlugin:
    @hookimpl
    def madkit_register(self, registry):
        registry.register("data", "test-shapes", ShapesConfig)


# The CLI test asks for this exact proxy again and must find it cached.
PROXY_KEYS = {"width": 16, "resolution": 16, "epochs": 12, "batch": 64, "lr": 3e-3, "device": "cpu"}
NOISE_STDS = (4, 12, 32, 80)  # in uint8 units
BLUR_SIGMAS = (0.5, 1.0, 1.6, 2.5)  # in pixels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These CNNs are tiny: on a shared 2-core machine a second intra-op thread costs far more in
    contention than it gains (measured 5-13x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    reg.add_plugin(madkit_metrics.plugin, "metrics")
    reg.add_plugin(ShapesPlugin(), "test-shapes")
    return reg


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("extractors")


@pytest.fixture(scope="module")
def proxy(cache_dir):
    return ProxyConfig(data=ShapesConfig(), cache_dir=str(cache_dir), **PROXY_KEYS).build()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """A held-out set (other seed than the proxy's training data): uint8 [400, 3, 16, 16]."""
    return to_uint8(make_shapes(400, seed=123)[0])


@pytest.fixture(scope="module")
def reference(proxy, images) -> FeatureSet:
    return extract(proxy, tensor_images(images))


def noisy(images: torch.Tensor, std: float, seed: int = 7) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return TF.gaussian_blur(images, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Direct FID: tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), a symmetric matrix (eigh, not eigvals)."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# --------------------------------------------------------------------------- the proxy extractor
def test_proxy_learns_the_labels_and_names_itself(proxy):
    assert proxy.name.startswith("shapes-proxy-") and "inception" not in proxy.name
    assert proxy.roles == ("pool", "logits")
    assert proxy.meta["val_accuracy"] > 0.8, proxy.meta  # chance is 0.25: the features carry shape
    out = proxy.features(to_uint8(make_shapes(5, seed=9)[0]))
    assert out["pool"].shape == (5, 64) and out["logits"].shape == (5, 4)


def test_proxy_is_cached_by_config_and_not_retrained(proxy, cache_dir, images, monkeypatch):
    from madkit_metrics.extractors import proxy_train

    def fail(*args, **kwargs):
        raise AssertionError("the cached proxy was retrained")

    monkeypatch.setattr(proxy_train, "train_proxy", fail)
    again = ProxyConfig(cache_dir=str(cache_dir), **PROXY_KEYS).build(data=ShapesConfig())
    assert again.name == proxy.name and again.checkpoint == proxy.checkpoint
    assert torch.equal(again.features(images[:8])["pool"], proxy.features(images[:8])["pool"])


@settings(max_examples=25, deadline=None)
@given(
    field=st.sampled_from(["width", "resolution", "epochs", "batch", "lr", "seed", "max_images"]),
    data_seed=st.integers(0, 3),
)
def test_proxy_name_changes_with_everything_that_shapes_it(field, data_seed):
    base = ProxyConfig()
    data = ShapesConfig(seed=data_seed)
    changed = attrs.evolve(base, **{field: getattr(base, field) * 2 or 8})
    assert base.name_for(data) == ProxyConfig().name_for(ShapesConfig(seed=data_seed))
    assert changed.name_for(data) != base.name_for(data)
    assert base.name_for(ShapesConfig(seed=data_seed + 10)) != base.name_for(data)
    # where it is cached and run is no part of what it is
    assert attrs.evolve(base, cache_dir="/elsewhere", device="cpu").name_for(data) == base.name_for(data)


def test_proxy_refuses_unlabelled_data(tmp_path):
    with pytest.raises(ValueError, match="num_classes = 0"):
        ProxyConfig(cache_dir=str(tmp_path), **PROXY_KEYS).build(data=ShapesConfig(labelled=False))
    with pytest.raises(ValueError, match="learns from labelled data"):
        ProxyConfig(cache_dir=str(tmp_path)).build()


# --------------------------------------------------------------------------- FID behaviour
def test_fid_of_a_set_against_itself_is_zero(proxy, images, reference):
    same = compute_metrics(images, reference, ["fid"], proxy)
    slightly = compute_metrics(noisy(images, NOISE_STDS[0]), reference, ["fid"], proxy)
    _, sigma = reference.pool_statistics()
    assert abs(same["fid"]) < 1e-3 * slightly["fid"]
    assert abs(same["fid"]) < 1e-9 * np.trace(sigma)
    assert same["extractor"] == proxy.name and same["num_generated"] == same["num_reference"] == 400


@pytest.mark.parametrize(
    "degrade, levels", [(noisy, NOISE_STDS), (blurred, BLUR_SIGMAS)], ids=["gaussian-noise", "gaussian-blur"]
)
def test_fid_grows_monotonically_with_degradation(proxy, images, reference, degrade, levels):
    fids = [compute_metrics(degrade(images, level), reference, ["fid"], proxy)["fid"] for level in levels]
    assert fids[0] > 0
    assert all(a < b for a, b in itertools.pairwise(fids)), dict(zip(levels, fids))


def test_fidelity_fid_matches_a_direct_frechet_distance(proxy, images, reference):
    generated = extract(proxy, tensor_images(blurred(images, 1.0)))
    direct = frechet_distance(*generated.pool_statistics(), *reference.pool_statistics())
    ours = Fid().compute(generated, reference)["fid"]
    assert ours == pytest.approx(direct, rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(dim=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_fid_matches_the_direct_formula_on_random_gaussians(dim, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    s1, s2 = a @ a.T + 1e-3 * np.eye(dim), b @ b.T + 1e-3 * np.eye(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    sets = [FeatureSet("x", 100, "h", "s", stats=stats) for stats in ((mu1, s1), (mu2, s2))]
    fid = Fid().compute(*sets)["fid"]
    assert fid == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)
    assert Fid().compute(sets[0], sets[0])["fid"] == pytest.approx(0, abs=1e-8 * np.trace(s1))


def test_madkit_numbers_equal_torch_fidelity_calculate_metrics(proxy, images):
    """The proxy is a genuine torch-fidelity extractor: its own pipeline gives the same FID and KID."""
    import torch_fidelity

    class Uint8Images(Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    generated = noisy(images, 12)
    theirs = torch_fidelity.calculate_metrics(
        input1=Uint8Images(generated), input2=Uint8Images(images), fid=True, kid=True, kid_subsets=10, kid_subset_size=300,
        feature_extractor=proxy.name, feature_extractor_weights_path=str(proxy.checkpoint),
        cuda=False, cache=False, save_cpu_ram=True, verbose=False,
    )  # fmt: skip
    ours = compute_metrics(generated, images, ["fid", KidConfig(subsets=10, subset_size=300)], proxy)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)


# --------------------------------------------------------------------------- KID, IS, PRC
def test_kid_of_a_set_against_itself_is_near_zero(proxy, images, reference):
    kid = KidConfig(subsets=20, subset_size=200).build()
    same = compute_metrics(images, reference, [kid], proxy)
    independent = compute_metrics(to_uint8(make_shapes(400, seed=456)[0]), reference, [kid], proxy)
    worse = compute_metrics(noisy(images, 32), reference, [kid], proxy)
    assert same["kid_subset_size"] == 200
    # Subsets drawn from one set share images, which biases the estimate slightly below zero
    # (about -2/n of the kernel's diagonal excess); a fresh draw of the same distribution is unbiased.
    assert abs(same["kid"]) < 0.1 * worse["kid"], (same, worse)
    assert abs(independent["kid"]) < 0.1 * worse["kid"], (independent, worse)


def test_inception_score_uses_the_proxy_logits_under_the_proxy_name(proxy, images):
    result = compute_metrics(images, None, ["is"], proxy)
    assert result["extractor"] == proxy.name
    assert 1.0 <= result["is"] <= 4.0  # bounded by the number of classes
    collapsed = compute_metrics(images[:1].expand(40, -1, -1, -1).contiguous(), None, ["is"], proxy)
    assert collapsed["is"] == pytest.approx(1.0, abs=1e-6)  # one image repeated: no diversity
    assert result["is"] > 1.5


class MeanColour(FeatureExtractor):
    """A logit-free extractor: the mean colour of each image."""

    name, roles = "mean-colour", ("pool",)

    def features(self, images_uint8):
        return {"pool": images_uint8.float().mean(dim=(2, 3))}


def test_inception_score_refuses_an_extractor_without_logits(images):
    with pytest.raises(ValueError, match="choose an extractor that classifies"):
        compute_metrics(images, None, ["is"], MeanColour())


def test_precision_recall(proxy, images, reference):
    same = compute_metrics(images, reference, ["prc"], proxy)
    assert same["precision"] == same["recall"] == 1.0
    collapsed = compute_metrics(images[:1].expand(400, -1, -1, -1).contiguous(), reference, ["prc"], proxy)
    assert collapsed["recall"] < 0.05  # one mode covers almost none of the reference


# --------------------------------------------------------------------------- references and statistics
def test_stats_file_round_trip_gives_the_same_fid(proxy, images, reference, tmp_path):
    save_reference(tmp_path / "ref.npz", reference)
    loaded = load_reference(tmp_path / "ref.npz")
    assert (loaded.extractor, loaded.count, loaded.content_hash) == (proxy.name, 400, reference.content_hash)
    generated = blurred(images, 1.0)
    from_file = compute_metrics(generated, tmp_path / "ref.npz", ["fid"], proxy)
    from_images = compute_metrics(generated, images, ["fid"], proxy)
    assert from_file["fid"] == pytest.approx(from_images["fid"], rel=1e-12)
    assert from_file["reference_hash"] == from_images["reference_hash"]


def test_kid_needs_stored_features(proxy, images, reference, tmp_path):
    save_reference(tmp_path / "stats.npz", reference)
    with pytest.raises(ValueError, match="--keep-features"):
        compute_metrics(images, tmp_path / "stats.npz", ["kid"], proxy)
    save_reference(tmp_path / "full.npz", reference, keep_features=True)
    kid = KidConfig(subsets=10, subset_size=100).build()
    generated = noisy(images, 12)
    assert compute_metrics(generated, tmp_path / "full.npz", [kid], proxy)["kid"] == pytest.approx(
        compute_metrics(generated, images, [kid], proxy)["kid"], rel=1e-9
    )


def test_statistics_of_another_extractor_are_refused(proxy, images, reference, tmp_path):
    save_reference(tmp_path / "inception.npz", attrs.evolve(reference, extractor="inception-v3-compat"))
    with pytest.raises(ValueError, match=r"inception-v3-compat.*" + proxy.name):
        compute_metrics(images, tmp_path / "inception.npz", ["fid"], proxy)


def test_foreign_npz_is_refused_with_the_fix(tmp_path):
    np.savez(tmp_path / "other.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="madkit fid-stats"):
        load_reference(tmp_path / "other.npz")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dim=st.integers(1, 8),
    count=st.integers(2, 10_000),
    name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30),
    seed=st.integers(0, 2**31 - 1),
    keep=st.booleans(),
)
def test_statistics_files_round_trip_exactly(tmp_path, dim, count, name, seed, keep):
    rng = np.random.default_rng(seed)
    features = {"pool": torch.from_numpy(rng.normal(size=(min(count, 50), dim)).astype(np.float32))} if keep else {}
    count = len(features["pool"]) if keep else count
    stats = (rng.normal(size=dim), np.cov(rng.normal(size=(dim + 3, dim)), rowvar=False).reshape(dim, dim))
    original = FeatureSet(name, count, "ab" * 32, f"source of {name}", features, None if keep else stats)
    save_reference(tmp_path / "s.npz", original, keep_features=keep)
    loaded = load_reference(tmp_path / "s.npz")
    assert (loaded.extractor, loaded.count, loaded.content_hash) == (name, count, "ab" * 32)
    for a, b in zip(loaded.pool_statistics(), original.pool_statistics()):
        np.testing.assert_array_equal(a, b)
    if keep:
        assert torch.equal(loaded.features["pool"], features["pool"])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), batch_size=st.integers(1, 13), seed=st.integers(0, 1000))
def test_content_hash_and_features_do_not_depend_on_batching(n, batch_size, seed):
    x = torch.randint(0, 256, (n, 3, 5, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    one_by_one = extract(MeanColour(), tensor_images(x), batch_size=1)
    batched = extract(MeanColour(), tensor_images(x), batch_size=batch_size)
    assert batched.content_hash == one_by_one.content_hash
    assert torch.equal(batched.features["pool"], one_by_one.features["pool"])
    x[-1, 0, 0, 0] ^= 1  # one bit of one pixel
    assert extract(MeanColour(), tensor_images(x)).content_hash != one_by_one.content_hash


def test_a_folder_of_pngs_is_the_same_set_as_the_tensor(proxy, images, reference, tmp_path):
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:04d}.png")
    result = compute_metrics(tmp_path, reference, ["fid"], proxy)
    assert result["generated_hash"] == reference.content_hash  # PNG is lossless, files are read in name order
    assert abs(result["fid"]) < 1e-9


def test_float_images_are_refused_with_the_conversion(proxy):
    with pytest.raises(ValueError, match="to_uint8"):
        compute_metrics(torch.zeros(4, 3, 16, 16), None, ["is"], proxy)


def test_unknown_metric_kind_suggests_the_right_one(proxy, images, registry):
    with pytest.raises(SpecError, match="did you mean 'fid'"):
        compute_metrics(images, images, ["fdi"], proxy, registry=registry)


# --------------------------------------------------------------------------- madkit fid-stats
def test_fid_stats_writes_what_compute_metrics_reads(proxy, cache_dir, registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Registry, "load", classmethod(lambda cls, autoload=None: registry))
    spec = tmp_path / "data.toml"
    spec.write_text('[data]\nkind = "test-shapes"\nnum = 300\n')
    out = tmp_path / "shapes.npz"
    extractor_args = [f"--extractor-set={k}={v!r}" for k, v in PROXY_KEYS.items()]
    argv = ["fid-stats", str(spec), "--out", str(out), "--extractor", "proxy", "--num", "250", "--keep-features"]
    # the proxy trains on the data the spec describes: 800 images, as the fixture's did (so it is cached)
    argv += [*extractor_args, f"--extractor-set=cache_dir={str(cache_dir)!r}", "--set", "data.num=800"]
    assert main(argv) == 0, capsys.readouterr().err
    assert proxy.name in capsys.readouterr().out

    stats = load_reference(out)
    expected = extract(proxy, data_images(ShapesConfig(), num=250))  # the same seeded subset
    assert (stats.extractor, stats.count, stats.content_hash) == (proxy.name, 250, expected.content_hash)
    generated = to_uint8(make_shapes(300, seed=5)[0])
    assert compute_metrics(generated, out, ["fid"], proxy)["fid"] == pytest.approx(
        compute_metrics(generated, expected, ["fid"], proxy)["fid"], rel=1e-12
    )


def test_fid_stats_reports_spec_mistakes(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Registry, "load", classmethod(lambda cls, autoload=None: registry))
    spec = tmp_path / "data.toml"
    spec.write_text('[data]\nkind = "test-shapes"\nnmu = 3\n')
    assert main(["fid-stats", str(spec), "--out", str(tmp_path / "x.npz")]) == 2
    assert "data.nmu: unknown key; did you mean 'num'?" in capsys.readouterr().err
    assert main(["fid-stats", str(spec), "--out", str(tmp_path / "x.txt")]) == 2
    assert ".npz" in capsys.readouterr().err


# --------------------------------------------------------------------------- inception
def test_missing_inception_weights_path_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.delenv("MADKIT_INCEPTION_WEIGHTS", raising=False)
    config = InceptionConfig(weights=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*weights = .*weights-inception-2015-12-05"):
        config.build()
    (problem,) = list(config.check({}))
    assert problem.path == "weights" and "does not exist" in problem.message


def test_offline_download_failure_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("MADKIT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)  # madkit downloads them itself
    with pytest.raises(ExtractorUnavailable, match=r"offline.*weights = .*MADKIT_INCEPTION_WEIGHTS.*proxy"):
        InceptionConfig(device="cpu").build()


def test_a_file_that_is_not_inception_weights_is_refused(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ExtractorUnavailable, match="does not hold torch-fidelity's inception-v3-compat weights"):
        InceptionConfig(weights=str(bad), device="cpu").build()


class _TouchOnLoad:
    """A pickle payload: unpickling it calls Path.touch(marker), i.e. runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_hostile_inception_file_is_refused_and_runs_nothing(tmp_path, monkeypatch, capsys, how):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "pt_inception-2015-12-05.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "payload": _TouchOnLoad(marker)}, hostile)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(images / f"{i}.png")
    spec = tmp_path / "data.toml"
    spec.write_text(f'[data]\nkind = "folder"\nroot = "{images}"\nresolution = 8\n')
    args = ["fid-stats", str(spec), "--out", str(tmp_path / "ref.npz"), "--extractor", "inception"]
    if how == "flag":
        args += ["--extractor-set", f"weights={hostile}"]
    else:
        monkeypatch.setenv("MADKIT_INCEPTION_WEIGHTS", str(hostile))
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{str(hostile)!r} does not hold torch-fidelity's inception-v3-compat weights as plain tensors" in line
    assert "refused without running anything in it" in line
    assert not marker.exists() and not (tmp_path / "ref.npz").exists()
    torch.load(hostile, weights_only=False)  # what torch-fidelity would have done with it
    assert marker.exists()  # the payload is live: the refusal above is what kept it from running


def test_non_standard_inception_weights_get_a_name_of_their_own(tmp_path, monkeypatch):
    """Random weights in the right format run offline, but are never called inception-v3-compat."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception_v3

    with monkeypatch.context() as patch:
        patch.setattr(inception_v3, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(inception_v3.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        random_init = inception_v3.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(random_init.state_dict(), tmp_path / "random.pth")
    extractor = InceptionConfig(weights=str(tmp_path / "random.pth"), device="cpu").build()
    assert extractor.name.startswith("inception-v3-compat-custom-")
    out = extractor.features(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)


# --------------------------------------------------------------------------- the embedded OpenMoji data
@pytest.mark.slow
def test_openmoji_proxy_from_the_real_data_source(tmp_path):
    """The proxy on what it was made for: emoji groups of the built-in ``openmoji`` source (minutes on CPU)."""
    from madkit.engine.evaluation.evaluate import load_data_config

    registry = Registry.load()
    if "openmoji" not in registry.kinds("data"):
        pytest.skip("the openmoji data source is not installed")
    spec = tmp_path / "openmoji.toml"
    spec.write_text('[data]\nkind = "openmoji"\nresolution = 32\n')
    data = load_data_config(spec, registry=registry)
    proxy = ProxyConfig(epochs=4, cache_dir=str(tmp_path), device="cpu").build(data=data)
    assert proxy.name.startswith("openmoji-proxy-")
    assert proxy.meta["val_accuracy"] > 2 / proxy.meta["num_classes"]  # well above chance over the groups
    reference = extract(proxy, data_images(data, num=1000))
    emoji = torch.cat(list(data_images(data, num=1000).batches(500)))
    fids = [compute_metrics(noisy(emoji, std), reference, ["fid"], proxy)["fid"] for std in (0, 8, 24, 64)]
    assert abs(fids[0]) < 1e-6 and all(a < b for a, b in itertools.pairwise(fids)), fids
