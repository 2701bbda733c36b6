r"""An Ornstein–Uhlenbeck process observed with noise: a state-space model with an exact likelihood.

.. math::
    dS = \kappa (\mu - S)\,dt + \sigma\,dW, \quad S_0 \sim \mathcal{N}\left(\mu, \frac{\sigma^2}{2\kappa}\right),
    \quad X_k = S_{t_k} + 0.2\,\varepsilon_k.

The transitions are exact Gaussians,

.. math::
    S_{t + \Delta} | S_t \sim \mathcal{N}\left(\mu + (S_t - \mu) e^{-\kappa \Delta},
    \frac{\sigma^2}{2\kappa} (1 - e^{-2\kappa\Delta})\right),

so the likelihood of a series is exact by a Kalman filter (:func:`log_likelihood`),
on any time grid. The reference posterior is drawn by importance sampling on the
exact likelihood (:func:`reference_posterior`), with a proposal fitted in two
rounds; its effective sample size is checked.

Parameters: :math:`\kappa \in [0.1, 2]` (mean reversion per unit time),
:math:`\mu \in [-2, 2]`, :math:`\sigma \in [0.1, 1.5]`, uniform. The default grid is
50 times on :math:`[0, 10]`.
"""

__all__ = ["NOISE", "PARAMETER_NAMES", "model", "prior", "log_likelihood", "reference_posterior"]

import math
import torch

import sbikit

NOISE = 0.2
PARAMETER_NAMES = ["kappa", "mu", "sigma"]
LOW = torch.tensor([0.1, -2.0, 0.1])
HIGH = torch.tensor([2.0, 2.0, 1.5])
TIMES = torch.linspace(0.0, 10.0, 50)


def prior() -> sbikit.BoxUniform:
    return sbikit.BoxUniform(LOW, HIGH)


def _stationary_sd(theta: torch.Tensor) -> torch.Tensor:
    return theta[:, 2:3] / (2 * theta[:, 0:1]).sqrt()


def _initial(theta: torch.Tensor) -> torch.Tensor:
    return theta[:, 1:2] + _stationary_sd(theta) * torch.randn_like(theta[:, :1])


def _transition(state: torch.Tensor, theta: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    decay = torch.exp(-theta[:, 0:1] * dt)
    sd = _stationary_sd(theta) * (1 - decay**2).clamp_min(0).sqrt()
    return theta[:, 1:2] + (state - theta[:, 1:2]) * decay + sd * torch.randn_like(state)


def _observation(state: torch.Tensor, theta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return state + NOISE * torch.randn_like(state)


def model(times: torch.Tensor | None = None) -> sbikit.StateSpace:
    r"""The model as :class:`sbikit.StateSpace`; ``times`` defaults to 50 times on [0, 10]."""

    return sbikit.StateSpace(
        prior(),
        times=TIMES if times is None else times,
        initial=_initial,
        transition=_transition,
        observation=_observation,
        parameter_names=PARAMETER_NAMES,
    )


def log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The exact :math:`\log p(x | \theta)` by a Kalman filter, :math:`(K,)` for :math:`\theta`
    :math:`(K, 3)` and one series ``x`` :math:`(T, 2)` (times, observations)."""

    theta, x = theta.double(), torch.as_tensor(x, dtype=torch.float64)
    kappa, mu, sigma = theta[:, 0], theta[:, 1], theta[:, 2]
    stationary = sigma**2 / (2 * kappa)
    mean, var = mu.clone(), stationary.clone()
    total = torch.zeros_like(mu)
    for k in range(len(x)):
        if k:
            decay = torch.exp(-kappa * (x[k, 0] - x[k - 1, 0]))
            mean = mu + (mean - mu) * decay
            var = var * decay**2 + stationary * (1 - decay**2)
        predictive = var + NOISE**2
        residual = x[k, 1] - mean
        total = total - 0.5 * (residual**2 / predictive + torch.log(2 * math.pi * predictive))
        gain = var / predictive
        mean = mean + gain * residual
        var = (1 - gain) * var
    return total


def _log_prior(theta: torch.Tensor) -> torch.Tensor:
    inside = ((theta > LOW.double()) & (theta < HIGH.double())).all(-1)
    return torch.where(inside, 0.0, -torch.inf).double()


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0, draws: int = 200_000) -> torch.Tensor:
    r"""Samples :math:`(n, 3)` from :math:`p(\theta | x)` by importance resampling on the exact likelihood.

    A first round from the prior fits a Gaussian to the weighted draws; the second round
    proposes from a Student-t (3 degrees of freedom) with twice that covariance.

    Raises:
        RuntimeError: If the second round's effective sample size is below 3 × ``num_samples``
            (resampling would then repeat draws often enough to be detectable).
    """

    generator = torch.Generator().manual_seed(seed)
    low, high = LOW.double(), HIGH.double()
    theta = low + (high - low) * torch.rand(draws, 3, generator=generator, dtype=torch.float64)
    log_w = log_likelihood(theta, x)
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * theta).sum(0)
    centered = theta - mean
    cov = (w[:, None, None] * centered[:, :, None] * centered[:, None, :]).sum(0)
    cov = 2 * cov + 1e-8 * torch.eye(3, dtype=torch.float64)
    tril = torch.linalg.cholesky(cov)
    # a multivariate t: a Gaussian scaled by sqrt(df / chi2(df))
    z = torch.randn(draws, 3, generator=generator, dtype=torch.float64)
    chi2 = 2 * torch._standard_gamma(torch.full((draws,), 1.5, dtype=torch.float64), generator=generator)
    theta = mean + (z @ tril.T) * (3 / chi2).sqrt()[:, None]
    # the proposal's log-density: a multivariate t with df = 3
    solved = torch.linalg.solve_triangular(tril, (theta - mean).T, upper=False).T
    log_q = -(3 + 3) / 2 * torch.log1p((solved**2).sum(-1) / 3) - tril.diagonal().log().sum()
    log_w = log_likelihood(theta, x) + _log_prior(theta) - log_q
    w = torch.softmax(torch.nan_to_num(log_w, nan=-torch.inf), 0)
    ess = float(1.0 / (w**2).sum())
    if ess < 3 * num_samples:
        raise RuntimeError(f"the reference's effective sample size is {ess:.0f}, below 3 x {num_samples}.")
    index = torch.multinomial(w, num_samples, replacement=True, generator=generator)
    return theta[index].float()

