r"""Tempered sequential Monte Carlo from the prior, for many posteriors at once.

Each of :math:`m` targets :math:`\pi_j(u) \propto p(u)\, L_j(u)^{\beta_j}` starts at
:math:`\beta_j = 0` (the prior's draws) and raises its power step by step to 1: each step
reweights the particles by :math:`L_j^{\beta'_j - \beta_j}`, with :math:`\beta'_j` the largest
power that keeps a share ``ess`` of their effective sample size, resamples them
(systematically) and moves each by random-walk Metropolis steps on the tempered target, the
proposal's covariance that of its target's particles, its scale adapted towards a quarter
accepted. A target that reaches :math:`\beta = 1` before the others keeps moving at 1, which
leaves its posterior invariant. All :math:`m \times P` particles are evaluated in one call per
move, so a network behind the likelihood runs once per move whatever :math:`m`.

The broad tempered targets come first, so the particles reach the modes that hold mass, which
importance sampling from the prior misses when the likelihood is narrow.
:class:`sbikit.MCMCPosterior` seeds its mixture proposals from these particles (:math:`m = 1`);
:class:`sbikit.PerObservationPosterior` returns them as the posterior draws of many
observations, after moves at :math:`\beta = 1` that leave few particles where resampling put them.

Example:
    >>> prior = torch.distributions.Normal(0.0, 1.0)
    >>> x = torch.tensor([[-1.0], [2.0]])  # two observations, x ~ N(u, 0.5^2)
    >>> log_l = lambda u: torch.distributions.Normal(u, 0.5).log_prob(x[:, None]).sum(-1)
    >>> log_p = lambda u: prior.log_prob(u).sum(-1)
    >>> out = temper(log_l, log_p, prior.sample((2, 1000, 1)), settle=0.95)
    >>> out.particles.shape, bool((out.beta == 1).all())
    (torch.Size([2, 1000, 1]), True)
"""

__all__ = ["Tempered", "temper"]

import math
import torch

from collections.abc import Callable
from dataclasses import dataclass
from torch import Tensor

_BISECTIONS = 50  # bisection steps that find each next power


@dataclass
class Tempered:
    r"""The result of :func:`temper`: the particles :math:`(m, P, D)` (float32), each target's
    power :math:`(m,)` (1 unless ``max_steps`` ran out first), the tempering steps run, the
    moves' acceptance rate per target :math:`(m,)`, and the share of each target's particles
    that moved after the last resampling :math:`(m,)`."""

    particles: Tensor
    beta: Tensor
    steps: int
    acceptance: Tensor
    moved: Tensor


def _next_power(log_l: Tensor, beta: Tensor, ess: float, last: bool) -> tuple[Tensor, Tensor]:
    r"""Each target's next power :math:`(m,)`, whose weights keep a share ``ess`` of the effective
    sample size (1 where that already holds, or ``last``), and those weights :math:`(m, P)`."""

    def weights(power: Tensor) -> Tensor:
        return torch.softmax(torch.nan_to_num((power - beta).unsqueeze(-1) * log_l, nan=-math.inf), -1)

    def share(power: Tensor) -> Tensor:
        return 1.0 / (weights(power) ** 2).sum(-1) / log_l.shape[-1]

    one = torch.ones_like(beta)
    if last:
        return one, weights(one)
    low, high = beta.clone(), one.clone()
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        keeps = share(middle) >= ess
        low, high = torch.where(keeps, middle, low), torch.where(keeps, high, middle)
    power = torch.where(share(one) >= ess, one, torch.maximum(low, beta + 1e-12).clamp(max=1.0))
    return power, weights(power)


def _spread(u: Tensor) -> Tensor:
    r"""The Cholesky factor :math:`(m, D, D)` of the covariance of each target's particles :math:`(m, P, D)`."""

    centred = u - u.mean(-2, keepdim=True)
    covariance = centred.mT @ centred / max(u.shape[-2] - 1, 1)
    return torch.linalg.cholesky(covariance + 1e-9 * torch.eye(u.shape[-1], dtype=u.dtype))


