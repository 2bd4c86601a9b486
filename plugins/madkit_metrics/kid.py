"""``kid``: Kernel Inception Distance, torch-fidelity's unbiased MMD^2 with the cubic polynomial kernel,
averaged over random subsets. Unlike FID it is unbiased in the set size, so small sets compare fairly;
it needs the reference's features, not just statistics.

torch-fidelity is imported inside ``compute``: it takes ~1.5 s, and every madkit command loads
this plugin.
"""

from __future__ import annotations

import attrs

from madkit.interfaces import FeatureSet, Metric
from madkit.validators import positive
from madkit_metrics.checks import comparable, require


@attrs.frozen
class KidConfig:
    subsets: int = attrs.field(default=100, validator=positive)
    subset_size: int = attrs.field(default=1000, validator=positive)  # capped at the smaller set's size
    seed: int = 2020  # torch-fidelity's default, so numbers match its CLI

    def build(self) -> Kid:
        return Kid(self)


class Kid(Metric):
    name = "kid"
    role = "pool"
    needs_reference = True
    needs_reference_features = True

    def __init__(self, config: KidConfig):
        self.config = config

    def compute(self, generated: FeatureSet, reference: FeatureSet | None) -> dict[str, float]:
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

        if reference is None:
            raise ValueError("kid compares two sets: give a reference")
        comparable(generated, reference, self.name)
        f1, f2 = require(generated, self.role, self.name), require(reference, self.role, self.name)
        size = min(self.config.subset_size, len(f1), len(f2))
        if size < 2:
            raise ValueError(f"kid needs at least 2 images per set, got {len(f1)} generated and {len(f2)} reference")
        out = kid_features_to_metric(
            f1, f2, kid_subsets=self.config.subsets, kid_subset_size=size, rng_seed=self.config.seed, verbose=False
        )
        return {
            "kid": float(out[KEY_METRIC_KID_MEAN]),
            "kid_std": float(out[KEY_METRIC_KID_STD]),
            "kid_subset_size": size,
        }
