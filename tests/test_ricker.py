import math
import numpy as np
import pytest
import torch

from scipy.stats import poisson

import sbikit

from sbikit.simulators import ricker

TRUTH = np.array([3.8, 0.3, 10.0])


def test_simulator_draws_reproducible_counts_from_its_rng():
    x = ricker.simulator(TRUTH, np.random.default_rng(0))
    assert x.shape == (50,) and x.dtype == np.float64
    assert bool((x >= 0).all()) and bool((x == np.round(x)).all())
    assert np.array_equal(x, ricker.simulator(TRUTH, np.random.default_rng(0)))
    assert not np.array_equal(x, ricker.simulator(TRUTH, np.random.default_rng(1)))
    data = sbikit.simulate(ricker.simulator, ricker.prior(), 20, batched=False, numpy=True, rng=True, seed=0,
                           show_progress=False)
    assert data.x.shape == (20, 50) and not data.failures


def test_batched_simulator_matches_the_unbatched_one_and_phi_scales_the_counts():
    theta = torch.tensor(TRUTH, dtype=torch.float32)
    torch.manual_seed(0)
    x = ricker.batched_simulator(theta.expand(2000, 3))
    assert x.shape == (2000, 50) and ricker.batched_simulator(theta).shape == (50,)
    rng = np.random.default_rng(0)
    y = np.stack([ricker.simulator(TRUTH, rng) for _ in range(2000)])
    # about a third of the counts are zero at the classic truth (sd of each share about 0.003)
    assert abs(float((x == 0).double().mean()) - 0.37) < 0.02 and abs((y == 0).mean() - 0.37) < 0.02
    assert abs(float(x.double().mean()) / y.mean() - 1) < 0.03
    # phi scales the rate, not the dynamics: the same process noise gives twice the counts, up to
    # the Poisson draws (relative sd about 1 / sqrt(total count) = 0.002)
    torch.manual_seed(1)
    x_10 = ricker.batched_simulator(theta.expand(1000, 3))
    torch.manual_seed(1)
    x_20 = ricker.batched_simulator((theta * torch.tensor([1.0, 1.0, 2.0])).expand(1000, 3))
    assert abs(float(x_20.sum() / x_10.sum()) - 2) < 0.01
    # a batched run gives the same simulations whatever its batch size
    a = sbikit.simulate(ricker.batched_simulator, ricker.prior(), 12, seed=3, batch_size=12, show_progress=False)
    b = sbikit.simulate(ricker.batched_simulator, ricker.prior(), 12, seed=3, batch_size=5, show_progress=False)
    assert torch.equal(a.x, b.x)


def test_filter_is_exact_when_the_dynamics_are_deterministic():
    # log r = 2.3 is a stable 2-cycle, so sigma = 1e-9 keeps every particle on one trajectory
    theta = np.array([2.3, 1e-9, 10.0])
    x = ricker.simulator(theta, np.random.default_rng(0))
    n, rates = 1.0, []
    for t in range(100):
        n = math.exp(2.3) * n * math.exp(-n)
        rates.append(10.0 * n)
    exact = poisson.logpmf(x, np.array(rates[50:])).sum()
    assert len(set(x[::2])) > 1  # the counts are random, though the rates alternate
    estimate = ricker.log_likelihood(theta[None], x, num_particles=50, seed=0)
    assert estimate.shape == (1,) and abs(float(estimate[0]) - exact) < 1e-5


def test_filter_matches_plain_monte_carlo_on_a_short_chaotic_series():
    # p(x_1:4 | theta) = E[prod_t Poisson(x_t | phi N_t)] over trajectories from N_0 = 1: plain Monte Carlo
    # (relative sd about 0.03) against 20 filters of 2,000 particles (log sd about 0.1 each).
    # A filter that resamples without its weights, or not at all, is off by 4 nats.
    x = ricker.simulator(TRUTH, np.random.default_rng(3))[:4]
    rng = np.random.default_rng(0)
    n, log_p = np.ones(400_000), 0.0
    for t in range(54):
        n = math.exp(TRUTH[0]) * n * np.exp(-n + TRUTH[1] * rng.standard_normal(n.shape))
        if t >= 50:
            log_p = log_p + poisson.logpmf(x[t - 50], TRUTH[2] * n)
    monte_carlo = math.log(np.exp(log_p - log_p.max()).mean()) + log_p.max()
    estimates = ricker.log_likelihood(np.tile(TRUTH, (20, 1)), x, num_particles=2000, seed=0)
    assert abs(float(torch.logsumexp(estimates, 0)) - math.log(20) - monte_carlo) < 0.15
    assert torch.equal(estimates, ricker.log_likelihood(np.tile(TRUTH, (20, 1)), x, num_particles=2000, seed=0))


def _check_reference(num_particles):
    x = ricker.simulator(TRUTH, np.random.default_rng(115))
    samples = ricker.reference_posterior(x, 20_000, seed=0, num_particles=num_particles)
    assert samples.shape == (20_000, 3) and bool(ricker.prior().support.check(samples).all())
    low, high = torch.quantile(samples.double(), torch.tensor([0.005, 0.995], dtype=torch.float64), dim=0)
    assert bool((low < torch.from_numpy(TRUTH)).all() and (torch.from_numpy(TRUTH) < high).all()), (low, high)
    return samples


def test_reference_posterior_covers_the_truth_cheaply():
    # few particles: noisy cell weights, but the same grid and the same unbiased likelihood estimates
    _check_reference(num_particles=50)
    x = ricker.simulator(TRUTH, np.random.default_rng(115))
    a = ricker.reference_posterior(x, 1000, seed=0, num_particles=20)
    assert torch.equal(a, ricker.reference_posterior(x, 1000, seed=0, num_particles=20))
    assert not torch.equal(a, ricker.reference_posterior(x, 1000, seed=1, num_particles=20))
    with pytest.raises(ValueError, match="50 non-negative counts"):
        ricker.reference_posterior(np.ones(49), 10)


def test_reference_posterior_samples_the_density_on_its_grid(monkeypatch):
    # an exact Gaussian likelihood in place of the filter: the refined grid, the cells' volumes and
    # the jitter must give back its mean and sd (its mass outside the box is under 1e-3)
    mean, sd = np.array([3.7, 0.3, 10.0]), np.array([0.1, 0.06, 0.4])

    def gaussian(theta, x, num_particles, rng):
        return -0.5 * (((theta - mean) / sd) ** 2).sum(1)

    monkeypatch.setattr(ricker, "_blocks", gaussian)
    samples = ricker.reference_posterior(np.zeros(50), 200_000, seed=0).double()
    assert np.allclose(samples.mean(0), mean, atol=0.01 * sd), samples.mean(0)  # 4.5 Monte Carlo errors
    assert np.allclose(samples.std(0), sd, rtol=0.01), samples.std(0)


@pytest.mark.slow
def test_reference_posterior_covers_the_truth():
    _check_reference(num_particles=2000)
