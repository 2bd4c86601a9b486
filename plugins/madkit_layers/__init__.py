"""Built-in layer types: the dual-stream decoder layer (kinds ar, diffusion, local-diffusion) and the
attention-free adaLN MLP denoising layer (kind mlp), plus the masks they use and the 2D RoPE kinds
(axial, madformer-reference)."""
