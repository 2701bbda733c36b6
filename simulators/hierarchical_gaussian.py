r"""The hierarchical normal model: a group mean, a spread, and noisy members.

.. math::
    \mu \sim \mathcal{N}(0, 1), \quad \tau \sim \mathrm{LogNormal}(-1, 0.5), \quad
    l_j | \mu, \tau \sim \mathcal{N}(\mu, \tau^2), \quad
    x_j | l_j \sim \mathcal{N}(l_j, 0.3^2), \quad j = 1, \dots, M.

Integrating out the locals, :math:`x_j | \mu, \tau \sim \mathcal{N}(\mu, \tau^2 + 0.3^2)`
independently, so the global posterior depends on :math:`x` only through
:math:`M`, the mean and the sum of squares. With :math:`\tau` known
(``model(tau=...)``) it is normal:

.. math::
    \mu | x \sim \mathcal{N}\left(\frac{M \bar x / s^2}{1 + M / s^2}, \frac{1}{1 + M / s^2}\right),
    \quad s^2 = \tau^2 + 0.3^2.

With :math:`\tau` unknown, the posterior of :math:`(\mu, \tau)` is two-dimensional and
is computed on a fine grid (:mod:`simulators._grid`). Given :math:`(\mu, \tau)`, each
local is normal (:func:`local_posterior`), so the joint posterior of the globals and
any member's local is exact too.
"""

__all__ = [
    "NOISE",
    "PARAMETER_NAMES",
    "model",
    "global_prior",
    "log_posterior",
    "reference_posterior",
    "mean_posterior",
    "local_posterior",
    "GroupMeanPosterior",
]

import math
import torch

from torch.distributions import Independent, LogNormal, Normal

import sbikit

from ._grid import grid_posterior

NOISE = 0.3
PARAMETER_NAMES = ["mu", "tau"]


def global_prior(tau: float | None = None):
    r"""The prior of :math:`(\mu, \tau)`, or of :math:`(\mu,)` when :math:`\tau` is known."""

    if tau is None:
        return sbikit.ProductPrior([Normal(0.0, 1.0), LogNormal(-1.0, 0.5)])
    return Independent(Normal(torch.zeros(1), torch.ones(1)), 1)


def model(tau: float | None = None, num_members=(10, 100)) -> sbikit.MixedEffects:
    r"""The model as :class:`sbikit.MixedEffects`; ``tau`` fixes the spread, so that only
    :math:`\mu` is inferred."""

    if tau is None:
        local = lambda g: Independent(Normal(g[..., :1], g[..., 1:]), 1)  # noqa: E731
        names = PARAMETER_NAMES
    else:
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}.")
        local = lambda g: Independent(Normal(g[..., :1], tau * torch.ones_like(g[..., :1])), 1)  # noqa: E731
        names = PARAMETER_NAMES[:1]
    return sbikit.MixedEffects(
        global_prior=global_prior(tau),
        local_prior=local,
        member_simulator=lambda g, l: l + NOISE * torch.randn_like(l),
        num_members=num_members,
        parameter_names=names,
    )


def _members(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != 1 or len(x) == 0:
        raise ValueError(f"x must be one group of members (M, 1), got {tuple(x.shape)}.")
    return x[:, 0]


def mean_posterior(x: torch.Tensor, tau: float) -> Normal:
    r"""The exact posterior of :math:`\mu` for one group :math:`(M, 1)` when :math:`\tau` is known."""

    x = _members(x)
    s2 = tau**2 + NOISE**2
    precision = 1.0 + len(x) / s2
    return Normal(x.sum() / s2 / precision, precision**-0.5)


def log_posterior(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The unnormalized :math:`\log p(\mu, \tau | x)`, :math:`(K,)` for :math:`(K, 2)` and one group."""

    x = _members(x)
    theta = theta.double()
    mu, tau = theta[:, 0], theta[:, 1]
    s2 = tau**2 + NOISE**2
    m, total, squares = len(x), x.sum(), (x**2).sum()
    # sum_j (x_j - mu)^2 from the sufficient statistics
    deviations = squares - 2 * mu * total + m * mu**2
    log_lik = -0.5 * deviations / s2 - 0.5 * m * torch.log(2 * math.pi * s2)
    log_prior = Normal(0.0, 1.0).log_prob(mu) + LogNormal(-1.0, 0.5).log_prob(tau.clamp_min(1e-300))
    return torch.where(tau > 0, log_lik + log_prior, -torch.inf)


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0, tau: float | None = None) -> torch.Tensor:
    r"""Samples :math:`(n, 2)` from :math:`p(\mu, \tau | x)` for one group :math:`(M, 1)`, or
    :math:`(n, 1)` from :math:`p(\mu | x)` when ``tau`` is known."""

    if tau is not None:
        generator = torch.Generator().manual_seed(seed)
        q = mean_posterior(x, tau)
        return (q.loc + q.scale * torch.randn(num_samples, 1, generator=generator, dtype=torch.float64)).float()
    # the prior holds all but ~1e-9 of its mass in mu in [-6, 6], tau in (0, e^{-1 + 6 * 0.5}]
    low = torch.tensor([-6.0, 1e-6])
    high = torch.tensor([6.0, math.exp(2.0)])
    return grid_posterior(lambda t: log_posterior(t, x), low, high, num_samples, seed)


def local_posterior(globals_: torch.Tensor, x_j: torch.Tensor, seed: int = 0) -> torch.Tensor:
    r"""Draws member :math:`j`'s local :math:`l_j | \mu, \tau, x_j` for each row of ``globals_``
    :math:`(n, 2)`; returns :math:`(n, 1)`. Given the globals, the other members say nothing
    more about :math:`l_j`. Pass a ``seed`` other than the one that drew ``globals_``: the
    same seed replays the same random stream, which ties the locals to the global draws."""

    generator = torch.Generator().manual_seed(seed)
    mu, tau = globals_[:, :1].double(), globals_[:, 1:].double()
    x_j = torch.as_tensor(x_j, dtype=torch.float64).reshape(1, 1)
    precision = 1.0 / tau**2 + 1.0 / NOISE**2
    mean = (mu / tau**2 + x_j / NOISE**2) / precision
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
    return (mean + noise * precision**-0.5).float()


class GroupMeanPosterior:
    r"""The exact posterior of :math:`\mu` with :math:`\tau` known (``model(tau=...)``) as a
    posterior object, for the diagnostics: ``sample(n, x)`` gives :math:`(n, m, 1)` for
    groups :math:`(m, M, 1)` of equal size, and ``log_prob(theta, x)`` broadcasts with them."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def q(self, x) -> Independent:
        s2 = self.tau**2 + NOISE**2
        precision = 1 + x.shape[-2] / s2
        return Independent(Normal(x.sum(-2) / s2 / precision, precision**-0.5 * torch.ones(x.shape[:-2] + (1,))), 1)

    def sample(self, n: int, x) -> torch.Tensor:
        return self.q(x).sample((n,))

    def log_prob(self, theta, x) -> torch.Tensor:
        return self.q(x).log_prob(theta)
