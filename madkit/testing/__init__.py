"""Contract test suites for plugin authors: subclass one in your own tests to get its checks.

    from madkit.testing import PartitionerContract

    class TestHilbert(PartitionerContract):
        def valid_cases(self): ...  # a hypothesis strategy of PartitionCase(grid, config)
"""

from madkit.testing.data import CodecContract, DataSourceContract  # noqa: F401
from madkit.testing.diffusion import ScheduleContract, exact_gaussian_denoiser  # noqa: F401
from madkit.testing.partitioner import (  # noqa: F401
    InvalidPartitionCase,
    PartitionCase,
    PartitionerContract,
    divisors,
    grids,
    non_divisors,
)
from madkit.testing.rope import InvalidRopeCase, RopeCase, RopeContract, grid_positions, rope_cases  # noqa: F401
from madkit.testing.sampler import SamplerContract  # noqa: F401
