"""Built-in diffusion plugin: noise schedules (training side) and samplers (inference side).

Schedules (``schedules/``, one algorithm per file):
    ddpm-linear  1000-step DDPM, betas linear in [1e-4, 0.02] (the MADFormer reference)
    cosine       improved-DDPM cosine alpha-bar
    flow         rectified flow / flow matching, x_t = (1 - t) x0 + t noise, velocity target

Samplers (``samplers/``, one diffusers scheduler per file):
    ddpm, ddim, dpm-solver++   for the DDPM-family schedules
    euler                      for the flow schedule

Both sides read the same numbers: a sampler configures its diffusers scheduler from the schedule's
``diffusers_config()`` (the exact trained betas, not a name), so training and sampling cannot drift.
"""
