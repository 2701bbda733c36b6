"""Accuracy against exact posteriors, measured by C2ST (0.5 is perfect)."""

import pytest
import torch

import sbikit

from sbikit.diagnostics import c2st
from sbikit.simulators import gaussian_linear, two_moons


def _c2st(posterior, module, seed):
    prior = module.prior()
    observed = sbikit.simulate(module.simulator, prior, 1, seed=1000 + seed, show_progress=False)
    x = observed.x[0]
    reference = module.reference_posterior(x, 5_000, seed=seed)
    return c2st(reference, posterior.sample(5_000, x=x)).accuracy


@pytest.mark.slow
def test_gaussian_linear_small_budget():
    prior = gaussian_linear.prior()
    data = sbikit.simulate(gaussian_linear.simulator, prior, 3_000, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(show_progress=False)).fit(data)
    # measured 0.54 here (0.69 before the regression adjustment); returning the prior, or a
    # posterior off by a scale of 2, scores above 0.9
    assert _c2st(posterior, gaussian_linear, seed=0) < 0.60


@pytest.mark.slow
# measured (observations 0 and 1): two_moons 0.567 and 0.532, gaussian_linear 0.511 and 0.513; the
# bounds leave room for the training's scatter between machines (about +-0.03 on two_moons)
@pytest.mark.parametrize(
    "module, bound", [(two_moons, 0.61), (gaussian_linear, 0.56)], ids=["two_moons", "gaussian_linear"]
)
def test_ten_thousand_simulations(module, bound):
    prior = module.prior()
    data = sbikit.simulate(module.simulator, prior, 10_000, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(show_progress=False)).fit(data)
    scores = [_c2st(posterior, module, seed) for seed in range(2)]
    assert max(scores) < bound, scores
