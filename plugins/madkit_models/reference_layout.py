"""Where each MADFormer weight lives in the authors' released checkpoint, and the training arguments
that checkpoint stores for this geometry.

The released model is a two-tower MADFormer with the ``unet`` embedder (FFHQ-1024: 797 tensors,
1,300,243,844 values). Every tensor maps one to one, same values in the same order; only the BOI
block carries a leading 1 there ([1, B, d] vs [B, d]). Tower index i is 0 for the clean tower and 1
for the noised tower:

    boi                                   boi_block
    layers.L.<tower>.attn_norm            blocks.L.input_layernorm_list.i
    layers.L.<tower>.mlp_norm             blocks.L.post_attention_layernorm_list.i
    layers.L.<tower>.{qkv,q_norm,k_norm}  blocks.L.self_attn.{qkv_list,q_norm_list,k_norm_list}.i
    layers.L.<tower>.out                  blocks.L.self_attn.proj_list.i
    layers.L.<tower>.{gate,up,down}       blocks.L.mlp_list.i.{gate_proj,up_proj,down_proj}
    embedder.down.time.{0,2}              downsampler.time_embedding.linear_{1,2}
    embedder.down.block{1,2}              downsampler.down_blocks.{0,1}   (diffusers blocks, same insides)
    embedder.up.block{1,2}                upsampler.up_blocks.{0,1}
    embedder.{down,up}.{conv_in,conv_out} {downsampler,upsampler}.{conv_in,conv_out}
"""

from __future__ import annotations

import re

from madkit.interfaces import ReferenceLayout

_TOWERS = {"clean": 0, "noised": 1}
_TOWER_PARTS = {
    "attn_norm": "input_layernorm_list.{i}",
    "mlp_norm": "post_attention_layernorm_list.{i}",
    "qkv": "self_attn.qkv_list.{i}",
    "q_norm": "self_attn.q_norm_list.{i}",
    "k_norm": "self_attn.k_norm_list.{i}",
    "out": "self_attn.proj_list.{i}",
    "gate": "mlp_list.{i}.gate_proj",
    "up": "mlp_list.{i}.up_proj",
    "down": "mlp_list.{i}.down_proj",
}
_EMBEDDER_PARTS = {
    "down.time.0": "downsampler.time_embedding.linear_1",
    "down.time.2": "downsampler.time_embedding.linear_2",
    "down.conv_in": "downsampler.conv_in",
    "down.block1": "downsampler.down_blocks.0",
    "down.block2": "downsampler.down_blocks.1",
    "down.conv_out": "downsampler.conv_out",
    "up.time.0": "upsampler.time_embedding.linear_1",
    "up.time.2": "upsampler.time_embedding.linear_2",
    "up.conv_in": "upsampler.conv_in",
    "up.block1": "upsampler.up_blocks.0",
    "up.block2": "upsampler.up_blocks.1",
    "up.conv_out": "upsampler.conv_out",
}
_LAYER = re.compile(r"^layers\.(\d+)\.(clean|noised)\.([a-z_]+)\.(.+)$")


def _unsupported(model) -> str | None:
    from madkit_models.embedder_unet import UNetEmbedder

    cfg = model.cfg
    if cfg.shared_towers or model.single_stream:
        return "the released checkpoint has two towers and a clean stream (shared_towers = false, context with clean)"
    if model.class_embed is not None:
        return "the released checkpoint is unconditional (conditioning = 'none')"
    if not isinstance(model.embedder, UNetEmbedder):
        return "the released checkpoint uses the unet embedder"
    if any(not hasattr(layer, "clean") for layer in model.layers):
        return "the released checkpoint has decoder layers only (no mlp denoising layers)"
    return None


def reference_name(name: str) -> str:
    """The released checkpoint's name for one of this model's state-dict names."""
    if name == "boi":
        return "boi_block"
    if match := _LAYER.match(name):
        layer, tower, part, rest = match.groups()
        return f"blocks.{layer}.{_TOWER_PARTS[part].format(i=_TOWERS[tower])}.{rest}"
    if name.startswith("embedder."):
        inner = name.removeprefix("embedder.")
        for own, theirs in _EMBEDDER_PARTS.items():
            if inner.startswith(own + "."):
                return theirs + inner[len(own) :]
    raise KeyError(f"no released-checkpoint name for MADFormer tensor {name!r}")


def reference_layout(model) -> ReferenceLayout:
    if (why := _unsupported(model)) is not None:
        raise NotImplementedError(f"this model has no counterpart in the released checkpoint: {why}")
    tensors = {}
    for name, tensor in model.state_dict().items():
        shape = (1, *tensor.shape) if name == "boi" else tuple(tensor.shape)
        tensors[reference_name(name)] = (name, shape)
    cfg, (c, h, w) = model.cfg, model.latent_shape
    blocks = "model.partitioner (number of blocks T)"
    args = {
        "diff_depth": (cfg.diffusion_depth, "model.diffusion_depth"),
        "ar_len": (model.T, blocks),
        "block_size": (model.B, "model.partitioner (tokens per block B)"),
        "pre_downsample_block_size": (model.B * model.cell**2, "model.partitioner (latent pixels per block)"),
        "spatial_len": (h * w // model.cell**2, "the token grid (latent size / embedder cell)"),
        "vae_latent_size": (c, "codec (latent channels)"),
        "single_tower": (False, "model.shared_towers"),
    }
    return ReferenceLayout(tensors, args)
