"""``fid``: Frechet distance between Gaussians fitted to the two sets' pool features, with its spread.

The distance itself is torch-fidelity's (TTUR's formula: tr(sqrt(S1 S2)) from the eigenvalues of
S1 S2); a reference may be a statistics file, since FID needs only (mu, sigma).

``fid_std`` is the standard deviation of ``bootstrap`` replicates that resample the generated
images (madkit_metrics.fid_bootstrap says why and how); ``fid_bootstrap`` records how many. Set
``bootstrap = 0`` to skip it; a generated set given only as statistics has no spread either.

torch-fidelity is imported inside ``compute``: it takes ~1.5 s, and every madkit command loads
this plugin.
"""

from __future__ import annotations

import attrs

from madkit.interfaces import FeatureSet, Metric
from madkit_metrics.checks import comparable


def _replicates(_inst, attribute, value: int) -> None:
    if value == 1 or value < 0:
        raise ValueError(f"must be 0 (no spread) or at least 2 replicates, got {value}")


@attrs.frozen
class FidConfig:
    bootstrap: int = attrs.field(default=100, validator=_replicates)  # replicates for fid_std; 0 = none
    seed: int = 0  # the bootstrap's draws: the same features always get the same fid_std

    def build(self) -> Fid:
        return Fid(self)


class Fid(Metric):
    name = "fid"
    role = "pool"
    needs_reference = True
    needs_reference_features = False

    def __init__(self, config: FidConfig | None = None):
        self.config = config or FidConfig()

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
        out = {"fid": float(value[KEY_METRIC_FID])}
        replicates = self.config.bootstrap
        if replicates and "pool" in generated.features:
            from madkit_metrics.fid_bootstrap import FrechetResampler

            fids = FrechetResampler(generated.features["pool"], mu2, sigma2).bootstrap(replicates, self.config.seed)
            out.update(fid_std=float(fids.std(ddof=1)), fid_bootstrap=replicates)
        return out
