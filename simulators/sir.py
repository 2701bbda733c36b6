r"""A stochastic SIR epidemic observed as noisy daily case counts, over a varying number of days.

A population of :math:`N = 1000` holds :math:`S` susceptible, :math:`I` infected and
:math:`N - S - I` recovered people. Infection and recovery are reactions of a continuous-time
Markov chain, simulated exactly by :func:`sbikit.gillespie`:

.. math::
    S + I \xrightarrow{\beta S I / N} 2I, \qquad I \xrightarrow{\gamma I} R.

Each new infection is reported with probability :math:`\rho = 0.5`, independently, which is
exact binomial thinning done inside the chain: infection is split into a reported and an
unreported reaction with rates :math:`\rho \beta S I / N` and :math:`(1 - \rho) \beta S I / N`.
The observation on day :math:`k` is the number of cases reported during day :math:`k`,

.. math:: X_k \sim \mathrm{Binomial}\left(\text{new infections on day } k, \rho\right),
    \quad k = 1, \dots, T,

with :math:`I_0 = 10` infected at day 0 and the length :math:`T` drawn uniformly from 30 to
100 days per series.

Parameters: the infection rate :math:`\beta \sim \mathrm{LogNormal}(\log 0.4, 0.5)` and the
recovery rate :math:`\gamma \sim \mathrm{LogNormal}(\log 1/8, 0.2)`, per day, as in the SBI
benchmark (Lueckmann et al., 2021), whose SIR is the deterministic version of this one.
"""

__all__ = ["PARAMETER_NAMES", "POPULATION", "INFECTED", "REPORTING", "model", "prior"]

import math
import numpy as np
import torch

from torch.distributions import LogNormal

import sbikit

PARAMETER_NAMES = ["beta", "gamma"]
POPULATION = 1000
INFECTED = 10
REPORTING = 0.5

# The state is (S, I, C): susceptible, infected, and the cases reported so far.
# Reactions: a reported infection, an unreported infection, a recovery.
STOICHIOMETRY = torch.tensor([[-1.0, 1.0, 1.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 0.0]])


def prior() -> sbikit.ProductPrior:
    loc = torch.tensor([math.log(0.4), math.log(1 / 8)])
    return sbikit.ProductPrior([LogNormal(loc, torch.tensor([0.5, 0.2]))])


def _propensities(state: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    infection = theta[:, :1] * state[:, :1] * state[:, 1:2] / POPULATION
    return torch.cat([REPORTING * infection, (1 - REPORTING) * infection, theta[:, 1:] * state[:, 1:2]], -1)


_reactions = sbikit.gillespie(STOICHIOMETRY, _propensities)


def _trajectory(theta: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
    r"""The cases reported on each of ``days`` :math:`(B, T)`, :math:`(B, T)`: the differences of
    the cumulative count, from day 0 when the first people are infected."""

    start = torch.tensor([POPULATION - INFECTED, INFECTED, 0.0]).expand(len(theta), 3)
    counts = _reactions(start, theta, torch.cat([days[:, :1] - 1, days], -1))
    return counts[:, 1:, 2] - counts[:, :-1, 2]


def model(days: tuple[int, int] = (30, 100)) -> sbikit.StateSpace:
    r"""The model as :class:`sbikit.StateSpace`: series of ``days`` (an inclusive range) days,
    :math:`x` holding (day, reported cases) per step."""

    low, high = days
    if not 1 <= low <= high:
        raise ValueError(f"days must be an inclusive range (low, high) with 1 <= low <= high, got {days!r}.")

    def times(rng: np.random.Generator) -> torch.Tensor:
        return torch.arange(1.0, rng.integers(low, high + 1) + 1.0)

    return sbikit.StateSpace(
        prior(),
        times=times,
        trajectory=_trajectory,
        parameter_names=PARAMETER_NAMES,
    )
