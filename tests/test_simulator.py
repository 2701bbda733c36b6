"""sbikit.Simulator: one object carries a simulator's calling convention to every function that runs it."""

import math
import numpy as np
import pytest
import torch

import sbikit

from sbikit import diagnostics as dx
from sbikit.simulators import gaussian_linear
from test_diagnostics_calibration import Analytic

NOISE = math.sqrt(gaussian_linear.NOISE_VARIANCE)


def numpy_one_at_a_time(theta, rng):
    """gaussian_linear as a user may write it: one parameter vector, numpy, its own generator."""
    return theta + NOISE * rng.standard_normal(theta.shape)


@pytest.fixture(scope="module")
def simulator():
    return sbikit.Simulator(numpy_one_at_a_time, gaussian_linear.prior(), batched=False, numpy=True, rng=True)


def test_simulate_with_keywords_builds_the_same_simulator(simulator):
    prior = gaussian_linear.prior()
    by_keywords = sbikit.simulate(numpy_one_at_a_time, prior, 50, seed=3, batched=False, numpy=True, rng=True,
                                  show_progress=False)
    by_object = sbikit.simulate(simulator, 50, seed=3, show_progress=False)
    assert torch.equal(by_keywords.theta, by_object.theta) and torch.equal(by_keywords.x, by_object.x)
    noise = (by_object.x - by_object.theta).double()
    assert abs(float(noise.std()) - NOISE) < 0.03  # drawn from the generator it was handed
    # a store made one way is resumed the other way: the same run
    assert sbikit.simulate(sbikit.Simulator(numpy_one_at_a_time, batched=False, numpy=True, rng=True), prior, 50,
                           seed=3, show_progress=False).x.equal(by_object.x)


def test_check_and_ppc_run_a_numpy_rng_simulator(simulator):
    x_obs = torch.as_tensor(numpy_one_at_a_time(np.full(10, 0.3), np.random.default_rng(1)), dtype=torch.float32)
    report = dx.check(Analytic(), simulator, x_obs=x_obs, num_simulations=300, num_samples=100)
    assert report.passed, report
    assert report.ppc is not None and report.misspecification is not None
    # the replicated data came from the simulator at the posterior draws, with its own noise
    ppc = report.ppc
    residual = ppc.predictive - ppc.samples
    assert abs(residual.std() - NOISE) < 0.02 and abs(np.corrcoef(residual[:, 0], ppc.samples[:, 0])[0, 1]) < 0.15
    # a misspecified observation, on test simulations made from the simulator
    test = sbikit.simulate(simulator, 500, seed=5, show_progress=False)
    far = x_obs + 4 * NOISE * torch.randn(10, generator=torch.Generator().manual_seed(0))
    assert dx.misspecification(Analytic(), test, far).rejected
    again = dx.ppc(Analytic(), simulator, x_obs, num_samples=50, seed=2)
    assert np.array_equal(again.predictive, dx.ppc(Analytic(), simulator, x_obs, num_samples=50, seed=2).predictive)


def test_bad_simulators_are_refused(simulator):
    with pytest.raises(TypeError, match="function must be callable"):
        sbikit.Simulator(3)
    with pytest.raises(TypeError, match="numpy must be True or False"):
        sbikit.Simulator(numpy_one_at_a_time, numpy="yes")
    with pytest.raises(TypeError, match="batched do not apply to a Simulator"):
        sbikit.simulate(simulator, 10, batched=False)
    with pytest.raises(TypeError, match="holds its own prior"):
        sbikit.simulate(simulator, gaussian_linear.prior(), 10)
    with pytest.raises(TypeError, match="needs a prior"):
        sbikit.simulate(sbikit.Simulator(numpy_one_at_a_time, batched=False, numpy=True, rng=True), num_simulations=10)
