"""``inception``: torch-fidelity's inception-v3-compat, the network behind published FID numbers.

Weights: the ``weights`` key (or ``$MADKIT_INCEPTION_WEIGHTS``) names a local copy for offline
clusters; otherwise they are downloaded once into the torch hub cache (the file name carries the
first digits of its sha256, which the download checks). The extractor is named "inception-v3-compat"
only when the weights are the standard file (its sha256 starts with those digits); other weights get
a name of their own so their FID is never reported as Inception FID.

Safety: torch-fidelity reads a weights file with ``torch.load(weights_only=False)``, which runs any
code a pickle carries. madkit never lets it: it reads the file itself with ``weights_only=True``
(plain tensors only; a file carrying anything else is refused before any of it runs), checks that
it is a state dict of tensors, and hands torch-fidelity a copy of just those tensors.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from madkit.errors import UserError
from madkit.interfaces import SpecProblem

if TYPE_CHECKING:
    from madkit_metrics.extractors.fidelity import FidelityExtractor

# torch-fidelity is imported inside functions: it takes ~1.5 s and every madkit command loads this plugin.
FIDELITY_NAME = "inception-v3-compat"
STANDARD_SHA256_PREFIX = "6726825d"  # torch hub convention: the file name carries its sha256 prefix
WEIGHTS_ENV = "MADKIT_INCEPTION_WEIGHTS"
# torch-fidelity's layers: 2048-d pool3 for FID/KID/PRC; logits without the bias for IS, as torch-fidelity does
LAYERS = {"pool": "2048", "logits": "logits_unbiased"}


class ExtractorUnavailable(UserError, RuntimeError):
    """The extractor's weights cannot be obtained or are refused; the message says how to provide them."""


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
            name, state = _name_for_weights(Path(path)), read_weights(Path(path))
        else:
            name, state = FIDELITY_NAME, _download_weights()
        device = resolve_device(self.device)
        with tempfile.TemporaryDirectory(prefix="madkit-inception-") as private:
            # torch-fidelity only takes a path, and unpickles it: give it a file of bare tensors madkit wrote
            checked = Path(private) / "weights.pth"
            torch.save(state, checked)
            options = {"feature_extractor_weights_path": str(checked)}
            try:
                return FidelityExtractor(name, FIDELITY_NAME, LAYERS, device, options)
            except Exception as exc:  # load_state_dict fails in many ways on the wrong tensors
                what = repr(path) if path else "the downloaded file"
                raise ExtractorUnavailable(
                    f"{what} does not hold torch-fidelity's inception-v3-compat weights ({type(exc).__name__}: "
                    f"{str(exc).strip()[:300]}); {_how_to_provide()}"
                ) from exc


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A weights file as a state dict of tensors, read without running any code it may carry."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only stops at anything that is not plain data
        raise ExtractorUnavailable(
            f"{str(path)!r} does not hold torch-fidelity's inception-v3-compat weights as plain tensors, so it was "
            f"refused without running anything in it (torch's weights-only reader: {_unpickler_reason(exc)}); "
            f"{_how_to_provide()}"
        ) from None
    except Exception as exc:  # noqa: BLE001  (a truncated zip, a text file ...: all one answer)
        raise ExtractorUnavailable(
            f"{str(path)!r} does not hold torch-fidelity's inception-v3-compat weights (unreadable: "
            f"{type(exc).__name__}: {str(exc).strip()[:200]}); {_how_to_provide()}"
        ) from None
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ExtractorUnavailable(
            f"{str(path)!r} does not hold torch-fidelity's inception-v3-compat weights (not a state dict of "
            f"tensors); {_how_to_provide()}"
        )
    return state


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's long weights-only message that says what it stopped at."""
    text = str(exc)
    after = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
    return (after[0] if after else text.strip().splitlines()[0])[:200]


def _download_weights() -> dict[str, torch.Tensor]:
    """The standard weights from the torch hub cache, downloading them (hash-prefix checked) when absent."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    try:
        return torch.hub.load_state_dict_from_url(
            URL_INCEPTION_V3, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except pickle.UnpicklingError as exc:
        raise ExtractorUnavailable(
            f"the cached Inception weights under {torch.hub.get_dir()} are not plain tensors and were refused "
            f"without running anything in them ({_unpickler_reason(exc)}); delete that file. {_how_to_provide()}"
        ) from None
    except OSError as exc:  # urllib's URLError is an OSError: the download failed
        raise ExtractorUnavailable(
            f"Inception weights could not be downloaded ({type(exc).__name__}: {exc}); this machine "
            f"looks offline. To provide them: {_how_to_provide()}"
        ) from exc


def _name_for_weights(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    return FIDELITY_NAME if sha.startswith(STANDARD_SHA256_PREFIX) else f"{FIDELITY_NAME}-custom-{sha[:8]}"
