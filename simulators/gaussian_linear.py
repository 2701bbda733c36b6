r"""Gaussian linear model in 10 dimensions (sbibm's ``gaussian_linear``).

.. math:: \theta \sim \mathcal{N}(0, 0.1 I), \quad x | \theta \sim \mathcal{N}(\theta, 0.1 I)

so the posterior is :math:`\mathcal{N}(x / 2, 0.05 I)`.
"""

__all__ = ["DIM", "PARAMETER_NAMES", "ExactPosterior", "prior", "simulator", "posterior", "reference_posterior"]

import math
import torch

from torch.distributions import Independent, Normal

DIM = 10
PRIOR_VARIANCE = 0.1
NOISE_VARIANCE = 0.1
# the mean of x in each dimension
PARAMETER_NAMES = [f"mean_{i + 1}" for i in range(DIM)]


def prior(dim: int = DIM) -> Independent:
    return Independent(Normal(torch.zeros(dim), math.sqrt(PRIOR_VARIANCE) * torch.ones(dim)), 1)


def simulator(theta: torch.Tensor) -> torch.Tensor:
    r"""Batched simulator :math:`(B, D) \to (B, D)`."""

    return theta + math.sqrt(NOISE_VARIANCE) * torch.randn_like(theta)


def posterior(x: torch.Tensor) -> Independent:
    r"""The analytic posterior :math:`p(\theta | x)` for one observation :math:`(D,)`."""

    variance = 1.0 / (1.0 / PRIOR_VARIANCE + 1.0 / NOISE_VARIANCE)
    mean = variance * x / NOISE_VARIANCE
    return Independent(Normal(mean, math.sqrt(variance) * torch.ones_like(x)), 1)


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
    r"""Exact samples :math:`(n, D)` from the analytic posterior."""

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return posterior(x).sample((num_samples,))


class ExactPosterior:
    r"""The analytic posterior as a posterior object, for the diagnostics: ``sample(n, x)``
    gives :math:`(n, m, D)` for observations :math:`(m, D)` and ``log_prob(theta, x)``
    broadcasts as :class:`sbikit.AmortizedPosterior`'s do. ``scale`` multiplies its sd and
    ``shift`` moves its mean by that many sds: versions that are wrong in known ways."""

    parameter_names = PARAMETER_NAMES

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        self.scale, self.shift = scale, shift

    def q(self, x) -> Independent:
        exact = posterior(torch.as_tensor(x))
        return Independent(Normal(exact.mean + self.shift * exact.stddev, self.scale * exact.stddev), 1)

    def sample(self, n: int, x) -> torch.Tensor:
        return self.q(x).sample((n,))

    def log_prob(self, theta, x) -> torch.Tensor:
        return self.q(x).log_prob(theta)
