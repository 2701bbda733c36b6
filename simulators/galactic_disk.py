r"""The Milky Way problem: the dark-matter density near the Sun from stars in vertical equilibrium.

Stars above and below the Galactic disk move in its vertical potential, a disk of
surface density :math:`\Sigma_D` and scale :math:`D` plus a slab of dark matter of
density :math:`\rho_{DM}`:

.. math::
    \Phi(z) = 2 \pi G \left[\Sigma_D \left(\sqrt{z^2 + D^2} - D\right) + \rho_{DM} z^2\right],
    \quad G = 4.30091 \times 10^{-3}\ \mathrm{pc\,(km/s)^2 / M_\odot}.

A tracer population in equilibrium with an isothermal distribution function
:math:`f(z, v_z) \propto \exp(-(v_z^2 / 2 + \Phi(z)) / \sigma^2)` (a solution of the
collisionless Boltzmann equation) has density :math:`\nu(z) \propto \exp(-\Phi(z) / \sigma^2)`
and velocities :math:`v_z \sim \mathcal{N}(0, \sigma^2)`, independent of :math:`z`.

As a mixed-effects model: the global parameters are :math:`(\Sigma_D, \rho_{DM}, \sigma)`;
each star is a member whose local parameters are its true :math:`(z, v_z)`, drawn
exactly (:class:`IsothermalDisk`: the inverse CDF of :math:`\nu` on a fine grid); the
observed member is that position and velocity with Gaussian errors of 20 pc and 2 km/s.

The likelihood of a galaxy's observed stars is exact up to quadrature
(:func:`log_likelihood`: the velocities are normal with variance :math:`\sigma^2 + 2^2`;
each observed height's density is :math:`\nu` convolved with the 20 pc error), so
:func:`reference_posterior` draws from the exact posterior of the globals.

Units: pc, km/s, :math:`M_\odot/\mathrm{pc}^2`, :math:`M_\odot/\mathrm{pc}^3`. The prior is
uniform around solar-neighbourhood values: :math:`\Sigma_D \in [30, 70]`,
:math:`\rho_{DM} \in [0, 0.03]` (about 0.01 is typical), :math:`\sigma \in [15, 30]`.
"""

__all__ = [
    "G",
    "DISK_SCALE",
    "POSITION_ERROR",
    "VELOCITY_ERROR",
    "PARAMETER_NAMES",
    "IsothermalDisk",
    "potential",
    "prior",
    "model",
    "log_likelihood",
    "reference_posterior",
]

import math
import torch

from torch.distributions import Distribution, constraints

import sbikit

from ._grid import cell_centers

G = 4.30091e-3  # pc (km/s)^2 / M_sun
DISK_SCALE = 250.0  # D, pc
POSITION_ERROR = 20.0  # pc
VELOCITY_ERROR = 2.0  # km/s
PARAMETER_NAMES = ["surface_density", "dark_matter_density", "velocity_dispersion"]
LOW = torch.tensor([30.0, 0.0, 15.0])
HIGH = torch.tensor([70.0, 0.03, 30.0])
GRID_POINTS = 4097


