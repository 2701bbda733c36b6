r"""A Poisson regression: count data with a log-linear rate.

.. math::
    \theta \sim \mathcal{N}\left(\begin{pmatrix} 1 \\ 0 \end{pmatrix}, 0.5^2 I\right), \quad
    x_j | \theta \sim \mathrm{Poisson}\left(\exp(\theta_1 + \theta_2 t_j)\right), \quad
    t_j \in \{-1, \dots, 1\}, \ j = 1, \dots, 10.

The observations are discrete counts, so the likelihood is a probability mass
and small counts carry much less information than large ones. The reference
posterior is computed on a fine grid (:mod:`simulators._grid`).
"""

__all__ = ["PARAMETER_NAMES", "prior", "simulator", "log_posterior", "reference_posterior"]

import torch

from torch.distributions import Independent, Normal, Poisson

from ._grid import grid_posterior

NUM_COUNTS = 10
TIMES = torch.linspace(-1.0, 1.0, NUM_COUNTS)
PRIOR_MEAN = torch.tensor([1.0, 0.0])
PRIOR_SD = 0.5
# the log-rate at t = 0, and its change per unit of t
PARAMETER_NAMES = ["log_rate", "trend"]


def prior() -> Independent:
    return Independent(Normal(PRIOR_MEAN, PRIOR_SD * torch.ones(2)), 1)


def simulator(theta: torch.Tensor) -> torch.Tensor:
    r"""Batched simulator :math:`(B, 2) \to (B, 10)` of counts (as floats)."""

    rate = torch.exp(theta[..., :1] + theta[..., 1:] * TIMES)
    return torch.poisson(rate)


def log_posterior(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The unnormalized :math:`\log p(\theta | x)`, :math:`(M,)` for :math:`(M, 2)` and one ``x``."""

    theta = theta.double()
    log_rate = theta[:, :1] + theta[:, 1:] * TIMES.double()
    log_lik = Poisson(log_rate.exp(), validate_args=False).log_prob(x.double()).sum(-1)
    prior_ = Independent(Normal(PRIOR_MEAN.double(), PRIOR_SD * torch.ones(2, dtype=torch.float64)), 1)
    return log_lik + prior_.log_prob(theta)


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
    r"""Samples :math:`(n, 2)` from :math:`p(\theta | x)` for one observation :math:`(10,)`."""

    span = 6 * PRIOR_SD  # the prior puts less than 1e-8 of its mass outside
    return grid_posterior(lambda t: log_posterior(t, x), PRIOR_MEAN - span, PRIOR_MEAN + span, num_samples, seed)
