"""``is``: Inception Score, exp(E KL(p(y|x) || p(y))) over the extractor's class logits (torch-fidelity).

With Inception these are the 1008 ImageNet logits; with the proxy they are its own classes (emoji
groups, say) and the score is reported under the proxy's name. Extractors without logits are refused.

torch-fidelity is imported inside ``compute``: it takes ~1.5 s, and every madkit command loads
this plugin.
"""

from __future__ import annotations

import attrs

from madkit.interfaces import FeatureSet, Metric
from madkit.validators import positive
from madkit_metrics.checks import require


@attrs.frozen
class IsConfig:
    splits: int = attrs.field(default=10, validator=positive)
    seed: int = 2020  # shuffles the images before splitting, as torch-fidelity does

    def build(self) -> InceptionScore:
        return InceptionScore(self)


class InceptionScore(Metric):
    name = "is"
    role = "logits"
    needs_reference = False
    needs_reference_features = False

    def __init__(self, config: IsConfig):
        self.config = config

    def compute(self, generated: FeatureSet, reference: FeatureSet | None = None) -> dict[str, float]:
        from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

        logits = require(generated, self.role, self.name)
        if len(logits) < self.config.splits:
            raise ValueError(f"is: {len(logits)} images cannot fill {self.config.splits} splits; lower is.splits")
        out = isc_features_to_metric(logits, splits=self.config.splits, shuffle=True, rng_seed=self.config.seed)
        return {"is": float(out[KEY_METRIC_ISC_MEAN]), "is_std": float(out[KEY_METRIC_ISC_STD])}
