"""Tempered SMC over many posteriors at once, and the batched posterior of any observation."""

import math
import pytest
import torch
import torch.nn as nn

from torch.distributions import Normal

import sbikit

from sbikit import diagnostics as dx
from sbikit.priors import from_unconstrained
from sbikit.smc import temper


class GaussianLikelihood:
    r"""x ~ N(theta, noise^2 I): the likelihood contract of PerObservationPosterior, exactly."""

    kind = "analytic"

    def __init__(self, prior, noise):
        self.prior, self.noise = prior, noise
        dim = prior.event_shape[0]
        self.parameter_names = [f"t{i}" for i in range(dim)]
        self.x_shape = torch.Size([dim])
        self.network = nn.Linear(1, 1)
        self.transform = from_unconstrained(prior)
        self.calls = 0

    def log_prob(self, x, theta):
        self.calls += 1
        return Normal(theta, self.noise).log_prob(x).sum(-1)

    def trial_log_likelihood(self, u, trials):  # MCMCPosterior's contract, for batched=False
        return Normal(self.transform(u).unsqueeze(-2), self.noise).log_prob(trials).sum(-1)

    def posterior(self, x_obs, mcmc):
        return sbikit.MCMCPosterior(self, x_obs, mcmc)

    def config(self):
        return {}

    def check_counts(self, x, name):
        pass

    def check_support(self, x, name):
        pass


def exact_moments(prior, noise, x, draws=400_000):
    r"""The posterior mean and sd under a box prior, by importance sampling from the prior."""

    theta = prior.sample((draws,))
    w = torch.softmax(Normal(theta, noise).log_prob(x).sum(-1).double(), 0)[:, None]
    mean = (w * theta).sum(0)
    return mean.float(), (w * (theta - mean) ** 2).sum(0).sqrt().float()


def test_temper_draws_each_of_many_gaussian_posteriors():
    # prior N(0, 2^2), x_j ~ N(u, 0.5^2): posterior j is N(x_j / 4.25 / 0.25, 1 / 4.25) in each coordinate
    torch.manual_seed(0)
    x = torch.tensor([[0.0, 0.0], [3.0, -1.0], [-6.0, 6.0]])  # the last far in the prior's tail
    log_l = lambda u: Normal(u, 0.5).log_prob(x[:, None]).sum(-1)
    log_p = lambda u: Normal(0.0, 2.0).log_prob(u).sum(-1)
    out = temper(log_l, log_p, 2.0 * torch.randn(3, 4000, 2), settle=0.95)
    assert out.particles.shape == (3, 4000, 2) and bool((out.beta == 1).all())
    assert bool((out.moved >= 0.95).all()) and bool(((out.acceptance > 0.1) & (out.acceptance < 0.6)).all())
    mean, sd = x / 0.25 / 4.25, 1 / math.sqrt(4.25)
    # 4,000 particles correlated by resampling: an error of 0.1 sd is about 4 standard errors
    assert torch.allclose(out.particles.mean(1), mean, atol=0.1 * sd), out.particles.mean(1)
    assert torch.allclose(out.particles.std(1), torch.full((3, 2), sd), rtol=0.08), out.particles.std(1)
    # the target far in the tail needs more steps than the others, and all reach beta = 1
    assert out.steps > 3


def test_temper_refuses_a_target_with_no_finite_likelihood():
    log_l = lambda u: torch.where(torch.arange(2)[:, None] == 1, -math.inf, 0.0 * u.sum(-1))
    with pytest.raises(ValueError, match="target 1 has no particle"):
        temper(log_l, lambda u: 0.0 * u.sum(-1), torch.randn(2, 10, 1))
    with pytest.raises(ValueError, match=r"shape \(m, P, D\)"):
        temper(log_l, lambda u: u.sum(-1), torch.randn(10, 1))


@pytest.mark.parametrize("batched", [True, False])
def test_posterior_of_any_observation_matches_the_exact_posteriors(batched, monkeypatch):
    # under a box prior, for observations in the middle, near an edge and in a corner; batched in
    # groups of two observations
    from sbikit import posterior as module

    monkeypatch.setattr(module, "_BATCH_ROWS", 2 * 1000)
    torch.manual_seed(1)
    prior = sbikit.BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    likelihood = GaussianLikelihood(prior, 0.3)
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [2.9, -2.95]])
    posterior = sbikit.PerObservationPosterior(likelihood, sbikit.MCMCConfig(show_progress=False), batched=batched)
    draws = posterior.sample(1000, x=x)
    assert draws.shape == (1000, 3, 2) and bool(prior.support.check(draws).all())
    for j in range(3):
        mean, sd = exact_moments(prior, 0.3, x[j])
        assert bool(((draws[:, j].mean(0) - mean).abs() < 0.12 * sd).all()), (j, draws[:, j].mean(0), mean)
        assert bool(((draws[:, j].std(0) / sd - 1).abs() < 0.12).all()), (j, draws[:, j].std(0), sd)
    if batched:
        assert posterior.history["sampler"] == "tempered SMC" and len(posterior.history["moved"]) == 3
        assert min(posterior.history["moved"]) >= 0.95
        # one observation alone: (n, D)
        assert posterior.sample(50, x=x[0]).shape == (50, 2)


def test_batched_posterior_is_calibrated_and_saved_with_its_sampler(tmp_path):
    torch.manual_seed(2)
    prior = sbikit.BoxUniform(-2 * torch.ones(3), 2 * torch.ones(3))
    likelihood = GaussianLikelihood(prior, 0.5)
    theta = prior.sample((300,))
    test = sbikit.Simulations(theta, theta + 0.5 * torch.randn_like(theta))
    posterior = sbikit.PerObservationPosterior(likelihood, sbikit.MCMCConfig(show_progress=False))
    calls = likelihood.calls
    result = dx.sbc(posterior, test, num_samples=99)
    # 300 observations of 512 particles: one group, so every move is one call for all of them
    assert likelihood.calls - calls < 200, likelihood.calls - calls
    assert result.passed, result
    assert posterior.config()["batched"] is True
    again = sbikit.PerObservationPosterior(likelihood, batched=False)
    assert again.config()["batched"] is False
    with pytest.raises(TypeError, match="batched must be True or False"):
        sbikit.PerObservationPosterior(likelihood, batched="yes")


def test_batched_posterior_says_which_observation_has_no_finite_likelihood():
    prior = sbikit.BoxUniform(-torch.ones(1), torch.ones(1))
    likelihood = GaussianLikelihood(prior, 0.1)
    likelihood.log_prob = lambda x, theta: torch.where(x[..., 0] > 5, -math.inf, 0.0 * theta[..., 0])
    posterior = sbikit.PerObservationPosterior(likelihood)
    with pytest.raises(sbikit.SamplingError, match="observation 2 a finite likelihood"):
        posterior.sample(10, x=torch.tensor([[0.0], [0.5], [9.0]]))
