"""``proxy``: an offline extractor that carries meaning for the data at hand.

A small CNN is trained on a data source's labels (OpenMoji's emoji groups, say) and cached on disk
under a name derived from everything that shapes it: the data config, the architecture, the
training recipe. Its penultimate activations feed FID/KID/PRC and its logits the IS. Results are
labelled with that name ("openmoji-proxy-1a2b3c4d"), never as Inception numbers; compare proxy
figures only with figures of the same name.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from madkit.cache import cache_root
from madkit.logs import get_logger
from madkit.spec import slot
from madkit.validators import at_least

logger = get_logger(__name__)

if TYPE_CHECKING:
    from madkit_metrics.extractors.proxy_net import ProxyExtractor

# The network and torch-fidelity are imported inside build(): every madkit command loads this plugin.

# Bump when the network or the training recipe changes: cached proxies trained differently must not be reused.
RECIPE_VERSION = 1
LAYERS = {"pool": "pool", "logits": "logits"}


def _multiple_of(step: int):
    def check(_inst, attribute, value):
        if value <= 0 or value % step:
            raise ValueError(f"must be a positive multiple of {step}, got {value}")

    return check


def default_cache_dir() -> Path:
    """``extractors/`` in madkit's cache folder (see madkit.cache)."""
    return cache_root() / "extractors"


@attrs.frozen
class ProxyConfig:
    # the labelled data to learn from; None = the data of the evaluation that builds it
    data: slot("data") | None = None  # type: ignore[valid-type]
    width: int = attrs.field(default=16, validator=_multiple_of(8))  # features are 4 * width wide
    resolution: int = attrs.field(default=32, validator=_multiple_of(4))  # images are resized to this first
    epochs: int = attrs.field(default=12, validator=at_least(1))
    batch: int = attrs.field(default=128, validator=at_least(1))
    lr: float = 2e-3
    seed: int = 0
    max_images: int = attrs.field(default=20000, validator=at_least(0))  # seeded subset; 0 = all
    cache_dir: str = ""  # "" = default_cache_dir()
    device: str = "auto"

    def key(self, data: Any) -> dict[str, Any]:
        """Everything that shapes the trained network, as JSON-able plain data (not where it is cached
        or run). Stored in the checkpoint and compared on load."""
        if not attrs.has(type(data)):
            raise TypeError(f"the proxy extractor needs a data *config* (an attrs class), got {type(data).__name__}")
        key = {
            "recipe": RECIPE_VERSION,
            "data": {"class": f"{type(data).__module__}.{type(data).__qualname__}", **attrs.asdict(data)},
            **{f: getattr(self, f) for f in ("width", "resolution", "epochs", "batch", "lr", "seed", "max_images")},
        }
        return json.loads(json.dumps(key, default=str))  # tuples -> lists, paths -> str: as it reads back

    def name_for(self, data: Any) -> str:
        digest = hashlib.sha256(json.dumps(self.key(data), sort_keys=True).encode()).hexdigest()
        label = re.sub(r"[^a-z0-9]", "", type(data).__name__.removesuffix("Config").lower()) or "data"
        return f"{label}-proxy-{digest[:8]}"

    def build(self, data: Any = None) -> ProxyExtractor:
        """Load the cached proxy for this config and data, training it first if there is none."""
        from madkit_metrics.extractors.fidelity import ensure_registered, resolve_device
        from madkit_metrics.extractors.proxy_net import ProxyExtractor, ProxyFidelityModule, load_checkpoint

        data = self.data if self.data is not None else data
        if data is None:
            raise ValueError(
                "the proxy extractor learns from labelled data: give it a data table "
                '(extractor.data = {kind = "openmoji", ...}) or evaluate against a data-source reference'
            )
        name = self.name_for(data)
        path = Path(self.cache_dir or default_cache_dir()) / f"{name}.pt"
        device = resolve_device(self.device)
        if path.exists():
            meta = load_checkpoint(path)["meta"]
            if meta.get("key") != self.key(data):
                raise RuntimeError(f"{path} was trained for a different configuration (hash collision?); delete it")
        else:
            meta = self._train(data, name, path, device)
        ensure_registered(name, ProxyFidelityModule)
        return ProxyExtractor(name, LAYERS, device, path, meta)

    def _train(self, data: Any, name: str, path: Path, device) -> dict[str, Any]:
        from madkit_metrics.extractors.proxy_net import save_checkpoint
        from madkit_metrics.extractors.proxy_train import train_proxy

        def log(message: str) -> None:
            logger.info(f"proxy extractor {name}: {message}")

        net, stats = train_proxy(
            data.build(),
            width=self.width,
            resolution=self.resolution,
            epochs=self.epochs,
            batch=self.batch,
            lr=self.lr,
            seed=self.seed,
            max_images=self.max_images,
            device=device,
            log=log,
        )
        meta = {"name": name, "key": self.key(data), **stats}
        arch = {"num_classes": stats["num_classes"], "width": self.width, "resolution": self.resolution}
        save_checkpoint(path, net, arch, meta)
        log(f"held-out accuracy {stats['val_accuracy']:.3f} (train {stats['train_accuracy']:.3f}); cached at {path}")
        return meta
