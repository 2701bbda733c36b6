"""Posterior predictive checks, the misspecification test and member outliers, with exact posteriors
(and one quickly trained NPE for the learned summaries)."""

import math
import numpy as np
import pytest
import scipy.stats
import torch

from matplotlib.figure import Figure
from torch.distributions import Independent, Normal, StudentT

import sbikit

from sbikit import diagnostics as dx
from sbikit.diagnostics.misspecification import _widened
from sbikit.simulators import gaussian_linear, hierarchical_gaussian
from test_diagnostics_calibration import Analytic

NOISE = math.sqrt(gaussian_linear.NOISE_VARIANCE)
REPLICATE_NOISE = 0.5  # 3 parameters under N(0, I), each measured 5 times: x in 15-D


def replicates(theta, scale=1.0):
    return theta.repeat(1, 5) + scale * REPLICATE_NOISE * torch.randn(len(theta), 15)


class ReplicateMeans:
    """What an ideal summary of the replicate model keeps: each parameter's mean measurement (sufficient)."""

    def summarize(self, x):
        return x.reshape(len(x), 5, 3).mean(1)


class BoxExact:
    """The exact posterior of x = theta + 0.1 noise under a box prior on [-2, 2]^3: a truncated normal."""

    def _bounds(self, x):
        normal = Normal(x.double(), 0.1)
        return normal, normal.cdf(torch.tensor(-2.0).double()), normal.cdf(torch.tensor(2.0).double())

    def sample(self, n, x):
        normal, a, b = self._bounds(x)
        u = a + (b - a) * torch.rand(n, *x.shape, dtype=torch.float64)
        return normal.icdf(u.clamp(1e-12, 1 - 1e-12)).clamp(-2, 2).float()

    def log_prob(self, theta, x):
        normal, a, b = self._bounds(x)
        return (normal.log_prob(theta.double()) - (b - a).log()).sum(-1).float()


@pytest.fixture(scope="module")
def model_simulations():
    return sbikit.simulate(gaussian_linear.simulator, gaussian_linear.prior(), 2000, seed=1, show_progress=False)


def _observations(n, seed, noise=None):
    g = torch.Generator().manual_seed(seed)
    theta = gaussian_linear.prior().mean + math.sqrt(gaussian_linear.PRIOR_VARIANCE) * torch.randn(n, 10, generator=g)
    eps = torch.randn(n, 10, generator=g) if noise is None else noise(n, g)
    return theta + NOISE * eps