def temper(
    log_likelihood: Callable[[Tensor], Tensor],
    log_prior: Callable[[Tensor], Tensor],
    u: Tensor,
    ess: float = 0.8,
    moves: int = 5,
    max_steps: int = 200,
    settle: float = 0.0,
    max_settle: int = 100,
) -> Tempered:
    r"""Draws from :math:`m` posteriors at once by tempered sequential Monte Carlo.

    Arguments:
        log_likelihood: :math:`\log L_j(u)` of particles :math:`(m, P, D)` (float32), :math:`(m, P)`,
            without gradients; :math:`-\infty` or NaN where it is not finite.
        log_prior: :math:`\log p(u)` of particles :math:`(m, P, D)` (float64), :math:`(m, P)`.
        u: The prior's draws :math:`(m, P, D)`, the starting particles of each target.
        ess: The share of the effective sample size each step keeps.
        moves: Random-walk Metropolis moves of every particle after each step.
        max_steps: Tempering steps at most; the last goes straight to :math:`\beta = 1`.
        settle: After the last step, moves at :math:`\beta = 1` go on until this share of every
            target's particles has moved since the last resampling (or ``max_settle`` moves).
        max_settle: The most moves that ``settle`` adds.

    Returns:
        A :class:`Tempered`; the draws use torch's global generator.

    Raises:
        ValueError: If ``u`` is not :math:`(m, P, D)` with :math:`P \geq 2`, or a target has no
            starting particle with a finite likelihood.
    """

    if u.dim() != 3 or u.shape[1] < 2:
        raise ValueError(f"u must have shape (m, P, D) with P >= 2 particles, got {tuple(u.shape)}.")
    m, count, dim = u.shape
    u = u.double()
    log_l, log_p = log_likelihood(u.float()).double(), log_prior(u).double()
    empty = ~torch.isfinite(log_l).any(-1)
    if bool(empty.any()):
        raise ValueError(f"target {int(empty.nonzero()[0])} has no particle with a finite likelihood.")
    beta, scale = torch.zeros(m, dtype=torch.float64), torch.full((m,), 2.38 / math.sqrt(dim), dtype=torch.float64)
    positions = torch.arange(count, dtype=torch.float64)
    accepted, tried = torch.zeros(m, dtype=torch.float64), 0
    moved = torch.zeros(m, count, dtype=torch.bool)

    def move(tril: Tensor) -> None:
        nonlocal u, log_l, log_p, scale, accepted, tried, moved
        proposed = u + scale[:, None, None] * torch.randn_like(u) @ tril.mT
        new_l, new_p = log_likelihood(proposed.float()).double(), log_prior(proposed).double()
        log_ratio = torch.nan_to_num(beta[:, None] * (new_l - log_l) + new_p - log_p, nan=-math.inf)
        accept = torch.log(torch.rand(m, count, dtype=torch.float64)) < log_ratio
        u = torch.where(accept[..., None], proposed, u)
        log_l, log_p = torch.where(accept, new_l, log_l), torch.where(accept, new_p, log_p)
        rate = accept.double().mean(-1)
        scale = scale * torch.exp(rate - 0.25)
        accepted, tried, moved = accepted + rate, tried + 1, moved | accept

    steps = 0
    for steps in range(1, max_steps + 1):
        beta, weights = _next_power(log_l, beta, ess, last=steps == max_steps)
        cumulative = torch.cumsum(weights, -1)
        spots = (positions + torch.rand(m, 1, dtype=torch.float64)) / count * cumulative[:, -1:]
        index = torch.searchsorted(cumulative, spots).clamp(max=count - 1)
        u = u.gather(1, index[..., None].expand(m, count, dim))
        log_l, log_p = log_l.gather(1, index), log_p.gather(1, index)
        moved = torch.zeros(m, count, dtype=torch.bool)
        tril = _spread(u)
        for _ in range(moves):
            move(tril)
        if bool((beta >= 1).all()):
            break
    tril = _spread(u)
    for _ in range(max_settle if settle > 0 else 0):
        if bool((moved.double().mean(-1) >= settle).all()):
            break
        move(tril)
    return Tempered(u.float(), beta, steps, accepted / max(tried, 1), moved.double().mean(-1))
