"""``fid``: Frechet distance between Gaussians fitted to the two sets' pool features.

The distance itself is torch-fidelity's (TTUR's formula: tr(sqrt(S1 S2)) from the eigenvalues of
S1 S2); a reference may be a statistics file, since FID needs only (mu, sigma).

torch-fidelity is imported inside ``compute``: it takes ~1.5 s, and every madkit command loads
this plugin.
"""

from __future__ import annotations

import attrs

from madkit.interfaces import FeatureSet, Metric
from madkit_metrics.checks import comparable


@attrs.frozen
class FidConfig:
    def build(self) -> Fid:
        return Fid()


class Fid(Metric):
    name = "fid"
    role = "pool"
    needs_reference = True
    needs_reference_features = False

    def compute(self, generated: FeatureSet, reference: FeatureSet | None) -> dict[str, float]:
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        if reference is None:
            raise ValueError("fid compares two sets: give a reference")
        comparable(generated, reference, self.name)
        (mu1, sigma1), (mu2, sigma2) = generated.pool_statistics(), reference.pool_statistics()
        if mu1.shape != mu2.shape:
            raise ValueError(
                f"fid: feature sizes differ: {mu1.shape[0]} (generated) vs {mu2.shape[0]} ({reference.source})"
            )
        value = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
        return {"fid": float(value[KEY_METRIC_FID])}
