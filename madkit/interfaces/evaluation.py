"""Evaluation and records: feature extractors, feature sets, metrics and metric sinks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import attrs
import numpy as np
import torch


class FeatureExtractor(ABC):
    """Maps uint8 images [n, 3, H, W] (any H, W) to named features.

    Built with ``data=`` the data config of the evaluation (an extractor trained on data, like the
    offline proxy, uses it when its own config names no data; others ignore it).
    """

    # Names the network AND its weights ("inception-v3-compat", "openmoji-proxy-1a2b3c4d"); every
    # metric result carries it, so a proxy FID is never mistaken for Inception FID.
    name: str
    # What ``features`` returns: "pool" (the embedding FID, KID and PRC compare) and, for
    # classifiers, "logits" (what the Inception Score reads).
    roles: tuple[str, ...]

    @abstractmethod
    def features(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 [n, 3, H, W] -> {role: float32 [n, f_role] on the CPU}."""


@attrs.frozen
class FeatureSet:
    """One image set seen through one extractor: its features, or only their statistics.

    ``features`` maps role -> float32 [n, f] (empty for a statistics file that kept no features);
    ``stats`` holds (mu [f], sigma [f, f]) float64 of the "pool" features when they were loaded
    rather than computed. ``content_hash`` identifies the uint8 pixels (sha256 over the images in order).
    """

    extractor: str
    count: int
    content_hash: str
    source: str  # for humans: a folder, a stats file, a data source
    features: dict[str, torch.Tensor] = attrs.Factory(dict)
    stats: tuple[np.ndarray, np.ndarray] | None = None

    def pool_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu [f], sigma [f, f]) in float64: the Gaussian FID fits (mean, unbiased covariance)."""
        if self.stats is not None:
            return self.stats
        if "pool" not in self.features:
            raise ValueError(f"{self.source}: no 'pool' features to compute statistics from")
        if self.count < 2:
            raise ValueError(f"{self.source}: statistics need at least 2 images, got {self.count}")
        x = self.features["pool"].double().numpy()
        return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))  # [1, 1] for one feature


class Metric(ABC):
    """A sample-quality metric computed from features. Built with no runtime arguments."""

    name: str
    role: str = "pool"  # which extractor output it reads
    needs_reference: bool = True
    needs_reference_features: bool = False  # False: the reference's statistics suffice (FID)

    @abstractmethod
    def compute(self, generated: FeatureSet, reference: FeatureSet | None) -> dict[str, float]:
        """Result keys are the metric's own ("fid"; "kid", "kid_std"; ...); never the extractor's name."""


class Sink(ABC):
    """Receives scalar metrics and images during training, and evaluation results afterwards.

    Built with ``run_dir``. A sink that keeps a tracker run (wandb, mlflow) should remember it in the
    run folder, so that a resumed run and a later ``madkit eval`` add to the same tracker run.
    """

    @abstractmethod
    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Training metrics every ``log_every`` steps; ``madkit eval`` results as ``eval/<metric>/<settings>``."""

    def log_image(self, step: int, tag: str, image_uint8_hwc) -> None:
        return None

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved spec (nested plain data), once when training starts or resumes."""
        return None

    def close(self) -> None:
        return None
