"""``unet`` embedder: the reference's per-block U-Net down-sampler and mirrored up-sampler.

A block of th x tw tokens covers a (2 th) x (2 tw) latent rectangle. The down-sampler (conv stem,
DownBlock2D with one stride-2 downsample, AttnDownBlock2D, conv to width) turns it into th x tw
tokens; the up-sampler (conv, AttnUpBlock2D with upsample, UpBlock2D, conv to latent channels) maps
tokens back, consuming the skips of the down-sampler call on the same input. Both carry a timestep
embedding Linear(1->temb) - SiLU - Linear(temb->temb) of the raw model time. The defaults reproduce
the released FFHQ configuration (64,820,480 + 144,739,460 parameters at width 1152).
"""

from __future__ import annotations

import contextlib

import attrs
import torch
from einops import rearrange
from torch import nn

from madkit_models.embedder_base import Embedder


@attrs.frozen
class UNetEmbedderConfig:
    channels: tuple[int, int] = (512, 1024)
    down_layers: int = 2
    up_layers: int = 3
    groups: int = 8
    attention_head_dim: int = 128
    temb: int = 128
    cell = 2  # one stride-2 downsample: a token covers 2x2 latent pixels
    requires_rectangular = True

    def build(self, latent_channels: int, width: int, block_shape: tuple[int, int] | None) -> UNetEmbedder:
        if block_shape is None:
            raise ValueError("the unet embedder needs rectangular blocks (use the tiles partitioner)")
        return UNetEmbedder(self, latent_channels, width, block_shape)

    def check_dims(self) -> list[str]:
        problems = []
        for c in self.channels:
            if c % self.groups:
                problems.append(f"channel count {c} is not divisible by groups {self.groups}")
        if self.channels[1] % self.attention_head_dim:
            problems.append(f"channels[1] {self.channels[1]} not divisible by attention_head_dim {self.attention_head_dim}")
        return problems


def _time_mlp(temb: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, temb, bias=False), nn.SiLU(), nn.Linear(temb, temb, bias=False))


def _diffusers_blocks():
    # imported on first build: diffusers costs seconds to import, and listing plugins needs none of it
    from diffusers.models.unets import unet_2d_blocks

    return unet_2d_blocks


def _embed_time(mlp: nn.Module, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The raw timestep through Linear(1 -> temb) in fp32: under bf16 autocast 997, 998 and 999 would
    round to 996, 1000 and 1000."""
    device = like.device.type
    off = torch.autocast(device, enabled=False) if device in ("cpu", "cuda") else contextlib.nullcontext()
    with off:
        return mlp(t[:, None].to(mlp[0].weight.dtype)).to(like.dtype)


class UNetDown(nn.Module):
    def __init__(self, cfg: UNetEmbedderConfig, latent_channels: int, width: int):
        super().__init__()
        blocks = _diffusers_blocks()
        c0, c1 = cfg.channels
        common = dict(temb_channels=cfg.temb, num_layers=cfg.down_layers, resnet_groups=cfg.groups)
        self.time = _time_mlp(cfg.temb)
        self.conv_in = nn.Conv2d(latent_channels, c0, 3, padding=1)
        self.block1 = blocks.DownBlock2D(in_channels=c0, out_channels=c0, add_downsample=True, downsample_padding=1, **common)
        self.block2 = blocks.AttnDownBlock2D(
            in_channels=c0, out_channels=c1, attention_head_dim=cfg.attention_head_dim, downsample_type=None, **common
        )
        self.conv_out = nn.Conv2d(c1, width, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        """x [N, c, H, W], t [N] -> features [N, d, H/2, W/2] and the skip tensors (stem first)."""
        temb = _embed_time(self.time, t, x)
        h = self.conv_in(x)
        skips = [h]
        h, states = self.block1(h, temb)
        skips += states
        h, states = self.block2(h, temb)
        skips += states
        return self.conv_out(h), skips


class UNetUp(nn.Module):
    def __init__(self, cfg: UNetEmbedderConfig, latent_channels: int, width: int):
        super().__init__()
        blocks = _diffusers_blocks()
        c0, c1 = cfg.channels
        common = dict(temb_channels=cfg.temb, num_layers=cfg.up_layers, resnet_groups=cfg.groups)
        self.time = _time_mlp(cfg.temb)
        self.conv_in = nn.Conv2d(width, c1, 3, padding=1)
        self.block1 = blocks.AttnUpBlock2D(
            in_channels=c0, prev_output_channel=c1, out_channels=c1, attention_head_dim=cfg.attention_head_dim,
            upsample_type="conv", **common,
        )
        self.block2 = blocks.UpBlock2D(in_channels=c0, prev_output_channel=c1, out_channels=c0, add_upsample=False, **common)
        self.conv_out = nn.Conv2d(c0, latent_channels, 3, padding=1)
        self.layers_per_block = cfg.up_layers

    def forward(self, h: torch.Tensor, t: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        temb = _embed_time(self.time, t, h)
        h = self.conv_in(h)
        n = self.layers_per_block
        # each up block consumes as many skips as it has ResNets, from the end of the list
        h = self.block1(h, tuple(skips[-n:]), temb)
        h = self.block2(h, tuple(skips[-2 * n : -n]), temb)
        return self.conv_out(h)


class UNetEmbedder(Embedder):
    def __init__(self, cfg: UNetEmbedderConfig, latent_channels: int, width: int, block_shape: tuple[int, int]):
        super().__init__()
        if 1 + cfg.down_layers + 1 + cfg.down_layers != 2 * cfg.up_layers:
            raise ValueError(
                f"unet embedder: {cfg.down_layers} down layers give {2 * cfg.down_layers + 2} skips but "
                f"{cfg.up_layers} up layers per block consume {2 * cfg.up_layers}; use up_layers = down_layers + 1"
            )
        self.c, self.block_shape = latent_channels, tuple(block_shape)
        self.cell_dim = latent_channels * 4
        self.down = UNetDown(cfg, latent_channels, width)
        self.up = UNetUp(cfg, latent_channels, width)

    def _to_image(self, cells: torch.Tensor) -> torch.Tensor:
        th, tw = self.block_shape
        return rearrange(cells, "N (th tw) (c p q) -> N c (th p) (tw q)", th=th, tw=tw, p=2, q=2)

    def embed(self, cells: torch.Tensor, t: torch.Tensor):
        feats, skips = self.down(self._to_image(cells), t)
        return rearrange(feats, "N d th tw -> N (th tw) d"), skips

    def unembed(self, tokens: torch.Tensor, t: torch.Tensor, aux) -> torch.Tensor:
        th, tw = self.block_shape
        img = self.up(rearrange(tokens, "N (th tw) d -> N d th tw", th=th, tw=tw), t, aux)
        return rearrange(img, "N c (th p) (tw q) -> N (th tw) (c p q)", p=2, q=2)

    def blank_aux(self, aux):
        return [torch.zeros_like(s) for s in aux]
