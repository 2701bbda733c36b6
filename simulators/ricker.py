r"""The Ricker population model observed as Poisson counts (Wood, 2010).

.. math::
    N_0 = 1, \quad N_{t+1} = r N_t e^{-N_t + e_t}, \quad e_t \sim \mathcal{N}(0, \sigma^2), \quad
    x_t | N \sim \mathrm{Poisson}(\phi N_{50 + t}), \ t = 1, \dots, 50.

The first 50 steps are a burn-in that is not observed, so the observation :math:`x` is
50 counts :math:`(50,)`. At the classic truth :math:`(\log r, \sigma, \phi) = (3.8, 0.3, 10)`
the dynamics are chaotic and about a third of the counts are zero. The likelihood has no
closed form: it integrates over the hidden :math:`N`.

Parameters: :math:`\theta = (\log r, \sigma, \phi)`, uniform on
:math:`[3, 5] \times [0.1, 0.6] \times [4, 20]`. The ranges of :math:`\log r` and
:math:`\phi` are those of the usual ABC benchmarks of this model; :math:`\sigma` starts
at 0.1 rather than 0 because, as :math:`\sigma \to 0`, the chaotic dynamics make the
likelihood so rugged that no grid (and no sampler) resolves it.

**Reference posterior.** A bootstrap particle filter (:func:`log_likelihood`) estimates
the likelihood at every cell of a grid over the box, coarse over the whole box, then
finer in the cells that hold almost all the mass; cells are drawn in proportion to
those estimates and samples jittered uniformly within their cell
(:func:`reference_posterior`).
"""

__all__ = [
    "NUM_COUNTS",
    "PARAMETER_NAMES",
    "prior",
    "simulator",
    "batched_simulator",
    "log_likelihood",
    "reference_posterior",
]

import numpy as np
import torch

from scipy.special import gammaln

import sbikit

from ._grid import cell_centers

BURN_IN = 50
NUM_COUNTS = 50
# the log growth rate, the sd of the process noise, the counts per unit of population
PARAMETER_NAMES = ["log_r", "sigma", "phi"]
LOW = torch.tensor([3.0, 0.1, 4.0])
HIGH = torch.tensor([5.0, 0.6, 20.0])
COARSE = (20, 10, 16)  # cells per dimension, over the whole box
SPLIT = (4, 3, 8)  # each refined coarse cell becomes this many fine cells
COARSE_PARTICLES = 300
REFINE_WITHIN = 10.0  # refine coarse cells within e^10 of the most likely one
BLOCK = 2**16  # points x particles filtered at once: larger arrays are mapped afresh, and page-fault, at every step


def prior() -> sbikit.BoxUniform:
    return sbikit.BoxUniform(LOW, HIGH)


def _step(log_n: np.ndarray, log_r: np.ndarray, noise: np.ndarray) -> np.ndarray:
    # the recurrence in logs, where N can neither overflow nor reach 0
    return log_r + log_n - np.exp(log_n) + noise


def _rates(theta: np.ndarray, noise: np.ndarray) -> np.ndarray:
    r"""The Poisson rates :math:`\phi N_{50 + t}` :math:`(B, 50)` for :math:`\theta` :math:`(B, 3)`
    and standard normal noise :math:`(B, 100)`."""

    log_r, sigma, phi = theta[:, :1], theta[:, 1:2], theta[:, 2:]
    log_n = np.zeros((len(theta), 1))
    trajectory = []
    for t in range(BURN_IN + NUM_COUNTS):
        log_n = _step(log_n, log_r, sigma * noise[:, t : t + 1])
        trajectory.append(log_n)
    return phi * np.exp(np.concatenate(trajectory[BURN_IN:], 1))


