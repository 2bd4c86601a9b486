"""Registration of the built-in schedules and samplers (loaded through the ``madkit.plugins`` entry point).

Importing this module does not import diffusers: samplers import their scheduler when built.
"""

from madkit.hookspecs import hookimpl
from madkit_diffusion.samplers.ddim import DDIMSamplerConfig
from madkit_diffusion.samplers.ddpm import DDPMSamplerConfig
from madkit_diffusion.samplers.dpm_solver import DPMSolverSamplerConfig
from madkit_diffusion.samplers.euler import EulerSamplerConfig
from madkit_diffusion.schedules.cosine import CosineConfig
from madkit_diffusion.schedules.ddpm_linear import DDPMLinearConfig
from madkit_diffusion.schedules.flow import FlowConfig


@hookimpl
def madkit_register(registry):
    registry.register("schedule", "ddpm-linear", DDPMLinearConfig)
    registry.register("schedule", "cosine", CosineConfig)
    registry.register("schedule", "flow", FlowConfig)
    registry.register("sampler", "ddpm", DDPMSamplerConfig)
    registry.register("sampler", "ddim", DDIMSamplerConfig)
    registry.register("sampler", "dpm-solver++", DPMSolverSamplerConfig)
    registry.register("sampler", "euler", EulerSamplerConfig)
