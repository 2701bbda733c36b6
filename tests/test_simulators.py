import math
import torch

import pytest

from sbikit.simulators import gaussian_linear, poisson_glm, sinusoid, slcp, two_moons


def test_two_moons_reference_matches_a_grid_posterior():
    x = torch.tensor([0.1, -0.05])
    samples = two_moons.reference_posterior(x, 20_000, seed=0)
    assert samples.shape == (20_000, 2) and bool((samples.abs() <= 1).all())

    # p(x | theta) = p_P(x - g(theta)), with p_P the density of (r cos a + 0.25, r sin a)
    n = 800
    axis = torch.linspace(-1, 1, n + 1)
    axis = ((axis[1:] + axis[:-1]) / 2).double()
    t1, t2 = torch.meshgrid(axis, axis, indexing="ij")
    q0 = x[0] + (t1 + t2).abs() / math.sqrt(2) - 0.25
    q1 = x[1] - (t2 - t1) / math.sqrt(2)
    r = torch.sqrt(q0**2 + q1**2)
    density = torch.exp(-0.5 * ((r - 0.1) / 0.01) ** 2) / r * (q0 > 0)
    density = density / density.sum()
    grid_mean = torch.stack([(density * t1).sum(), (density * t2).sum()])
    grid_sd = torch.stack([(density * (t1 - grid_mean[0]) ** 2).sum(), (density * (t2 - grid_mean[1]) ** 2).sum()]).sqrt()
    assert torch.allclose(samples.double().mean(0), grid_mean, atol=0.01)
    assert torch.allclose(samples.double().std(0), grid_sd, atol=0.01)


def test_two_moons_simulator_shapes():
    theta = two_moons.prior().sample((5,))
    assert two_moons.simulator(theta).shape == (5, 2)


def test_gaussian_linear_posterior_is_analytic():
    prior = gaussian_linear.prior()
    theta = prior.sample((200_000,))
    x = gaussian_linear.simulator(theta)
    # among simulations, E[theta | x] = x / 2: regress theta on x
    slope = (theta * x).sum(0) / (x * x).sum(0)
    assert torch.allclose(slope, torch.full((10,), 0.5), atol=0.01)
    ref = gaussian_linear.reference_posterior(torch.ones(10), 50_000, seed=1)
    assert torch.allclose(ref.mean(0), torch.full((10,), 0.5), atol=0.01)
    assert torch.allclose(ref.var(0), torch.full((10,), 0.05), atol=0.003)


@pytest.mark.parametrize("module", [poisson_glm, sinusoid], ids=["poisson_glm", "sinusoid"])
def test_grid_reference_matches_importance_sampling(module):
    # an independent estimate of the posterior's mean and sd: prior draws weighted by the likelihood
    prior = module.prior()
    torch.manual_seed(0)
    x = module.simulator(prior.sample((2,)))
    draws = prior.sample((400_000,))
    for x_o in x:
        log_w = module.log_posterior(draws, x_o) - prior.log_prob(draws).double()
        w = torch.softmax(log_w, 0)[:, None]
        mean = (w * draws.double()).sum(0)
        sd = (w * (draws.double() - mean) ** 2).sum(0).sqrt()
        samples = module.reference_posterior(x_o, 50_000, seed=1).double()
        assert bool(prior.support.check(samples.float()).all())
        # tolerance: a few Monte Carlo errors of 50,000 draws (sd / 224) and of the weights
        assert torch.allclose(samples.mean(0), mean, atol=0.03 * float(sd.max()) + 0.005), (samples.mean(0), mean)
        assert torch.allclose(samples.std(0), sd, rtol=0.05), (samples.std(0), sd)


