r"""SLCP, a simple likelihood with a complex posterior (Papamakarios et al., 2019; as in sbibm).

.. math::
    \theta \sim \mathcal{U}([-3, 3]^5), \quad x_j | \theta \sim \mathcal{N}(m, \Sigma), \ j = 1, \dots, 4,

with :math:`m = (\theta_1, \theta_2)`, scales :math:`s_1 = \theta_3^2` and :math:`s_2 = \theta_4^2`,
and correlation :math:`\rho = \tanh \theta_5`:
:math:`\Sigma = \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 \end{pmatrix}`.
The observation is the four draws, flattened: :math:`x \in \mathbb{R}^8`. The likelihood is
a Gaussian, but the signs of :math:`\theta_3` and :math:`\theta_4` leave it unchanged, so the
posterior has four modes of equal mass, often narrow beside the prior. The draws are
i.i.d.: :func:`simulator` with ``num_draws=1`` gives one trial :math:`(2,)`, and a
likelihood learned on trials combines the four (:meth:`sbikit.Likelihood.posterior`).

**Reference posterior.** With :math:`n` draws, mean :math:`\bar x` and scatter
:math:`S = \sum_j (x_j - \bar x)(x_j - \bar x)^\top`, the likelihood factors as

.. math::
    \prod_j \mathcal{N}(x_j | m, \Sigma) \propto |\Sigma|^{-(n - 1)/2}
    e^{-\operatorname{tr}(\Sigma^{-1} S) / 2} \, \mathcal{N}(m | \bar x, \Sigma / n),

so exact samples follow in three steps: :math:`\phi = (|\theta_3|, |\theta_4|, \theta_5)`
from the first factor on a refined 3-D grid (:mod:`simulators._grid`); :math:`m` from
:math:`\mathcal{N}(\bar x, \Sigma / n)`, a pair being rejected when :math:`m` leaves the
prior's box (which weighs :math:`\phi` by that box's probability, as the posterior
does); and random signs for :math:`\theta_3` and :math:`\theta_4`.
"""

__all__ = ["NUM_DRAWS", "PARAMETER_NAMES", "prior", "simulator", "log_likelihood", "reference_posterior"]

import torch
import sbikit

from ._grid import grid_posterior

NUM_DRAWS = 4
BOUND = 3.0
PARAMETER_NAMES = ["mean_1", "mean_2", "scale_root_1", "scale_root_2", "correlation_atanh"]


def prior() -> sbikit.BoxUniform:
    return sbikit.BoxUniform(low=-BOUND * torch.ones(5), high=BOUND * torch.ones(5))


def _covariance(theta: torch.Tensor) -> torch.Tensor:
    s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])
    row_1 = torch.stack([s1**2, rho * s1 * s2], -1)
    row_2 = torch.stack([rho * s1 * s2, s2**2], -1)
    return torch.stack([row_1, row_2], -2)


def simulator(theta: torch.Tensor, num_draws: int = NUM_DRAWS) -> torch.Tensor:
    r"""Batched simulator :math:`(B, 5) \to (B, 2 \cdot \text{num\_draws})`: the draws, flattened."""

    tril = torch.linalg.cholesky(_covariance(theta))
    z = torch.randn(*theta.shape[:-1], num_draws, 2, 1, dtype=theta.dtype)
    draws = theta[..., None, :2] + (tril[..., None, :, :] @ z)[..., 0]
    return draws.flatten(-2)


def log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The exact :math:`\log p(x | \theta)`, :math:`(M,)` for :math:`(M, 5)` and the draws ``x`` (:math:`2n`,)."""

    normal = torch.distributions.MultivariateNormal(theta[..., None, :2], _covariance(theta)[..., None, :, :])
    return normal.log_prob(x.reshape(-1, 2).to(theta.dtype)).sum(-1)


def _log_phi(phi: torch.Tensor, scatter: torch.Tensor, n: int) -> torch.Tensor:
    # |Sigma|^{-(n-1)/2} exp(-tr(Sigma^-1 S) / 2) at phi = (|theta_3|, |theta_4|, theta_5), in logs
    s1, s2, rho = phi[:, 0] ** 2, phi[:, 1] ** 2, torch.tanh(phi[:, 2])
    one_minus = 1 - rho**2
    log_det = 2 * torch.log(s1) + 2 * torch.log(s2) + torch.log(one_minus)
    trace = (scatter[0, 0] / s1**2 - 2 * rho * scatter[0, 1] / (s1 * s2) + scatter[1, 1] / s2**2) / one_minus
    return -(n - 1) / 2 * log_det - trace / 2


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
    r"""Samples :math:`(n, 5)` from :math:`p(\theta | x)` for one observation: the draws
    :math:`(2n,)` or :math:`(n, 2)` (any number of them, 4 in the benchmark's definition)."""

    if x.numel() < 2 or x.numel() % 2:
        raise ValueError(f"x must hold draws of 2 values, (2n,) or (n, 2), got shape {tuple(x.shape)}.")
    draws = x.double().reshape(-1, 2)
    n = len(draws)
    mean = draws.mean(0)
    scatter = (draws - mean).T @ (draws - mean)
    low = torch.tensor([0.0, 0.0, -BOUND], dtype=torch.float64)
    high = torch.tensor([BOUND, BOUND, BOUND], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    chunks, total, round_seed, accepted = [], 0, seed, 0.5
    while total < num_samples:
        batch = max(int(1.2 * (num_samples - total) / accepted), 1_000)
        phi = grid_posterior(lambda p: _log_phi(p, scatter, n), low, high, batch, seed=round_seed, cells=160).double()
        round_seed += 1
        theta = torch.cat([torch.zeros(batch, 2, dtype=torch.float64), phi], -1)
        tril = torch.linalg.cholesky(_covariance(theta) / n)
        z = torch.randn(batch, 2, 1, generator=generator, dtype=torch.float64)
        theta[:, :2] = mean + (tril @ z)[..., 0]
        theta = theta[(theta[:, :2].abs() <= BOUND).all(-1)]
        accepted = max(len(theta) / batch, 0.01)
        signs = torch.where(torch.rand(len(theta), 2, generator=generator) < 0.5, -1.0, 1.0).double()
        theta[:, 2:4] *= signs
        chunks.append(theta)
        total += len(theta)
    return torch.cat(chunks)[:num_samples].float()
