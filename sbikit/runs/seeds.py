r"""Per-simulation seeds and the independent random streams derived from them.

A run's root seed :math:`s` (any non-negative int) is first condensed by
:class:`numpy.random.SeedSequence` into two 64-bit words :math:`(r_0, r_1)`.
Simulation :math:`i` then gets its own 64-bit seed

.. math:: s_i = h\big(r_1 \oplus h(r_0 + (i + 1)\,\gamma)\big),

where :math:`h` is the SplitMix64 finalizer (a bijection of 64-bit words with
full avalanche) and :math:`\gamma` the golden-ratio constant, so distinct
indices always get distinct seeds. Each simulation draws from several
generators, and each gets its own key :math:`k_{i,j} = h(s_i \oplus h(j\gamma))`
for stream :math:`j`: the prior's draw, torch's noise, numpy's noise and
Python's ``random``. No integer ever seeds two generators, so a simulator's
noise never replays the stream that produced its parameters.

Everything here is vectorized over indices, because per-simulation seeding is
the runner's overhead for cheap simulators.
"""

__all__ = [
    "PRIOR",
    "TORCH",
    "NUMPY",
    "PYTHON",
    "mix64",
    "mix64_int",
    "root_seed",
    "simulation_seed",
    "simulation_seeds",
    "stream_keys",
]

import numpy as np

from collections.abc import Sequence

# The streams of one simulation.
PRIOR, TORCH, NUMPY, PYTHON = 0, 1, 2, 3

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_MASK = (1 << 64) - 1


def mix64(z: np.ndarray, inplace: bool = False) -> np.ndarray:
    r"""The SplitMix64 finalizer, applied elementwise to a uint64 array.

    Arithmetic wraps modulo :math:`2^{64}`; numpy does not warn on array overflow,
    so ``z`` must be an array (not a numpy scalar). With ``inplace``, ``z`` is
    overwritten, which saves the temporaries on large arrays.

    Example:
        >>> mix64(np.array([0, 1], dtype=np.uint64)).tolist()
        [0, 6238072747940578789]
    """

    if not inplace:
        z = z.copy()
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def mix64_int(z: int) -> int:
    r""":func:`mix64` on one Python int, faster than numpy for a handful of values.

    Example:
        >>> mix64_int(1) == int(mix64(np.array([1], dtype=np.uint64))[0])
        True
    """

    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


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


def simulation_seeds(root: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    r"""Returns the 64-bit seeds :math:`s_i` of simulations ``indices``, a uint64 array."""

    r0, r1 = np.random.SeedSequence(root).generate_state(2, np.uint64)
    i = np.asarray(indices, dtype=np.uint64).reshape(-1)
    return mix64(r1 ^ mix64(r0 + (i + np.uint64(1)) * _GAMMA))


def simulation_seed(root: int, index: int) -> int:
    r"""Returns the 64-bit seed of simulation ``index`` in the run with seed ``root``.

    Example:
        >>> simulation_seed(0, 7) == simulation_seed(0, 7) != simulation_seed(0, 8)
        True
    """

    return int(simulation_seeds(root, [index])[0])


def stream_keys(seeds: np.ndarray, stream: int) -> np.ndarray:
    r"""Returns the key of ``stream`` for each simulation seed, a uint64 array like ``seeds``.

    Example:
        >>> seeds = simulation_seeds(0, range(3))
        >>> bool((stream_keys(seeds, PRIOR) != stream_keys(seeds, NUMPY)).all())
        True
    """

    tag = mix64(np.array([stream + 1], dtype=np.uint64) * _GAMMA)
    return mix64(np.asarray(seeds, dtype=np.uint64) ^ tag)
