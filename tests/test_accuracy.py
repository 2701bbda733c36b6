"""Accuracy against exact posteriors, measured by C2ST (0.5 is perfect)."""

import pytest
import torch

import sbikit

from sbikit.diagnostics import c2st
from sbikit.simulators import gaussian_linear, hierarchical_gaussian, two_moons


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


@pytest.mark.slow
def test_hierarchical_gaussian_joint_posterior():
    # HierarchicalNPE on groups of 10 to 100 members against the exact joint posterior of
    # the globals (grid) and one member's local (its normal conditional), two held-out groups.
    # Measured (1 thread): global 0.516 and 0.523, joint 0.511 and 0.523; the bound leaves
    # room for the training's scatter between machines. The targets at 20,000 groups
    # are 0.60 and 0.65.
    model = hierarchical_gaussian.model(num_members=(10, 100))
    data = sbikit.simulate(model, 5_000, seed=0, show_progress=False)
    joint = sbikit.HierarchicalNPE(model, training=sbikit.TrainConfig(show_progress=False)).fit(data)
    test = sbikit.simulate(model, 2, seed=1_000_000, show_progress=False)
    global_scores, joint_scores = [], []
    for k in range(2):
        x = test.x[k][test.mask[k]]
        reference = hierarchical_gaussian.reference_posterior(x, 5_000, seed=k)
        local = hierarchical_gaussian.local_posterior(reference, x[0, 0], seed=k + 500_000)
        g, l = joint.sample_joint(5_000, x=x)
        global_scores.append(c2st(reference, g).accuracy)
        joint_scores.append(c2st(torch.cat([reference, local], 1), torch.cat([g, l[:, 0]], 1)).accuracy)
    assert max(global_scores) < 0.57, global_scores
    assert max(joint_scores) < 0.57, joint_scores


@pytest.mark.slow
def test_a_posterior_cut_off_by_the_box_matches_the_exact_one_at_the_edge():
    # the README's example: x = theta + 0.1 eps under a box of half-width 2, whose exact posterior is a
    # normal truncated to the box. Mapped onto the line (bounds="map"), the flow smoothed the cut into
    # a cliff and scored 0.30 nats below the exact posterior where a parameter lay within 0.2 of a
    # bound; truncated (bounds="truncate"), 0.02-0.03 below, and within 0.01 inside
    # (benchmarks/calibration.py --only readme)
    prior = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    simulator = lambda theta: theta + 0.1 * torch.randn_like(theta)  # noqa: E731
    data = sbikit.simulate(simulator, prior, 5_000, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, bounds="truncate", training=sbikit.TrainConfig(show_progress=False)).fit(data)
    test = sbikit.simulate(simulator, prior, 3_000, seed=1, show_progress=False)
    normal = torch.distributions.Normal(test.x.double(), 0.1)
    mass = normal.cdf(torch.tensor(2.0, dtype=torch.float64)) - normal.cdf(torch.tensor(-2.0, dtype=torch.float64))
    exact = (normal.log_prob(test.theta.double()) - mass.log()).sum(-1)
    learned = posterior.log_prob(test.theta.unsqueeze(0), x=test.x)[0].double()
    edge = (test.theta.abs() > 1.8).any(-1)
    assert exact[edge].mean() - learned[edge].mean() < 0.1, (exact[edge].mean(), learned[edge].mean())
    assert exact[~edge].mean() - learned[~edge].mean() < 0.05
    draws = posterior.sample(200, x=test.x[:200])
    assert bool(((draws > -2) & (draws < 2)).all())


@pytest.mark.slow
def test_a_long_vector_by_default():
    # 24 noisy values on a grid, a level and a trend under a normal prior: the exact posterior is
    # normal. A vector of 20 values or more races an MLP against a convolution by default; whichever
    # is kept must match the exact posterior, as the MLP alone does on short vectors
    steps = torch.linspace(0.0, 1.0, 24)
    design = torch.stack([torch.ones(24), steps], 1)
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)
    simulator = lambda theta: theta @ design.T + 0.3 * torch.randn(len(theta), 24)  # noqa: E731
    data = sbikit.simulate(simulator, prior, 3_000, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(show_progress=False)).fit(data)
    assert set(posterior.history["summary_race"]) == {"mlp", "series"}
    test = sbikit.simulate(simulator, prior, 2, seed=1, show_progress=False)
    covariance = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + design.double().T @ design.double() / 0.09)
    scores = []
    for k in range(2):
        mean = covariance @ design.double().T @ test.x[k].double() / 0.09
        exact = torch.distributions.MultivariateNormal(mean, covariance).sample((5_000,)).float()
        scores.append(c2st(exact, posterior.sample(5_000, x=test.x[k])).accuracy)
    assert max(scores) < 0.60, scores
