r"""A stochastic Lotka–Volterra predator–prey model observed at irregular times.

Prey :math:`X` and predators :math:`Y` are counts that change by four reactions, simulated
exactly by :func:`sbikit.gillespie` (a Markov jump process, as in Papamakarios et al., 2019):

.. math::
    X \xrightarrow{\alpha X} 2X, \qquad X + Y \xrightarrow{\beta X Y} Y, \qquad
    Y \xrightarrow{\gamma Y} \varnothing, \qquad X + Y \xrightarrow{\delta X Y} X + 2Y,

whose mean field is the ODE of the SBI benchmark, :math:`\dot x = \alpha x - \beta x y`,
:math:`\dot y = \delta x y - \gamma y`. It starts from :math:`(X_0, Y_0) = (100, 200)` at
:math:`t = 0`. The observation times are :math:`t = 0` and a Poisson process of rate 2 on
:math:`(0, 20]`, drawn per series (about 41 times, irregular), and each count is observed
with log-normal noise:

.. math:: x_k = \log(1 + X_{t_k}) + 0.1\,\varepsilon_k, \quad y_k = \log(1 + Y_{t_k}) + 0.1\,\eta_k.

Parameters: :math:`(\alpha, \beta, \gamma, \delta)`, independent log-normal with medians
:math:`(1, 0.005, 0.5, 0.005)` and log-scale sd 0.3: the rates of Papamakarios et al. (2019)
with half their encounter rates, so that the populations are twice as large. The steady state
:math:`(\gamma / \delta, \alpha / \beta)` is then near the start, and within 20 time units
about 6% of the series lose their prey (and then their predators: an absorbing state) and
under 1% their predators. Where the predators die out, the prey grow without bound: a series
that needs more than 50,000 reactions is recorded as a failed simulation (about 1 in 2,000;
see :func:`sbikit.gillespie`).
"""

__all__ = ["NOISE", "PARAMETER_NAMES", "model", "prior"]

import math
import numpy as np
import torch

from torch.distributions import LogNormal

import sbikit

PARAMETER_NAMES = ["alpha", "beta", "gamma", "delta"]
NOISE = 0.1
MEDIANS = (1.0, 0.005, 0.5, 0.005)
SPREAD = 0.3
INITIAL = (100.0, 200.0)
HORIZON = 20.0
RATE = 2.0  # observations per unit time
MAX_REACTIONS = 50_000

# The state is (X, Y): prey and predators. Reactions: prey birth, predation, predator death,
# predator birth.
STOICHIOMETRY = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


def prior() -> sbikit.ProductPrior:
    loc = torch.tensor([math.log(m) for m in MEDIANS])
    return sbikit.ProductPrior([LogNormal(loc, torch.full((4,), SPREAD))])


def _propensities(state: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    prey, predators = state[:, :1], state[:, 1:]
    encounters = prey * predators
    return theta * torch.cat([prey, encounters, predators, encounters], -1)


_reactions = sbikit.gillespie(STOICHIOMETRY, _propensities, max_reactions=MAX_REACTIONS)


def _trajectory(theta: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    counts = _reactions(torch.tensor(INITIAL).expand(len(theta), 2), theta, times)
    return torch.log1p(counts) + NOISE * torch.randn_like(counts)


def model(horizon: float = HORIZON) -> sbikit.StateSpace:
    r"""The model as :class:`sbikit.StateSpace`: series observed at :math:`t = 0` and at the
    times of a Poisson process of rate 2 on :math:`(0, \text{horizon}]`, :math:`x` holding
    (time, log prey, log predators) per step."""

    if not horizon > 0:
        raise ValueError(f"horizon must be a positive time, got {horizon!r}.")

    def times(rng: np.random.Generator) -> torch.Tensor:
        arrivals = np.sort(rng.uniform(0.0, horizon, rng.poisson(RATE * horizon)))
        return torch.from_numpy(np.concatenate([[0.0], arrivals]))

    return sbikit.StateSpace(
        prior(),
        times=times,
        trajectory=_trajectory,
        parameter_names=PARAMETER_NAMES,
    )
