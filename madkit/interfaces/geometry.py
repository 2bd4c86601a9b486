"""Where tokens are: the partitioner (grid -> ordered blocks) and the rotary position embedding."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property

import torch


class Partitioner(ABC):
    """Orders the cells of an h x w token grid into t blocks of b cells.

    Built with ``grid=(h, w)``. Subclasses define ``_order()``; everything else derives from it.
    ``partition`` and ``merge`` are exact inverses.
    """

    def __init__(self, grid: tuple[int, int]):
        self.grid = (int(grid[0]), int(grid[1]))

    @abstractmethod
    def _order(self) -> torch.Tensor:
        """Long tensor [t, b]: flat raster cell index (row * w + col) of each block's cells."""

    @property
    @abstractmethod
    def block_shape(self) -> tuple[int, int] | None:
        """(rows, cols) when every block is a rectangle laid out raster inside, else None."""

    @property
    def rectangular(self) -> bool:
        return self.block_shape is not None

    @cached_property
    def order(self) -> torch.Tensor:
        order = self._order()
        if order.device.type == "meta":  # made inside torch.device("meta") (a model built without memory):
            with torch.device("cpu"):  # an index table needs its values, and partition() moves it anyway
                order = self._order()
        return order

    @property
    def num_blocks(self) -> int:
        return self.order.shape[0]

    @property
    def block_size(self) -> int:
        return self.order.shape[1]

    @cached_property
    def positions(self) -> torch.Tensor:
        """Long tensor [t, b, 2]: (row, col) of every cell on the original grid."""
        w = self.grid[1]
        return torch.stack((self.order // w, self.order % w), dim=-1)

    @cached_property
    def _inverse(self) -> torch.Tensor:
        flat = self.order.flatten()
        inv = torch.empty_like(flat)
        inv[flat] = torch.arange(flat.numel())
        return inv

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """[..., c, h, w] -> [..., t, b, c]."""
        h, w = self.grid
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"partitioner built for a {h}x{w} grid got a tensor of shape {tuple(x.shape)}")
        flat = x.flatten(-2)[..., self.order.to(x.device).flatten()]  # [..., c, t*b]
        return flat.unflatten(-1, tuple(self.order.shape)).movedim(-3, -1)

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        """[..., t, b, c] -> [..., c, h, w]; the exact inverse of ``partition``."""
        t, b = self.order.shape
        if tuple(blocks.shape[-3:-1]) != (t, b):
            raise ValueError(f"expected [..., {t}, {b}, c] blocks, got shape {tuple(blocks.shape)}")
        flat = blocks.movedim(-1, -3).flatten(-2)[..., self._inverse.to(blocks.device)]
        return flat.unflatten(-1, self.grid)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate) -> torch.Tensor:
    """The one rotary formula every RoPE kind shares: ``x * cos + rotate(x) * sin``, computed in fp32
    and cast back to x's dtype (bf16 angles would blur positions). x [..., L, e]; cos/sin [L, e]."""
    x32 = x.float()
    return (x32 * cos + rotate(x32) * sin).to(x.dtype)


class RotaryEmbedding(ABC):
    """Rotary position embedding (RoPE) of tokens on an h x w token grid.

    Built with ``grid=(h, w)`` (the token grid) and ``head_dim=e``. A kind supplies two things, and
    attention applies them to queries and keys with ``apply_rotary``:

    - ``tables(positions)``: (cos, sin), each float32 [L, e], for the (row, col) of L tokens. A row
      depends only on its own token's position: the tables of one block are exactly those rows of
      the whole grid's tables, so the KV-cached path, the uncached path and training see the same
      numbers, and a noised block gets exactly the rows of its clean twin (both sit at one place).
    - ``rotate(x)``: how head dims pair up, a signed permutation of the last dim with
      ``rotate(rotate(x)) == -x`` (rotate-half pairs dim i with dim i + e/2; madkit's axial kind
      pairs within each axis' half). Linear and elementwise up to the permutation, so attention
      kernels can fuse ``x * cos + rotate(x) * sin`` with the q/k norms.

    Tables are computed once, when the model is built, and are shared by every head.
    """

    def __init__(self, grid: tuple[int, int], head_dim: int):
        self.grid = (int(grid[0]), int(grid[1]))
        self.head_dim = int(head_dim)

    @abstractmethod
    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions long [L, 2] (row, col) -> (cos, sin) float32 [L, e] on positions' device."""

    @abstractmethod
    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """[..., e] -> [..., e]: the signed pairing of head dims (same shape and dtype)."""

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [..., L, e] with the tables of its L tokens."""
        return apply_rotary(x, cos, sin, self.rotate)
