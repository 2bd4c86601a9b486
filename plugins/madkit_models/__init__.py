"""Built-in models: the MADFormer assembly and its embedders (patch, unet)."""