def potential(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""The vertical potential :math:`\Phi(z)` in (km/s)², for heights :math:`(B, *)` and
    parameters :math:`(B, 3)` (only :math:`\Sigma_D, \rho_{DM}` are used)."""

    shape = (-1,) + (1,) * (z.ndim - 1)
    surface, rho = theta[:, 0].reshape(shape), theta[:, 1].reshape(shape)
    return 2 * math.pi * G * (surface * (torch.sqrt(z**2 + DISK_SCALE**2) - DISK_SCALE) + rho * z**2)


def _extent(theta: torch.Tensor) -> torch.Tensor:
    r"""A height beyond which :math:`\nu(z) < e^{-30}\nu(0)`, per row, :math:`(B,)`."""

    sigma2 = theta[:, 2] ** 2
    # Phi(z) >= 2 pi G (Sigma (z - D) + rho z^2): solve for Phi / sigma^2 = 30 with the linear part
    return DISK_SCALE + 30 * sigma2 / (2 * math.pi * G * theta[:, 0])


class IsothermalDisk(Distribution):
    r"""The true height and vertical velocity of a tracer star, :math:`(z, v_z)`, for globals :math:`(B, 3)`.

    Heights are drawn from :math:`\nu(z) \propto e^{-\Phi(z)/\sigma^2}` by the inverse of its
    CDF, computed by the trapezoidal rule on a grid of 4,097 points over
    :math:`|z| \le z_{\max}` (where :math:`\nu` has fallen by :math:`e^{-30}`) and
    interpolated linearly; rows with the same globals share one grid. ``log_prob`` is the
    normalized density with the same grid's normalizing constant.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, theta: torch.Tensor) -> None:
        self.theta = theta
        super().__init__(theta.shape[:1], torch.Size([2]), validate_args=False)

    def _grids(self, points: int = GRID_POINTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        unique, inverse = torch.unique(self.theta.double(), dim=0, return_inverse=True)
        top = _extent(unique)
        z = torch.linspace(0.0, 1.0, points, dtype=torch.float64) * top[:, None]  # (U, P), z >= 0
        log_nu = -potential(z, unique) / unique[:, 2:3] ** 2
        nu = log_nu.exp()
        steps = (nu[:, 1:] + nu[:, :-1]) / 2 * (z[:, 1:] - z[:, :-1])
        cdf = torch.cat([torch.zeros(len(unique), 1, dtype=torch.float64), steps.cumsum(1)], dim=1)
        return z, cdf, inverse, unique

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if sample_shape != torch.Size():
            raise ValueError("IsothermalDisk draws one star per row of its globals; sample_shape must be ().")
        z, cdf, inverse, unique = self._grids()
        n, groups = len(self.theta), len(unique)
        u = torch.rand(n, 2)  # per row: the height's quantile and its sign
        # one sorted array for all groups: group i's normalized CDF lies in [2i, 2i + 1]
        offset = 2.0 * torch.arange(groups, dtype=torch.float64)
        flat = (cdf / cdf[:, -1:] + offset[:, None]).flatten()
        heights = z.flatten()
        target = u[:, 0].double() + offset[inverse]
        first = inverse * GRID_POINTS
        k = torch.maximum(torch.minimum(torch.searchsorted(flat, target), first + GRID_POINTS - 1), first + 1)
        c0, c1, z0, z1 = flat[k - 1], flat[k], heights[k - 1], heights[k]
        height = z0 + (z1 - z0) * ((target - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0.0, 1.0)
        height = torch.where(u[:, 1] < 0.5, -height, height)
        velocity = self.theta[:, 2].double() * torch.randn(n, dtype=torch.float64)
        return torch.stack([height, velocity], dim=-1).to(self.theta.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z, cdf, inverse, unique = self._grids()
        norm = 2 * cdf[inverse, -1]  # both signs of z
        theta = self.theta.double()
        height, velocity = value[..., 0].double(), value[..., 1].double()
        log_nu = -potential(height.reshape(len(theta), -1), theta).reshape(height.shape) / theta[:, 2] ** 2
        log_v = torch.distributions.Normal(0.0, theta[:, 2]).log_prob(velocity)
        return (log_nu - norm.log() + log_v).to(value.dtype)


def prior() -> sbikit.BoxUniform:
    return sbikit.BoxUniform(LOW, HIGH)


def _observe(g: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    errors = torch.tensor([POSITION_ERROR, VELOCITY_ERROR], dtype=local.dtype)
    return local + errors * torch.randn_like(local)


def model(num_members=(500, 2_000)) -> sbikit.MixedEffects:
    r"""The model as :class:`sbikit.MixedEffects`: stars are members, hundreds to a few thousand."""

    return sbikit.MixedEffects(
        global_prior=prior(),
        local_prior=IsothermalDisk,
        member_simulator=_observe,
        num_members=num_members,
        parameter_names=PARAMETER_NAMES,
    )


def log_likelihood(theta: torch.Tensor, stars: torch.Tensor, chunk: int = 2_048) -> torch.Tensor:
    r"""The exact log-likelihood :math:`\sum_i \log p(x_i | \theta)` of one galaxy's
    observed stars :math:`(n, 2)` (height, velocity) for globals :math:`(T, 3)`, float64
    :math:`(T,)`; the true heights and velocities are integrated out.

    - A velocity is :math:`\mathcal{N}(0, \sigma^2 + e_v^2)`.
    - A height's density is :math:`\int \nu(z)\, \mathcal{N}(z_{obs} - z; 0, e_z^2)\, dz`,
      by the trapezoidal rule on a grid of :math:`e_z / 4` spacing that covers every star
      :math:`\pm 8 e_z`, over :math:`\nu`'s normalizer on :class:`IsothermalDisk`'s grid.
    """

    theta, stars = theta.double(), stars.double()
    height, velocity = stars[:, 0], stars[:, 1]
    step = POSITION_ERROR / 4
    grid = torch.arange(float(height.min()) - 8 * POSITION_ERROR, float(height.max()) + 8 * POSITION_ERROR + step, step,
                        dtype=torch.float64)
    kernel = torch.distributions.Normal(0.0, POSITION_ERROR).log_prob(height[:, None] - grid).exp() * step  # (n, G)
    out = []
    for part in theta.split(chunk):
        # nu is even, smooth and negligible at the grid's end, so the trapezoidal rule
        # converges fast: 513 points agree with 16,385 to 1e-13 in log
        z, cdf, inverse, _ = IsothermalDisk(part)._grids(points=513)
        log_norm = torch.log(2 * cdf[inverse, -1])
        sigma2 = part[:, 2:3] ** 2
        nu = torch.exp(-potential(grid.expand(len(part), -1), part) / sigma2)  # (T, G), unnormalized
        heights = torch.log(nu @ kernel.T).sum(1) - len(stars) * log_norm
        velocities = torch.distributions.Normal(0.0, (sigma2 + VELOCITY_ERROR**2).sqrt()).log_prob(velocity).sum(1)
        out.append(heights + velocities)
    return torch.cat(out)


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0, proposals: int = 10) -> torch.Tensor:
    r"""Draws :math:`(n, 3)` from the exact posterior of :math:`(\Sigma_D, \rho_{DM}, \sigma)`
    given one galaxy's observed stars :math:`(m, 2)`, under :func:`prior`.

    The posterior is evaluated on a coarse grid over the prior box (the dispersion's
    range narrowed to :math:`\pm 10` sd of its estimate from the velocities), then on a
    finer grid over the box that holds all but :math:`e^{-25}` of it. Draws from that
    piecewise-constant density (``proposals`` per sample) are weighted by the exact
    posterior over their proposal density and resampled, so the draws do not depend on
    the grid's resolution. Raises :class:`RuntimeError` if the weights' effective sample
    size falls below ``2 * num_samples``.
    """

    stars = torch.as_tensor(x, dtype=torch.float64)
    if stars.ndim != 2 or stars.shape[1] != 2 or len(stars) < 2:
        raise ValueError(f"x must be one galaxy's stars, (m, 2) with m >= 2; got shape {tuple(stars.shape)}.")
    low, high = LOW.double(), HIGH.double()
    spread = max(float(stars[:, 1].pow(2).mean()) - VELOCITY_ERROR**2, 0.0) ** 0.5
    margin = 10 * spread / (2 * len(stars)) ** 0.5
    low[2] = max(float(low[2]), spread - margin)
    high[2] = min(float(high[2]), spread + margin)
    if low[2] >= high[2]:
        raise ValueError(f"x's velocity dispersion, {spread:.1f} km/s, lies far outside the prior's [15, 30].")
    points, width = cell_centers(low, high, (24, 24, 24))
    log_p = log_likelihood(points, stars)
    kept = points[log_p > log_p.max() - 25]
    low = torch.maximum(kept.min(0).values - width, low)
    high = torch.minimum(kept.max(0).values + width, high)
    points, width = cell_centers(low, high, (40, 40, 24))
    log_p = log_likelihood(points, stars)
    generator = torch.Generator().manual_seed(seed)
    count = proposals * num_samples
    cells = torch.multinomial(torch.exp(log_p - log_p.max()), count, replacement=True, generator=generator)
    draws = points[cells] + (torch.rand(count, 3, generator=generator, dtype=torch.float64) - 0.5) * width
    log_q = torch.log_softmax(log_p, 0)[cells]  # the proposal's density, up to the cells' common volume
    log_w = log_likelihood(draws, stars) - log_q
    weights = torch.exp(log_w - log_w.max())
    ess = float(weights.sum() ** 2 / (weights**2).sum())
    if ess < 2 * num_samples:
        raise RuntimeError(f"the reference's importance weights have an effective sample size of {ess:.0f}, "
                           f"under 2 * num_samples = {2 * num_samples}; raise proposals.")
    index = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    return draws[index].float()
