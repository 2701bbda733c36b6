r"""A noisy sinusoid observed at 20 times: a higher-dimensional x, a multimodal posterior.

.. math::
    A \sim \mathcal{U}(0.5, 2), \quad \omega \sim \mathcal{U}(0.5, 3), \quad
    x_j | \theta \sim \mathcal{N}(A \sin(\omega t_j), 1), \quad t_j = 2\pi j / 20, \ j = 1, \dots, 20.

With unit noise the posterior over the frequency :math:`\omega` is curved
against the amplitude and often has several modes (aliases of the frequency).
The reference posterior is computed on a fine grid (:mod:`simulators._grid`).
"""

__all__ = ["PARAMETER_NAMES", "prior", "simulator", "log_posterior", "reference_posterior"]

import math
import sbikit
import torch

from ._grid import grid_posterior

NUM_TIMES = 20
TIMES = 2 * math.pi * torch.arange(1, NUM_TIMES + 1) / NUM_TIMES
LOW = torch.tensor([0.5, 0.5])
HIGH = torch.tensor([2.0, 3.0])
PARAMETER_NAMES = ["amplitude", "frequency"]


def prior() -> sbikit.BoxUniform:
    return sbikit.BoxUniform(low=LOW, high=HIGH)


def simulator(theta: torch.Tensor) -> torch.Tensor:
    r"""Batched simulator :math:`(B, 2) \to (B, 20)`."""

    signal = theta[..., :1] * torch.sin(theta[..., 1:] * TIMES)
    return signal + torch.randn_like(signal)


def log_posterior(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The unnormalized :math:`\log p(\theta | x)` on the prior's box, :math:`(M,)` for :math:`(M, 2)`."""

    theta = theta.double()
    signal = theta[:, :1] * torch.sin(theta[:, 1:] * TIMES.double())
    return -0.5 * ((x.double() - signal) ** 2).sum(-1)


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
    r"""Samples :math:`(n, 2)` from :math:`p(\theta | x)` for one observation :math:`(20,)`."""

    return grid_posterior(lambda t: log_posterior(t, x), LOW, HIGH, num_samples, seed)
