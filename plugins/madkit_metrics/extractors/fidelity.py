"""madkit's ``FeatureExtractor`` backed by a torch-fidelity feature-extractor module.

torch-fidelity keeps a process-wide name -> class registry and builds modules by name; madkit
builds the module once per extractor and reuses it for every image set it embeds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from madkit.interfaces import FeatureExtractor


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"extractor device {device!r} asked for CUDA, but torch sees no CUDA device; use 'cpu'")
    return resolved


def ensure_registered(name: str, cls: type[FeatureExtractorBase]) -> None:
    """Register ``cls`` with torch-fidelity under ``name`` unless that exact pairing exists already."""
    old = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if old is None:
        register_feature_extractor(name, cls)
    elif old is not cls:
        raise RuntimeError(
            f"torch-fidelity already has a feature extractor named {name!r} ({old.__module__}.{old.__qualname__}); "
            f"madkit cannot register {cls.__module__}.{cls.__qualname__} under the same name"
        )


class FidelityExtractor(FeatureExtractor):
    """Runs torch-fidelity extractor ``fidelity_name`` and renames its layers to madkit roles.

    ``layers`` maps role -> torch-fidelity feature name, e.g. {"pool": "2048", "logits": "logits_unbiased"}.
    ``options`` are the keyword arguments torch-fidelity passes to the module's constructor
    (``feature_extractor_weights_path`` ...).
    """

    def __init__(
        self,
        name: str,
        fidelity_name: str,
        layers: dict[str, str],
        device: torch.device,
        options: dict[str, Any] | None = None,
    ):
        self.name = name
        self.fidelity_name = fidelity_name
        self.roles = tuple(layers)
        self._layers = dict(layers)
        self.device = device
        # cuda=False: torch-fidelity's flag means "the default CUDA device"; madkit places the module itself.
        self.module: FeatureExtractorBase = create_feature_extractor(
            fidelity_name, list(layers.values()), cuda=False, verbose=False, **(options or {})
        ).to(device)

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(
                f"extractor {self.name!r} takes uint8 images [n, 3, H, W], got {images_uint8.dtype} "
                f"{tuple(images_uint8.shape)}"
            )
        out = self.module(images_uint8.to(self.device))
        by_layer = self.module.convert_features_tuple_to_dict(out)
        return {role: by_layer[layer].float().cpu() for role, layer in self._layers.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, roles={self.roles}, device={self.device})"