def alone(posterior, test, x):
    """Each observation's p-value on its own, from batches small enough to calibrate (20 held-out simulations
    per observation)."""
    parts = x.split(len(test) // 40)
    return np.concatenate([dx.misspecification(posterior, test, part, num_null=20).observation_p_values
                           for part in parts])


def test_false_alarms_match_alpha_and_p_values_are_uniform(model_simulations):
    # 200 well-specified observations, each tested alone: rejections at 0.05 are Binomial(200, 0.05)
    each = alone(Analytic(), model_simulations, _observations(200, seed=2))
    assert 0.02 <= (each < 0.05).mean() <= 0.08, (each < 0.05).mean()
    assert scipy.stats.kstest(each, "uniform").pvalue > 0.01
    result = dx.misspecification(Analytic(), model_simulations, _observations(1, seed=2))
    assert set(result.p_values) == {"observations"} and result.space == "observations"
    # batches of 10: 20 batches, about 1 false alarm expected
    alarms = [dx.misspecification(Analytic(), model_simulations, _observations(10, s), seed=s).rejected
              for s in range(20)]
    assert sum(alarms) <= 3


def test_contaminated_observations_are_detected(model_simulations):
    wide = _observations(100, seed=3, noise=lambda n, g: 3 * torch.randn(n, 10, generator=g))
    single = alone(Analytic(), model_simulations, wide)
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
    assert report.passed and report.verdict == "passed", report
    assert report.misspecification.detectable and report.misspecification.verdict == "not rejected"
    assert set(report.results) == {"sbc", "coverage", "tarp", "recovery", "ppc", "misspecification"}
    assert isinstance(report.plot(), Figure) and repr(report).startswith("Report(passed=True")
    wrong = dx.check(Analytic(scale=0.5), gaussian_linear.simulator, gaussian_linear.prior(), num_simulations=300,
                     num_samples=100)
    assert not wrong.passed and wrong.verdict == "failed" and wrong.ppc is None and wrong.misspecification is None
    assert len(wrong.test) == 300


def test_bad_inputs_are_refused(model_simulations):
    with pytest.raises(ValueError, match=r"x_obs has shape \(3,\)"):
        dx.misspecification(Analytic(), model_simulations, torch.zeros(3))
    with pytest.raises(ValueError, match="at least 20"):
        dx.misspecification(Analytic(), model_simulations[:10], torch.zeros(10))
    with pytest.raises(ValueError, match="finite"):
        dx.misspecification(Analytic(), model_simulations, torch.full((10,), float("nan")))
    with pytest.raises(ValueError, match="20 per observation; pass at least 400 test simulations"):
        dx.misspecification(Analytic(), model_simulations[:300], _observations(10, seed=1))
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


def test_the_combined_p_value_is_uniform_under_the_model():
    # the observations and the replicate means (an exact posterior's sufficient summary): 8 test sets of 2,000 and
    # 50 well-specified observations each; the minimum of the two p-values, uncalibrated, raises 0.05 to about 0.09
    prior = Independent(Normal(torch.zeros(3), 1.0), 1)
    p_values = []
    for seed in range(8):
        test = sbikit.simulate(replicates, prior, 2000, seed=100 + seed, show_progress=False)
        torch.manual_seed(seed)
        result = dx.misspecification(ReplicateMeans(), test, replicates(prior.sample((50,))), num_null=20)
        assert set(result.p_values) == {"observations", "learned summaries"}
        p_values.append(result.observation_p_values)
    p_values = np.concatenate(p_values)
    assert scipy.stats.kstest(p_values, "uniform").pvalue > 0.01
    assert 0.02 <= (p_values < 0.05).mean() <= 0.08, (p_values < 0.05).mean()  # Binomial(400, 0.05): 3 sd


def test_the_data_space_sees_noise_x3_in_replicates_where_the_summaries_cannot():
    prior = Independent(Normal(torch.zeros(3), 1.0), 1)
    test = sbikit.simulate(replicates, prior, 400, seed=11, show_progress=False)
    torch.manual_seed(12)
    wide = replicates(prior.sample((30,)), scale=3.0)
    results = [dx.misspecification(ReplicateMeans(), test, x) for x in wide]
    # noise x 3 moves the 12 within-parameter directions 3x out (a whitened squared norm ~111 against chi2_15), but
    # the means only from variance 1.05 to 1.45: each single observation's rejection rate in each space
    data = np.mean([r.p_values["observations"] < 0.05 for r in results])
    learned = np.mean([r.p_values["learned summaries"] < 0.05 for r in results])
    assert data >= 0.9 and learned <= 0.3, (data, learned)
    assert np.mean([r.rejected for r in results]) >= 0.9
    assert results[0].power > 0.9 and results[0].detectable  # the stated alternative is this noise x 3


def test_the_stated_power_matches_the_power_against_noise_x3():
    # x = theta + 0.3 noise under N(0, I) in 2-D: the linear prediction from theta is exact, so the stated
    # alternative (deviations x 3) is noise x 3, half detectable; 200 observations measure it to +-0.035
    prior = Independent(Normal(torch.zeros(2), 1.0), 1)
    simulator = lambda theta, scale=1.0: theta + 0.3 * scale * torch.randn_like(theta)  # noqa: E731
    test = sbikit.simulate(simulator, prior, 2000, seed=21, show_progress=False)
    torch.manual_seed(22)
    wide = simulator(prior.sample((200,)), scale=3.0)
    measured = (alone(object(), test, wide) < 0.05).mean()
    one = dx.misspecification(object(), test, wide[0])
    assert 0.15 < one.power < 0.85 and abs(one.power - measured) < 0.12, (one.power, measured)
    assert one.p_value == one.p_values["observations"]  # one space: the combination is that space's p-value


def test_check_says_not_detectable_from_one_observation_in_a_box():
    # x = theta + 0.1 noise under a box prior on [-2, 2]^3: noise x 5 inside the box leaves x inside it
    prior = sbikit.BoxUniform(-2 * torch.ones(3), 2 * torch.ones(3))
    simulator = lambda theta: theta + 0.1 * torch.randn_like(theta)  # noqa: E731
    x_obs = torch.tensor([0.5, -0.2, 1.0]) + 0.5 * torch.randn(3, generator=torch.Generator().manual_seed(0))
    report = dx.check(BoxExact(), simulator, prior, x_obs=x_obs, num_simulations=400, num_samples=100)
    mismatch = report.misspecification
    assert report.sbc.passed and report.coverage.passed and not mismatch.rejected
    assert mismatch.power < 0.5 and mismatch.verdict == "not detectable from one observation"
    assert not report.passed and report.verdict == "not detectable from one observation"
    assert "not detectable from one observation" in repr(report) and "power 0." in repr(mismatch)
    # 15 noise sd outside the box the same test rejects, whatever its power against the stated alternative
    far = dx.misspecification(BoxExact(), report.test, torch.tensor([0.5, -0.2, 3.5]))
    assert far.rejected and far.verdict == "rejected"


def test_sets_are_tested_in_their_members_mean_and_sd():
    # sets of 3 to 8 members, x = theta + 0.5 noise; the alternative widens each member's deviation
    g = torch.Generator().manual_seed(30)
    theta = 2 + torch.randn(600, 1, generator=g)
    mask = torch.arange(8) < torch.randint(3, 9, (600, 1), generator=g)
    x = torch.where(mask.unsqueeze(-1), theta.unsqueeze(1) + 0.5 * torch.randn(600, 8, 1, generator=g), 0.0)
    test = sbikit.Simulations(theta=theta, x=x, mask=mask, structure="set")
    members = torch.randn(6, 1, generator=g)
    clean = dx.misspecification(object(), test, 2.3 + 0.5 * members)
    wide = dx.misspecification(object(), test, 2.3 + 1.5 * members)
    assert clean.observed.shape == (1, 2) and not clean.rejected and clean.detectable
    assert wide.rejected and wide.power > 0.75  # a set of 3 members estimates its sd poorly (0.86 measured)
    # the stated alternative: each present member's deviation from the model's prediction x 3, padding untouched;
    # the prediction is fitted on 300 sets (~1,650 members), so it is off by about 0.012 (+ 0.012 per unit of theta)
    widened = _widened(test, 300, 3.0)
    present = mask[300:]
    deviation, noise = widened.x - theta[300:, None], x[300:] - theta[300:, None]
    assert (deviation[present] - 3 * noise[present]).abs().max() < 0.15
    assert bool((widened.x[~present] == 0).all()) and torch.equal(widened.mask, present)
