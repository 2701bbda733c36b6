"""Posterior predictive checks, the misspecification test and member outliers, with exact posteriors
(and one quickly trained NPE for the learned summaries)."""

import math
import numpy as np
import pytest
import scipy.stats
import torch

from matplotlib.figure import Figure
from torch.distributions import StudentT

import sbikit

from sbikit import diagnostics as dx
from sbikit.simulators import gaussian_linear, hierarchical_gaussian
from test_diagnostics_calibration import Analytic

NOISE = math.sqrt(gaussian_linear.NOISE_VARIANCE)


@pytest.fixture(scope="module")
def model_simulations():
    return sbikit.simulate(gaussian_linear.simulator, gaussian_linear.prior(), 2000, seed=1, show_progress=False)


def _observations(n, seed, noise=None):
    g = torch.Generator().manual_seed(seed)
    theta = gaussian_linear.prior().mean + math.sqrt(gaussian_linear.PRIOR_VARIANCE) * torch.randn(n, 10, generator=g)
    eps = torch.randn(n, 10, generator=g) if noise is None else noise(n, g)
    return theta + NOISE * eps


def test_false_alarms_match_alpha_and_p_values_are_uniform(model_simulations):
    # 200 well-specified observations, each tested alone: rejections at 0.05 are Binomial(200, 0.05)
    result = dx.misspecification(Analytic(), model_simulations, _observations(200, seed=2))
    each = result.observation_p_values
    assert 0.02 <= (each < 0.05).mean() <= 0.08, (each < 0.05).mean()
    assert scipy.stats.kstest(each, "uniform").pvalue > 0.01
    assert not result.rejected and result.space == "observations"
    # batches of 10: 20 batches, about 1 false alarm expected
    alarms = [dx.misspecification(Analytic(), model_simulations, _observations(10, s), seed=s).rejected
              for s in range(20)]
    assert sum(alarms) <= 3


def test_contaminated_observations_are_detected(model_simulations):
    wide = _observations(100, seed=3, noise=lambda n, g: 3 * torch.randn(n, 10, generator=g))
    single = dx.misspecification(Analytic(), model_simulations, wide).observation_p_values
    assert (single < 0.05).mean() > 0.85
    torch.manual_seed(4)
    heavy = _observations(200, seed=4, noise=lambda n, g: StudentT(2.0).sample((n, 10)))
    detected = [dx.misspecification(Analytic(), model_simulations, heavy[i : i + 10], seed=i).rejected
                for i in range(0, 200, 10)]
    assert np.mean(detected) >= 0.8, detected


def test_learned_summaries_of_an_npe_are_used(model_simulations):
    prior = gaussian_linear.prior()
    data = sbikit.simulate(gaussian_linear.simulator, prior, 1000, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=5, show_progress=False)).fit(data)
    features = posterior.summarize(model_simulations.x[:7])
    assert features.shape[0] == 7 and features.shape[1] >= 32  # the MLP's 32 features (+ B z when adjusted)
    assert torch.allclose(posterior.summarize(model_simulations.x[0]), features[0], atol=1e-5)
    clean = dx.misspecification(posterior, model_simulations[:600], _observations(10, seed=5))
    assert clean.space == "learned summaries" and clean.observed.shape == (10, features.shape[1])
    wide = _observations(10, seed=6, noise=lambda n, g: 3 * torch.randn(n, 10, generator=g))
    assert dx.misspecification(posterior, model_simulations[:600], wide).p_value < 0.01
    assert isinstance(clean.plot(), Figure) and "p_value=" in repr(clean)


def test_ppc_builds_inference_data_and_flags_an_impossible_observation():
    x_obs = _observations(1, seed=7)[0]
    result = dx.ppc(Analytic(), gaussian_linear.simulator, x_obs, num_samples=400)
    assert result.predictive.shape == (400, 10) and result.samples.shape == (400, 10)
    assert {"posterior", "posterior_predictive", "observed_data"} <= set(result.idata.groups())
    assert result.idata.posterior_predictive["x"].shape == (1, 400, 10)
    assert np.allclose(result.idata.observed_data["x"].values, x_obs.numpy())
    assert len(result.flagged) <= 2, result  # 10 features at alpha 0.05
    # the posterior of x = 5 puts theta near 2.5, whose data lie near 2.5 +- 0.4: x = 5 is impossible
    odd = dx.ppc(Analytic(), gaussian_linear.simulator, 5 * torch.ones(10), num_samples=400)
    assert len(odd.flagged) == 10 and odd.p_values.max() < 0.01
    assert isinstance(odd.plot(), Figure) and "flagged=10" in repr(odd)


