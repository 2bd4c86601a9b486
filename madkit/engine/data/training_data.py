"""What the trainer reads: images to encode on the fly, or latents the latent cache encoded once.

``train.latent_cache``:
- ``"auto"`` (default): cache when the codec is not the identity (a VAE), under the default
  madkit cache folder; sources that crop at random cannot be cached and are encoded on the fly;
- ``"off"``: always encode on the fly;
- any other value: the cache root folder (and a source that cannot be cached is an error).
"""

from __future__ import annotations

import attrs
from torch.utils.data import Dataset

from madkit.engine import distributed


@attrs.frozen
class TrainingData:
    dataset: Dataset  # yields (image or latent, label)
    encoded: bool  # True: items are latents already
    note: str  # for the run's banner


def _is_identity(codec) -> bool:
    return getattr(codec, "cache_key", "") == "identity"


def training_data(experiment, codec, cfg, env: distributed.DistEnv, seed: int, progress: bool) -> TrainingData:
    """The training dataset; with caching, rank 0 encodes first and the other ranks then read."""
    source = experiment.data
    mode = cfg.latent_cache
    if mode == "off" or _is_identity(codec):
        return TrainingData(source.dataset(), False, "encoding on the fly" if not _is_identity(codec) else "")
    if mode == "auto" and getattr(source, "random_crop", False):
        return TrainingData(source.dataset(), False, "random crops: encoding on the fly, not cached")

    from madkit.engine.data.latent_cache import latents_for_source

    def build():
        return latents_for_source(
            source,
            experiment.spec.data,
            codec,
            cache_root=None if mode == "auto" else mode,
            device=env.device,
            batch_size=max(1, cfg.micro_batch or cfg.batch // env.world_size),
            num_workers=cfg.num_workers,
            seed=seed,
            progress=progress and env.is_main,
        )

    # rank 0 encodes; the others wait, then find the finished folder (a failure reaches every rank)
    built: dict[str, Dataset] = {}

    def encode_on_main() -> str:
        built["dataset"] = build()
        return str(built["dataset"].directory)

    directory = distributed.decide_on_main(env, encode_on_main)
    # the other ranks find the finished cache and read it
    dataset = built["dataset"] if "dataset" in built else build()
    return TrainingData(dataset, True, f"latents cached in {directory}")