def test_count_and_sinusoid_simulators():
    theta = poisson_glm.prior().sample((1000,))
    x = poisson_glm.simulator(theta)
    assert x.shape == (1000, 10) and bool((x == x.round()).all()) and bool((x >= 0).all())
    # the mean count at t_j is exp(theta_1 + theta_2 t_j): check it on the row average
    rate = torch.exp(theta[:, :1] + theta[:, 1:] * poisson_glm.TIMES)
    assert abs(float((x - rate).mean())) < 0.1
    theta = sinusoid.prior().sample((4000,))
    residual = sinusoid.simulator(theta) - theta[:, :1] * torch.sin(theta[:, 1:] * sinusoid.TIMES)
    assert abs(float(residual.std()) - 1.0) < 0.02


def test_slcp_draws_are_gaussian_with_the_stated_mean_and_covariance():
    theta = torch.tensor([0.5, -1.0, 1.2, -0.9, 0.6])
    torch.manual_seed(0)
    x = slcp.simulator(theta.expand(50_000, 5))
    assert x.shape == (50_000, 8)
    draws = x.reshape(-1, 2).double()  # 200,000 draws, 4 per simulation
    s1, s2, rho = 1.2**2, 0.9**2, math.tanh(0.6)
    cov = torch.tensor([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]], dtype=torch.float64)
    assert torch.allclose(draws.mean(0), theta[:2].double(), atol=0.015)  # 4.5 standard errors
    assert torch.allclose(draws.T.cov(), cov, rtol=0.03)
    # the four draws of one simulation are independent of each other
    pairs = x.reshape(-1, 4, 2)[:, :2, 0].double()
    assert abs(float(torch.corrcoef(pairs.T)[0, 1])) < 0.02
    assert slcp.simulator(theta, num_draws=1).shape == (2,)


@pytest.mark.parametrize("theta", [[0.5, -0.5, 1.7, -1.9, -0.8], [-1.0, 1.5, -1.4, 1.6, 1.2]])
def test_slcp_reference_matches_importance_sampling_and_has_four_equal_modes(theta):
    # an independent estimate: 2,000,000 prior draws weighted by the exact likelihood. Scales
    # near 2 give a broad posterior, where the weights' effective sample size is in the thousands
    torch.manual_seed(1)
    x_o = slcp.simulator(torch.tensor(theta))
    draws = slcp.prior().sample((2_000_000,)).double()
    w = torch.softmax(slcp.log_likelihood(draws, x_o), 0)[:, None]
    ess = float(1 / (w**2).sum())
    assert ess > 1_000
    folded = torch.cat([draws[:, :2], draws[:, 2:4].abs(), draws[:, 4:]], -1)
    mean = (w * folded).sum(0)
    sd = (w * (folded - mean) ** 2).sum(0).sqrt()
    samples = slcp.reference_posterior(x_o, 50_000, seed=1).double()
    assert samples.shape == (50_000, 5) and bool(slcp.prior().support.check(samples.float()).all())
    folded = torch.cat([samples[:, :2], samples[:, 2:4].abs(), samples[:, 4:]], -1)
    # tolerance: 4 Monte Carlo errors of the weighted estimate, sd / sqrt(ESS)
    assert torch.allclose(folded.mean(0), mean, atol=4 * float(sd.max()) / math.sqrt(ess)), (folded.mean(0), mean)
    assert torch.allclose(folded.std(0), sd, rtol=0.05), (folded.std(0), sd)
    # the signs of theta_3 and theta_4 are independent fair coins: a quarter of the mass per mode
    quadrants = torch.stack([(samples[:, 2] > 0) & (samples[:, 3] > 0), (samples[:, 2] < 0) & (samples[:, 3] > 0),
                             (samples[:, 2] > 0) & (samples[:, 3] < 0), (samples[:, 2] < 0) & (samples[:, 3] < 0)])
    assert torch.allclose(quadrants.double().mean(1), torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)
    # the same x as four trials of shape (2,) gives the same posterior
    assert torch.equal(slcp.reference_posterior(x_o.reshape(4, 2), 1_000, seed=2),
                       slcp.reference_posterior(x_o, 1_000, seed=2))
