"""Shared checks for metric configs and inputs: the features a metric reads must exist and be comparable."""

from __future__ import annotations

import torch

from madkit.interfaces import FeatureSet


def require(features: FeatureSet, role: str, metric: str) -> torch.Tensor:
    """The ``role`` features [n, f] of a set, or an error saying why the metric cannot run on it."""
    if role in features.features:
        return features.features[role]
    if features.stats is not None and not features.features:
        raise ValueError(
            f"{metric} needs the {role!r} features of {features.source}, which holds only statistics; "
            f"write it with `madkit fid-stats --keep-features` or pass the images themselves"
        )
    raise ValueError(
        f"{metric} needs {role!r} features, but extractor {features.extractor!r} provides "
        f"{sorted(features.features) or 'none'}; choose an extractor that classifies (inception, proxy)"
    )


def comparable(generated: FeatureSet, reference: FeatureSet, metric: str) -> None:
    if generated.extractor != reference.extractor:
        raise ValueError(
            f"{metric}: generated features come from extractor {generated.extractor!r} but the reference "
            f"{reference.source} from {reference.extractor!r}; features of different networks cannot be compared"
        )