def simulator(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r"""One simulation :math:`(3,) \to (50,)`: counts as float64, drawn from ``rng``.

    Example:
        >>> from sbikit.simulators import ricker
        >>> data = sbikit.simulate(ricker.simulator, ricker.prior(), 10, batched=False, numpy=True, rng=True,
        ...                        seed=0, show_progress=False)
        >>> data.x.shape
        torch.Size([10, 50])
    """

    theta = np.asarray(theta, dtype=np.float64).reshape(1, 3)
    rates = _rates(theta, rng.standard_normal((1, BURN_IN + NUM_COUNTS)))
    return rng.poisson(rates[0]).astype(np.float64)


def batched_simulator(theta: torch.Tensor) -> torch.Tensor:
    r"""The batched torch simulator :math:`(*, 3) \to (*, 50)`, drawing from torch's generator:
    ``sbikit.simulate(ricker.batched_simulator, ricker.prior(), n, seed=...)``, 10,000 simulations
    in under a second."""

    batch = theta.reshape(-1, 3)
    noise = torch.randn(len(batch), BURN_IN + NUM_COUNTS, dtype=torch.float64)
    rates = _rates(batch.detach().double().numpy(), noise.numpy())
    return torch.poisson(torch.from_numpy(rates)).to(theta.dtype).reshape(*theta.shape[:-1], NUM_COUNTS)


def _resample(values: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r"""Systematic resampling of each row of ``values`` :math:`(M, P)` by its ``weights``: with
    :math:`c_j` the normalized cumulative weights and one :math:`u \sim \mathcal{U}(0, 1)` per row,
    particle :math:`j` gets :math:`\lfloor P c_j + u \rfloor - \lfloor P c_{j-1} + u \rfloor` copies."""

    m, p = weights.shape
    edges = np.cumsum(weights, 1)
    edges *= p / edges[:, -1:]
    edges += rng.random((m, 1))
    edges = np.minimum(edges.astype(np.int64), p)
    edges[:, -1] = p  # floor(p + u), whatever the rounding of the sum
    counts = np.empty_like(edges)
    counts[:, 0] = edges[:, 0]
    np.subtract(edges[:, 1:], edges[:, :-1], out=counts[:, 1:])
    return np.repeat(values.ravel(), counts.ravel()).reshape(m, p)


def _filter(theta: np.ndarray, x: np.ndarray, num_particles: int, rng: np.random.Generator) -> np.ndarray:
    # the log-likelihood estimates (M,), every particle of every point propagated at once
    log_r, sigma, phi = theta[:, :1], theta[:, 1:2], theta[:, 2:]
    shape = (len(theta), num_particles)
    log_n = np.zeros(shape)
    for _ in range(BURN_IN):  # unobserved: propagation only
        log_n = _step(log_n, log_r, sigma * rng.standard_normal(shape))
    total = np.full(len(theta), -gammaln(x + 1).sum())
    for y in x:
        log_n = _step(log_n, log_r, sigma * rng.standard_normal(shape))
        log_w = y * (np.log(phi) + log_n) - phi * np.exp(log_n)
        top = log_w.max(1, keepdims=True)
        w = np.exp(log_w - top)
        total += top[:, 0] + np.log(w.mean(1))
        log_n = _resample(log_n, w, rng)
    return total


def log_likelihood(theta, x, num_particles: int = 2000, seed: int = 0) -> torch.Tensor:
    r"""A bootstrap particle filter's estimate of :math:`\log p(x | \theta)`, :math:`(M,)` float64
    for :math:`\theta` :math:`(M, 3)` and one series of counts ``x`` :math:`(T,)` (50 in the model).

    The estimate of :math:`p(x | \theta)` is unbiased; its log is biased low by about half its
    variance. Its sd near the posterior's mode for 50 counts at the classic truth is about 0.3
    with 2,000 particles and shrinks as :math:`1 / \sqrt{\text{particles}}`. Every point has
    its own particles; deterministic given ``seed``.
    """

    theta = np.asarray(theta, dtype=np.float64).reshape(-1, 3)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    return torch.from_numpy(_blocks(theta, x, num_particles, rng))


def _blocks(theta: np.ndarray, x: np.ndarray, num_particles: int, rng: np.random.Generator) -> np.ndarray:
    size = max(1, BLOCK // num_particles)
    return np.concatenate([_filter(theta[i : i + size], x, num_particles, rng) for i in range(0, len(theta), size)])


def reference_posterior(x, num_samples: int, seed: int = 0, num_particles: int = 2000) -> torch.Tensor:
    r"""Samples :math:`(n, 3)` from :math:`p(\theta | x)` for one observation :math:`(50,)`.

    The likelihood is estimated by :func:`log_likelihood` at the centers of a 20 x 10 x 16 grid
    of cells over the box, with 300 particles (at most ``num_particles``); the cells within
    :math:`e^{10}` of the most likely one are split 4 x 3 x 8, into cells of 0.025 x 0.017 x
    0.125, and estimated again with ``num_particles``. Cells are drawn in proportion to their
    estimate times their volume, and each draw is jittered uniformly within its cell.

    Cost: about :math:`3 \times 10^9` particle steps at the classic truth, one to two minutes
    on one core; deterministic given ``seed``. Accuracy: the estimates are unbiased, so their
    noise (a factor of about :math:`e^{\pm 0.3}` per fine cell near the mode) averages out over
    the thousands of cells that hold the mass, and the cells widen the variance by under 1% at
    the classic truth. Cells left coarse hold a few :math:`10^{-4}` of the mass; a mode much
    narrower than a coarse cell that the coarse pass misses would stay unresolved.

    Raises:
        ValueError: If ``x`` is not 50 non-negative counts.
    """

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.shape != (NUM_COUNTS,) or (x < 0).any() or (x != np.round(x)).any():
        raise ValueError(f"x must be {NUM_COUNTS} non-negative counts, got shape {x.shape}; pass one observation.")
    rng = np.random.default_rng(seed)
    coarse, width = (a.numpy() for a in cell_centers(LOW.double(), HIGH.double(), COARSE))
    log_l = _blocks(coarse, x, min(COARSE_PARTICLES, num_particles), rng)
    refine = log_l > log_l.max() - REFINE_WITHIN
    half = torch.from_numpy(width) / 2
    offsets, fine_width = (a.numpy() for a in cell_centers(-half, half, SPLIT))
    fine = (coarse[refine][:, None] + offsets).reshape(-1, 3)
    fine_log_l = _blocks(fine, x, num_particles, rng)
    centers = np.concatenate([coarse[~refine], fine])
    widths = np.concatenate([np.broadcast_to(width, ((~refine).sum(), 3)), np.broadcast_to(fine_width, fine.shape)])
    log_w = np.concatenate([log_l[~refine], fine_log_l]) + np.log(widths).sum(1)
    w = np.exp(log_w - log_w.max())
    index = rng.choice(len(w), num_samples, p=w / w.sum())
    samples = centers[index] + (rng.random((num_samples, 3)) - 0.5) * widths[index]
    return torch.from_numpy(samples).float()
