"""``inception``: torch-fidelity's inception-v3-compat, the network behind published FID numbers.

Weights: the ``weights`` key (or ``$MADKIT_INCEPTION_WEIGHTS``) names a local copy for offline
clusters; otherwise torch-fidelity downloads them once into the torch hub cache. The extractor is
named "inception-v3-compat" only when the weights are the standard file (checked by its sha256);
other weights get a name of their own so their FID is never reported as Inception FID.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from madkit.interfaces import SpecProblem

if TYPE_CHECKING:
    from madkit_metrics.extractors.fidelity import FidelityExtractor

# torch-fidelity is imported inside functions: it takes ~1.5 s and every madkit command loads this plugin.
FIDELITY_NAME = "inception-v3-compat"
STANDARD_SHA256_PREFIX = "6726825d"  # torch hub convention: the file name carries its sha256 prefix
WEIGHTS_ENV = "MADKIT_INCEPTION_WEIGHTS"
# torch-fidelity's layers: 2048-d pool3 for FID/KID/PRC; logits without the bias for IS, as torch-fidelity does
LAYERS = {"pool": "2048", "logits": "logits_unbiased"}


class ExtractorUnavailable(RuntimeError):
    """The extractor's weights cannot be obtained; the message says how to provide them."""


def _how_to_provide() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return (
        f"download {URL_INCEPTION_V3} on a machine with network access, copy it here, and set the "
        f'extractor key weights = "/path/to/{URL_INCEPTION_V3.rsplit("/", 1)[-1]}" (madkit fid-stats: '
        f"--extractor-set weights=/path/to/it; or the environment variable {WEIGHTS_ENV}); "
        f"without network, the 'proxy' extractor computes FID-style metrics offline (reported under its own name)"
    )


@attrs.frozen
class InceptionConfig:
    weights: str = ""  # local weights file; "" = $MADKIT_INCEPTION_WEIGHTS, else torch-fidelity's download
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def weights_path(self) -> str:
        return self.weights or os.environ.get(WEIGHTS_ENV, "")

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]:
        path = self.weights_path()
        if path and not Path(path).is_file():
            yield SpecProblem("weights", f"Inception weights file {path!r} does not exist; {_how_to_provide()}")

    def build(self, data: Any = None) -> FidelityExtractor:
        """The extractor, weights loaded (``data`` is ignored: Inception is trained already)."""
        from madkit_metrics.extractors.fidelity import FidelityExtractor, resolve_device

        path = self.weights_path()
        if path:
            source = "the weights key" if self.weights else f"${WEIGHTS_ENV}"
            if not Path(path).is_file():
                raise FileNotFoundError(f"Inception weights {path!r} (from {source}) not found; {_how_to_provide()}")
            name = _name_for_weights(Path(path))
        else:
            name = FIDELITY_NAME
        device, options = resolve_device(self.device), {"feature_extractor_weights_path": path or None}
        try:
            return FidelityExtractor(name, FIDELITY_NAME, LAYERS, device, options)
        except Exception as exc:
            if path:  # torch.load and load_state_dict fail in many ways on a wrong file
                raise ExtractorUnavailable(
                    f"{path!r} does not hold torch-fidelity's inception-v3-compat weights ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); {_how_to_provide()}"
                ) from exc
            if isinstance(exc, OSError):  # urllib's URLError is an OSError: the download failed
                raise ExtractorUnavailable(
                    f"Inception weights could not be downloaded ({type(exc).__name__}: {exc}); this machine "
                    f"looks offline. To provide them: {_how_to_provide()}"
                ) from exc
            raise


def _name_for_weights(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    return FIDELITY_NAME if sha.startswith(STANDARD_SHA256_PREFIX) else f"{FIDELITY_NAME}-custom-{sha[:8]}"
