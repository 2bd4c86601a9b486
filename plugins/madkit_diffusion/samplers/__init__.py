"""Inference-side samplers, each backed by a real diffusers scheduler."""
