r"""Per-simulation seeds derived from a root seed and the simulation's index.

Simulation :math:`i` of a run with root seed :math:`s` draws all of its randomness
(its parameters and its noise) from ``SeedSequence(s, spawn_key=(i,))``, so the
same root seed gives the same simulations whatever the batch size or the number
of workers.
"""

__all__ = ["simulation_seed", "root_seed", "seeded"]

import contextlib
import random
import numpy as np
import torch

from collections.abc import Iterator


def root_seed(seed: int | None) -> int:
    r"""Returns ``seed``, or fresh entropy when it is None.

    Raises:
        TypeError: If ``seed`` is not an int.
        ValueError: If ``seed`` is negative.
    """

    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative int or None, got {type(seed).__name__}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    return int(seed)


def simulation_seed(root: int, index: int) -> int:
    r"""Returns the 64-bit seed of simulation ``index`` in the run with seed ``root``.

    Example:
        >>> simulation_seed(0, 7) == simulation_seed(0, 7) != simulation_seed(0, 8)
        True
    """

    state = np.random.SeedSequence(root, spawn_key=(index,)).generate_state(1, np.uint64)
    return int(state[0])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    r"""Seeds torch, numpy and ``random`` within the block and restores them after."""

    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
