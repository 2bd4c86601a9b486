"""FID's spread (plugins/madkit_metrics/fid_bootstrap.py): the bootstrap's replicates are exact FIDs of
resampled sets, its spread matches the spread over independent draws, and it shrinks as the
generated set grows. Synthetic Gaussian features stand in for an extractor's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import environment  # noqa: F401 (autouse: one intra-op thread, as madkit's eval tests)
from madkit_metrics.fid import Fid, FidConfig
from madkit_metrics.fid_bootstrap import FrechetResampler

from madkit.interfaces import FeatureSet

DIM = 8
SCALE = np.linspace(0.7, 1.3, DIM)  # generated features: stretched and shifted against the reference


@pytest.fixture(scope="module")
def reference() -> FeatureSet:
    x = np.random.default_rng(0).normal(size=(5000, DIM))
    return FeatureSet("synthetic", len(x), "ref", "reference", stats=(x.mean(0), np.cov(x, rowvar=False)))


def draw(rng: np.random.Generator, n: int) -> FeatureSet:
    x = torch.from_numpy(rng.normal(size=(n, DIM)) * SCALE + 0.2).float()
    return FeatureSet("synthetic", n, f"gen-{n}", "generated", {"pool": x})


def test_a_replicate_is_the_fid_of_the_resampled_set(reference):
    generated = draw(np.random.default_rng(1), 300)
    x = generated.features["pool"]
    resampler = FrechetResampler(x, *reference.pool_statistics())
    point = Fid(FidConfig(bootstrap=0)).compute(generated, reference)["fid"]
    assert resampler.fid(torch.ones(300)) == pytest.approx(point, rel=1e-9)
    drawn = torch.randint(300, (300,), generator=torch.Generator().manual_seed(3))
    resampled = FeatureSet("synthetic", 300, "r", "resampled", {"pool": x[drawn]})
    expected = Fid(FidConfig(bootstrap=0)).compute(resampled, reference)["fid"]
    assert resampler.fid(torch.bincount(drawn, minlength=300)) == pytest.approx(expected, rel=1e-9)


def test_the_bootstrap_spread_matches_the_spread_over_independent_draws(reference):
    rng = np.random.default_rng(2)
    no_spread = Fid(FidConfig(bootstrap=0))
    independent = [no_spread.compute(draw(rng, 400), reference)["fid"] for _ in range(150)]
    bootstrapped = [Fid().compute(draw(rng, 400), reference)["fid_std"] for _ in range(5)]
    ratio = float(np.mean(bootstrapped)) / float(np.std(independent, ddof=1))
    assert 0.75 < ratio < 1.33, ratio


def test_the_spread_shrinks_as_the_sample_count_grows(reference):
    rng = np.random.default_rng(4)
    spread = {n: np.mean([Fid().compute(draw(rng, n), reference)["fid_std"] for _ in range(3)])
              for n in (100, 400, 1600)}
    assert spread[100] > spread[400] > spread[1600] > 0
    assert 2.5 < spread[100] / spread[1600] < 6.5  # ~ 1/sqrt(n): 4 for 16 times the images


def test_the_spread_is_reproducible_and_recorded(reference):
    generated = draw(np.random.default_rng(5), 200)
    first, again = Fid().compute(generated, reference), Fid().compute(generated, reference)
    assert first == again and first["fid_bootstrap"] == 100 and set(first) == {"fid", "fid_std", "fid_bootstrap"}
    assert Fid(FidConfig(bootstrap=0)).compute(generated, reference).keys() == {"fid"}
    as_statistics = FeatureSet("synthetic", 200, "s", "stats only", stats=generated.pool_statistics())
    assert Fid().compute(as_statistics, reference).keys() == {"fid"}  # nothing to resample


def test_one_replicate_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"0 \(no spread\) or at least 2"):
        FidConfig(bootstrap=1)
