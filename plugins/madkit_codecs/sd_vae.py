"""``sd-vae``: images <-> latents through a diffusers ``AutoencoderKL`` (default: SD's ft-MSE VAE).

latent = (posterior mean or sample - shift_factor) * scaling_factor, so latents are roughly unit
variance for diffusion (SD-VAE: shift 0, scale 0.18215). The latent shape comes from the config
(``latent_channels``, ``downsample``), not the weights, so a spec validates without loading
anything; after loading, the VAE is checked against those numbers.

Weights come from ``path``: a local folder written by ``save_pretrained`` or a Hugging Face hub id
(which needs the network once, or the hub cache). The VAE is frozen: no gradients, eval mode.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import attrs
import torch

from madkit.interfaces import Codec, SpecProblem
from madkit.validators import at_least, positive

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@attrs.frozen
class SDVAEConfig:
    path: str = "stabilityai/sd-vae-ft-mse"  # local save_pretrained folder or hub id
    subfolder: str = ""  # e.g. "vae" inside a full pipeline folder
    scaling_factor: float = attrs.field(default=0.0, validator=at_least(0, "0 = the VAE config's"))  # 0 = the VAE config's
    downsample: int = attrs.field(default=8, validator=positive)  # spatial factor f: latent side = side / f
    latent_channels: int = attrs.field(default=4, validator=positive)
    dtype: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", *DTYPES)))  # auto: bf16 on GPU
    posterior: str = attrs.field(default="mean", validator=attrs.validators.in_(("mean", "sample")))
    slicing: bool = True  # encode/decode one image at a time: bounds memory at 1024px

    def build(self) -> SDVAECodec:
        return SDVAECodec(self)

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        _, h, w = image_shape
        return (self.latent_channels, h // self.downsample, w // self.downsample)

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]:
        if (shape := context.get("image_shape")) is not None:
            _, h, w = shape
            if h % self.downsample or w % self.downsample:
                yield SpecProblem(
                    "downsample",
                    f"the {h}x{w} images do not divide by the VAE's factor {self.downsample}; "
                    f"choose a data resolution that is a multiple of {self.downsample}",
                )
        if context.get("check_resources", True) and (problem := weights_problem(self.path, self.subfolder)):
            yield SpecProblem("path", problem)


def _looks_local(path: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else with a separator is meant as a folder."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def weights_problem(path: str, subfolder: str) -> str | None:
    """Why loading ``path`` is bound to fail, found without loading; None when it may work."""
    local = Path(path).expanduser()
    if local.exists() or _looks_local(path):
        folder = local / subfolder if subfolder else local
        if not (folder / "config.json").is_file():
            return (
                f"{str(folder)!r} is not a saved VAE (no config.json there); set codec.path to a folder "
                f"written by AutoencoderKL.save_pretrained (and codec.subfolder if it is inside a pipeline)"
            )
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        try:
            cached = try_to_load_from_cache(path, f"{subfolder}/config.json" if subfolder else "config.json")
        except ValueError:  # not a valid repo id either
            return f"{path!r} is neither a folder nor a hub id; set codec.path to a folder written by save_pretrained"
        if not isinstance(cached, str):
            return (
                f"hub id {path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it once with network access, or set codec.path to a local folder "
                f"(AutoencoderKL.save_pretrained)"
            )
    return None


def load_vae(config: SDVAEConfig):
    """The AutoencoderKL the config names, in fp32 on the CPU; a clear error when it cannot be loaded."""
    from diffusers import AutoencoderKL

    if (problem := weights_problem(config.path, config.subfolder)) is not None:
        raise OSError(f"codec.path: {problem}")
    try:
        vae = AutoencoderKL.from_pretrained(
            config.path, subfolder=config.subfolder or None, low_cpu_mem_usage=False
        )
    except (OSError, ValueError) as exc:
        raise OSError(
            f"codec.path = {config.path!r}: cannot load an AutoencoderKL ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}). "
            f"Offline, a hub id only loads from the Hugging Face cache: set codec.path to a local folder "
            f"written by save_pretrained (and codec.subfolder if the VAE is inside a pipeline folder)"
        ) from exc
    found = {
        "latent_channels": vae.config.latent_channels,
        "downsample": 2 ** (len(vae.config.block_out_channels) - 1),
    }
    for key, value in found.items():
        if getattr(config, key) != value:
            raise ValueError(
                f"codec.{key} = {getattr(config, key)} but the VAE at {config.path!r} has {key} = {value}; "
                f"set codec.{key} = {value} (the model is sized from it)"
            )
    return vae.requires_grad_(False).eval()


class SDVAECodec(Codec):
    """Encode [n, 3, H, W] in [-1, 1] <-> [n, c, H/f, W/f] scaled latents (float32 out)."""

    def __init__(self, config: SDVAEConfig):
        self.config = config
        self.vae = load_vae(config)
        vae_config = self.vae.config
        self.scale = config.scaling_factor or float(vae_config.scaling_factor)
        self.shift = float(getattr(vae_config, "shift_factor", None) or 0.0)
        if config.slicing:
            self.vae.enable_slicing()
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def to(self, device) -> SDVAECodec:
        """Moves the VAE; ``dtype = "auto"`` picks bf16 on a GPU and fp32 elsewhere."""
        self.device = torch.device(device)
        if self.config.dtype != "auto":
            self.dtype = DTYPES[self.config.dtype]
        else:
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if self.vae.dtype != self.dtype:
            self.vae.to(dtype=self.dtype)  # (diffusers notes every dtype cast, so cast only on change)
        self.vae.to(self.device)
        self.__dict__.pop("cache_key", None)  # the dtype is part of it
        return self

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return self.config.latent_shape(image_shape)

    @torch.no_grad()  # not inference_mode: latents feed a model that trains with autograd
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] in [-1, 1] -> [n, c, H/f, W/f] float32."""
        posterior = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        z = posterior.mean if self.config.posterior == "mean" else posterior.sample()
        return ((z.float() - self.shift) * self.scale).to(images.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[n, c, h, w] -> [n, 3, h*f, w*f] float32 in [-1, 1]."""
        z = latents.float() / self.scale + self.shift
        images = self.vae.decode(z.to(self.device, self.dtype)).sample
        return images.float().clamp_(-1.0, 1.0).to(latents.device)

    @cached_property
    def cache_key(self) -> str:
        """Identifies the latents: where the weights came from, their fingerprint and how they are used."""
        fingerprint = hashlib.sha256()
        for name, tensor in sorted(self.vae.state_dict().items()):
            t = tensor.detach().double()
            fingerprint.update(f"{name}:{tuple(t.shape)}:{t.sum().item():.10e}:{t.square().sum().item():.10e}".encode())
        facts = {
            "path": self.config.path,
            "subfolder": self.config.subfolder,
            "scale": self.scale,
            "shift": self.shift,
            "posterior": self.config.posterior,
            "dtype": str(self.dtype),
            "weights": fingerprint.hexdigest()[:16],
        }
        return "sd-vae:" + json.dumps(facts, sort_keys=True)
