"""Built-in codecs: ``identity`` (pixel space) and ``sd-vae`` (a diffusers AutoencoderKL)."""
