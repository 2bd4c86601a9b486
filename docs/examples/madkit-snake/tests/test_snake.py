"""madkit-snake's tests: the madkit partitioner contract, plus what makes the snake order itself."""

from hypothesis import strategies as st
from madkit_snake import SnakeConfig

from madkit.registry import Registry
from madkit.testing import InvalidPartitionCase, PartitionCase, PartitionerContract, divisors, grids, non_divisors


class TestSnake(PartitionerContract):
    def valid_cases(self):
        def case(grid):
            lengths = st.sampled_from(divisors(grid[0] * grid[1]))
            return lengths.map(lambda n: PartitionCase(grid, SnakeConfig(n)))

        return grids().flatmap(case)

    def invalid_cases(self):
        def case(grid):
            h, w = grid
            lengths = st.sampled_from([0, -1, *non_divisors(h * w)])
            # the error must name the offending value and the grid it does not fit
            return lengths.map(
                lambda n: InvalidPartitionCase(grid, SnakeConfig(n), mentions=(f"block_len {n}", f"{h}x{w}"))
            )

        return grids().flatmap(case)


def test_odd_rows_run_right_to_left():
    assert SnakeConfig(3).build(grid=(2, 3)).order.tolist() == [[0, 1, 2], [5, 4, 3]]


def test_consecutive_cells_are_grid_neighbours():
    p = SnakeConfig(4).build(grid=(4, 6))
    steps = p.positions.flatten(0, 1).diff(dim=0).abs().sum(-1)  # Manhattan distance of each move
    assert (steps == 1).all()


def test_registered_through_the_entry_point():
    registration = Registry.load().get("partitioner", "snake")
    assert (registration.plugin, registration.distribution) == ("snake", "madkit-snake")