_Groups = hierarchical_gaussian.GroupMeanPosterior


def test_outlying_members_are_flagged_at_the_stated_rate():
    tau = 0.5
    model = hierarchical_gaussian.model(tau=tau, num_members=100)
    contaminated, clean = [], []
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        locals_ = torch.randn(1, generator=g) + tau * torch.randn(100, 1, generator=g)
        noise = torch.full((100, 1), hierarchical_gaussian.NOISE)
        noise[:5] *= 5
        result = dx.outliers(_Groups(tau), model, locals_ + noise * torch.randn(100, 1, generator=g), seed=seed)
        contaminated.append(result.flagged[:5].mean())
        clean.append(result.flagged[5:].mean())
    # a clean member's p-value is uniform: 950 of them flag at 0.05 +- 0.007; a member with noise x 5
    # (sd 1.58 against 0.58) lies beyond the model's 95% range about 47% of the time
    assert 0.025 <= np.mean(clean) <= 0.075, np.mean(clean)
    assert np.mean(contaminated) >= 0.3, np.mean(contaminated)
    assert result.p_values.shape == (100,) and result.scores.shape == (100,)
    assert isinstance(result.plot(), Figure) and repr(result).startswith("OutlierResult(members=100")


def test_outliers_of_iid_members_from_a_plain_simulator():
    # sets of i.i.d. observations: the simulator gives one member per parameter row
    g = torch.Generator().manual_seed(0)
    members = torch.cat([torch.randn(40, 2, generator=g) * 0.1, torch.tensor([[3.0, 3.0]])])

    class Posterior:  # about right for a flat prior, and robust to the outlier
        def sample(self, n, x):
            return x.median(0).values + 0.1 / math.sqrt(len(x)) * torch.randn(n, 2)

    result = dx.outliers(Posterior(), lambda t: t + 0.1 * torch.randn_like(t), members, num_samples=1000)
    assert result.flagged[-1] and result.p_values[-1] < 0.002
    assert result.flagged[:-1].sum() <= 6  # 2 of 40 expected


def test_check_gives_one_report():
    test = sbikit.simulate(gaussian_linear.simulator, gaussian_linear.prior(), 300, seed=8, show_progress=False)
    x_obs = _observations(1, seed=9)[0]
    report = dx.check(Analytic(), gaussian_linear.simulator, gaussian_linear.prior(), x_obs=x_obs, test=test,
                      num_samples=100)
    assert report.passed, report
    assert set(report.results) == {"sbc", "coverage", "tarp", "recovery", "ppc", "misspecification"}
    assert isinstance(report.plot(), Figure) and repr(report).startswith("Report(passed=True")
    wrong = dx.check(Analytic(scale=0.5), gaussian_linear.simulator, gaussian_linear.prior(), num_simulations=300,
                     num_samples=100)
    assert not wrong.passed and wrong.ppc is None and wrong.misspecification is None
    assert len(wrong.test) == 300


def test_bad_inputs_are_refused(model_simulations):
    with pytest.raises(ValueError, match=r"x_obs has shape \(3,\)"):
        dx.misspecification(Analytic(), model_simulations, torch.zeros(3))
    with pytest.raises(ValueError, match="at least 20"):
        dx.misspecification(Analytic(), model_simulations[:10], torch.zeros(10))
    with pytest.raises(ValueError, match="finite"):
        dx.misspecification(Analytic(), model_simulations, torch.full((10,), float("nan")))
    with pytest.raises(TypeError, match="batched function"):
        dx.ppc(Analytic(), object(), torch.zeros(10))
    with pytest.raises(ValueError, match="one observation"):
        dx.ppc(Analytic(), gaussian_linear.simulator, torch.zeros(4, 10))
    with pytest.raises(ValueError, match=r"one group of members \(M, L\)"):
        dx.outliers(Analytic(), gaussian_linear.simulator, torch.zeros(10))


def test_a_posterior_built_for_one_observation_is_checked_by_ppc_but_not_calibrated(model_simulations):
    x_obs = _observations(1, seed=10)[0]

    class ForOne:  # like NLE's MCMC posterior: built for x_obs, sample(n) without x
        amortized = False

        def sample(self, n):
            return gaussian_linear.posterior(x_obs).sample((n,))

        def log_prob(self, theta):
            return gaussian_linear.posterior(x_obs).log_prob(theta)

    result = dx.ppc(ForOne(), gaussian_linear.simulator, x_obs, num_samples=300)
    assert result.samples.shape == (300, 10) and len(result.flagged) <= 2
    with pytest.raises(TypeError, match="built for one observation"):
        dx.sbc(ForOne(), model_simulations)
