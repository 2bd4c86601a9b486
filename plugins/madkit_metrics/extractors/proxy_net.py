"""The proxy extractor's network, its checkpoint file, and its torch-fidelity adapter.

    uint8 [n, 3, H, W] -> resize to r x r, scale to [-1, 1]
      -> conv trunk (GroupNorm, SiLU; two stride-2 stages)   [n, 4w, r/4, r/4]
      -> global average pool = "pool" features              [n, 4w]   (what FID/KID/PRC compare)
      -> linear classifier   = "logits"                     [n, k]    (what IS reads)

GroupNorm rather than BatchNorm so an image's features never depend on what else is in its batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from madkit.atomic_files import writing_atomically
from madkit_metrics.extractors.fidelity import FidelityExtractor

CHECKPOINT_FORMAT = "madkit-proxy-extractor"
CHECKPOINT_VERSION = 1


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU())


class ProxyNet(nn.Module):
    """A small classifier whose penultimate activations serve as image features."""

    def __init__(self, num_classes: int, width: int = 32, resolution: int = 32):
        super().__init__()
        if num_classes < 2 or width < 8 or width % 8 or resolution < 8 or resolution % 4:
            raise ValueError(
                f"ProxyNet needs num_classes >= 2, width a multiple of 8 and resolution a multiple of 4 (>= 8); "
                f"got num_classes={num_classes}, width={width}, resolution={resolution}"
            )
        self.resolution = resolution
        w = width
        self.trunk = nn.Sequential(
            *(_conv(3, w), _conv(w, w)),  # r x r
            *(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w)),  # r/2
            *(_conv(2 * w, 4 * w, stride=2), _conv(4 * w, 4 * w)),  # r/4
        )
        self.head = nn.Linear(4 * w, num_classes)
        self.feature_dim = 4 * w

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [n, 3, H, W] -> float [n, 3, r, r] in [-1, 1] (antialiased resize when H, W != r)."""
        x = images_uint8.float() / 127.5 - 1.0
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed [n, 3, r, r] -> pooled features [n, 4w]."""
        return self.trunk(x).mean(dim=(-2, -1))

    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.embed(self.preprocess(images_uint8))
        return pool, self.head(pool)


# --------------------------------------------------------------------------- checkpoint file
def save_checkpoint(path: Path, net: ProxyNet, arch: dict[str, int], meta: dict[str, Any]) -> None:
    """Plain data only (tensors, str, numbers), written atomically so a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": dict(arch),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": dict(meta),
    }
    with writing_atomically(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"proxy extractor checkpoint {str(path)!r} not found") from None
    except Exception as exc:
        raise RuntimeError(f"{path}: not a readable proxy extractor checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: not a madkit proxy extractor checkpoint (format {CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise RuntimeError(
            f"{path}: proxy checkpoint version {payload.get('version')} but this madkit reads version "
            f"{CHECKPOINT_VERSION}; delete the file and the extractor retrains"
        )
    return payload


def net_from_checkpoint(payload: dict[str, Any]) -> ProxyNet:
    net = ProxyNet(**payload["arch"])
    net.load_state_dict(payload["state_dict"])
    return net.eval().requires_grad_(False)


# --------------------------------------------------------------------------- torch-fidelity adapter
class ProxyFidelityModule(FeatureExtractorBase):
    """The proxy as a torch-fidelity extractor: ``feature_extractor_weights_path`` is its checkpoint.

    Registered under each proxy's own name, so ``torch_fidelity.calculate_metrics(feature_extractor=name,
    feature_extractor_weights_path=checkpoint, ...)`` computes the same numbers madkit does.
    """

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs
    ):
        super().__init__(name, features_list)
        if not feature_extractor_weights_path:
            raise ValueError(
                f"torch-fidelity extractor {name!r} is a madkit proxy: pass its checkpoint as "
                f"feature_extractor_weights_path (madkit's proxy extractor knows it as .checkpoint)"
            )
        self.net = net_from_checkpoint(load_checkpoint(feature_extractor_weights_path))

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("pool", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "pool"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images [n, 3, H, W], got {images_uint8.dtype} {tuple(images_uint8.shape)}"
            )
        pool, logits = self.net(images_uint8)
        out = {"pool": pool, "logits": logits}
        return tuple(out[name] for name in self.features_list)


class ProxyExtractor(FidelityExtractor):
    """A trained proxy: ``checkpoint`` is its file (torch-fidelity's weights path), ``meta`` its record."""

    def __init__(self, name: str, layers: dict[str, str], device, checkpoint: Path, meta: dict[str, Any]):
        super().__init__(name, name, layers, device, {"feature_extractor_weights_path": str(checkpoint)})
        self.checkpoint = checkpoint
        self.meta = meta
