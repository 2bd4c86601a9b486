"""``prc``: improved precision and recall (Kynkaanniemi et al. 2019) via torch-fidelity.

Precision: the share of generated images inside the reference manifold (k-NN balls around reference
features); recall: the share of reference images inside the generated manifold. Needs the
reference's features.

torch-fidelity is imported inside ``compute``: it takes ~1.5 s, and every madkit command loads
this plugin.
"""

from __future__ import annotations

import attrs

from madkit.interfaces import FeatureSet, Metric
from madkit.validators import positive
from madkit_metrics.checks import comparable, require


@attrs.frozen
class PrcConfig:
    neighborhood: int = attrs.field(default=3, validator=positive)  # k of the k-NN balls

    def build(self) -> PrecisionRecall:
        return PrecisionRecall(self)


class PrecisionRecall(Metric):
    name = "prc"
    role = "pool"
    needs_reference = True
    needs_reference_features = True

    def __init__(self, config: PrcConfig):
        self.config = config

    def compute(self, generated: FeatureSet, reference: FeatureSet | None) -> dict[str, float]:
        from torch_fidelity.metric_prc import (
            KEY_METRIC_F_SCORE,
            KEY_METRIC_PRECISION,
            KEY_METRIC_RECALL,
            prc_features_to_metric,
        )

        if reference is None:
            raise ValueError("prc compares two sets: give a reference")
        comparable(generated, reference, self.name)
        f1, f2 = require(generated, self.role, self.name), require(reference, self.role, self.name)
        k = self.config.neighborhood
        if min(len(f1), len(f2)) <= k:
            raise ValueError(
                f"prc with neighborhood {k} needs more than {k} images per set, got {len(f1)} and {len(f2)}"
            )
        # torch-fidelity's convention: input 1 is generated, input 2 is real
        out = prc_features_to_metric(f1, f2, prc_neighborhood=k, save_cpu_ram=True, verbose=False)
        return {
            "precision": float(out[KEY_METRIC_PRECISION]),
            "recall": float(out[KEY_METRIC_RECALL]),
            "f_score": float(out[KEY_METRIC_F_SCORE]),
        }
