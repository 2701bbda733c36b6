r"""Exact-to-grid-resolution posterior samples for problems of two or three parameters.

The unnormalized log posterior is evaluated on a grid of cell centers; cells are
drawn in proportion to their mass, and each sample is placed uniformly within
its cell. The grid is refined once onto the box that holds all but a
negligible part of the mass, so narrow posteriors get fine cells.
"""

import torch

from collections.abc import Callable

_NEGLIGIBLE = 30.0  # cells more than e^-30 below the peak are treated as empty


def cell_centers(low: torch.Tensor, high: torch.Tensor, sizes: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The centers :math:`(\prod_i n_i, D)` of a regular grid of cells on the box ``[low, high]``,
    ``sizes[i]`` cells along dimension i (one int: the same along each), and the cells' widths."""

    sizes = (sizes,) * len(low) if isinstance(sizes, int) else tuple(sizes)
    width = (high - low) / torch.tensor(sizes, dtype=low.dtype)
    axes = [low[i] + width[i] * (torch.arange(n, dtype=low.dtype) + 0.5) for i, n in enumerate(sizes)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(sizes)), width


def grid_posterior(
    log_density: Callable[[torch.Tensor], torch.Tensor],
    low: torch.Tensor,
    high: torch.Tensor,
    num_samples: int,
    seed: int = 0,
    cells: int = 1000,
) -> torch.Tensor:
    r"""Samples :math:`(n, D)` from the density ``exp(log_density(theta))`` on the box ``[low, high]``.

    ``log_density`` maps float64 points :math:`(M, D)` to :math:`(M,)` and may return
    :math:`-\infty` outside the support. ``cells`` is the number along each dimension:
    :math:`\text{cells}^D` evaluations, twice.
    """

    low, high = low.double(), high.double()
    points, width = cell_centers(low, high, cells)
    log_p = log_density(points)
    occupied = points[log_p > log_p.max() - _NEGLIGIBLE]
    # refine onto the occupied box, one coarse cell of margin on each side
    low = torch.maximum(occupied.min(0).values - width, low)
    high = torch.minimum(occupied.max(0).values + width, high)
    points, width = cell_centers(low, high, cells)
    log_p = log_density(points)
    weights = torch.exp(log_p - log_p.max())
    generator = torch.Generator().manual_seed(seed)
    index = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    jitter = (torch.rand(num_samples, len(low), generator=generator, dtype=torch.float64) - 0.5) * width
    return (points[index] + jitter).float()
