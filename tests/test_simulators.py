import math
import torch

from sbikit.simulators import gaussian_linear, two_moons


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
