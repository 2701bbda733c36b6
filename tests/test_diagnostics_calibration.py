"""Calibration diagnostics against the exact posterior of gaussian_linear, and versions of it that are
wrong in known ways."""

import numpy as np
import pytest
import torch

from matplotlib.figure import Figure
from torch.distributions import Independent, Normal

import sbikit

from sbikit import diagnostics as dx
from sbikit.simulators import gaussian_linear, hierarchical_gaussian


Analytic = gaussian_linear.ExactPosterior  # exact, or its sd scaled and its mean shifted


@pytest.fixture(scope="module")
def test_pairs():
    # 1,000 pairs: the coverage of a calibrated posterior then strays at most 0.05 from the diagonal with
    # probability >= 1 - 2 exp(-2 * 1000 * 0.05^2) = 0.987 (Dvoretzky-Kiefer-Wolfowitz); over 20 test sets
    # (seeds 100-119) the exact posterior's largest gap was 0.025 on average and 0.037 at most, and it
    # passed SBC 18 times in 20 (95% expected), while every wrong version below failed all 20 times
    return sbikit.simulate(gaussian_linear.simulator, gaussian_linear.prior(), 1000, seed=100, show_progress=False)


def test_exact_posterior_passes_sbc_coverage_and_tarp(test_pairs):
    posterior = Analytic()
    sbc = dx.sbc(posterior, test_pairs, seed=0)
    assert sbc.passed, sbc
    assert sbc.names[-1] == "joint" and len(sbc.p_values) == 11
    assert sbc.ranks.shape == (1000, 10) and sbc.ranks.max() <= 200 and sbc.joint_ranks.shape == (1000,)
    cov = dx.coverage(posterior, test_pairs, seed=0)
    assert cov.max_gap <= 0.05, cov
    assert bool(np.all(np.abs(cov.coverage - cov.levels) <= 0.05)) and cov.passed
    assert cov.levels[0] == 0 and cov.levels[-1] == 1 and cov.coverage[-1] == 1
    tarp = dx.tarp(posterior, test_pairs, seed=0)
    assert tarp.passed and abs(tarp.atc) < 0.02, tarp


@pytest.mark.parametrize("scale, shift, side", [(0.5, 0.0, "over"), (1.0, 1.0, "biased"), (2.0, 0.0, "under")])
def test_wrong_posteriors_fail(test_pairs, scale, shift, side):
    posterior = Analytic(scale, shift)
    sbc = dx.sbc(posterior, test_pairs, seed=0)
    assert not sbc.passed and sbc.p_values[-1] < 0.05, sbc
    cov = dx.coverage(posterior, test_pairs, seed=0)
    assert cov.max_gap > 0.05 and not cov.passed, cov
    middle = cov.coverage[50] - 0.5  # over-confident and biased regions hold the truth too rarely
    assert middle > 0.05 if side == "under" else middle < -0.05
    if side != "biased":  # TARP with random references is known to be weak against some biases
        assert not dx.tarp(posterior, test_pairs, seed=0).passed


def test_results_say_in_words_how_large_a_miss_is_and_whether_it_matters(test_pairs):
    exact = [dx.sbc(Analytic(), test_pairs, seed=0), dx.coverage(Analytic(), test_pairs, seed=0),
             dx.tarp(Analytic(), test_pairs, seed=0)]
    for result in exact:
        assert result.verdict.startswith("no miss detected") and result.verdict in repr(result)
    cov = dx.coverage(Analytic(0.5), test_pairs, seed=0)  # sd halved: far too confident
    assert cov.verdict.startswith("a miss that matters") and "over-confident" in cov.verdict
    assert f"{cov.max_gap:.3f}" in cov.verdict
    assert "under-confident" in dx.coverage(Analytic(2.0), test_pairs, seed=0).verdict
    sbc = dx.sbc(Analytic(0.5), test_pairs, seed=0)
    assert sbc.verdict.startswith("a miss that matters") and f"{sbc.statistics.max():.3f}" in sbc.verdict
    # a miss below MATERIAL_GAP that the test still detects is reported as small
    assert dx._draws.in_words(False, 0.03, "here").startswith("a small miss")


def test_sbc_flags_the_one_miscalibrated_parameter(test_pairs):
    class OneWide(Analytic):
        def q(self, x):
            exact = gaussian_linear.posterior(torch.as_tensor(x))
            scale = torch.ones(10)
            scale[3] = 0.6
            return Independent(Normal(exact.mean, scale * exact.stddev), 1)

    sbc = dx.sbc(OneWide(), test_pairs, seed=0)
    failed = [name for name, p in zip(sbc.names, sbc.p_values) if p < 0.05]
    assert "mean_4" in failed and set(failed) <= {"mean_4", "joint"}, sbc


def test_recovery_of_the_exact_posterior(test_pairs):
    rec = dx.recovery(Analytic(), test_pairs, num_samples=100, seed=0)
    # posterior variance 0.05 against prior variance 0.1: contraction 0.5, R^2 = 1 - 0.05 / 0.1 = 0.5
    assert np.allclose(np.median(rec.contraction, 0), 0.5, atol=0.1)
    assert np.allclose(rec.r2, 0.5, atol=0.1)
    assert np.allclose(rec.rmse, 0.05**0.5, rtol=0.1)
    assert 0.03 < np.mean(np.abs(rec.z) > 2) < 0.08  # |z| > 2 for 4.6% of N(0, 1)
    biased = dx.recovery(Analytic(shift=1.0), test_pairs, num_samples=100, seed=0)
    assert np.allclose(biased.z.mean(0), 1.0, atol=0.15)


def test_draws_are_seeded_and_leave_the_global_stream_alone(test_pairs):
    pairs = test_pairs[:100]
    torch.manual_seed(0)
    first = dx.sbc(Analytic(), pairs, seed=3)
    after = torch.rand(1)
    torch.manual_seed(0)
    second = dx.sbc(Analytic(), pairs, seed=3)
    assert np.array_equal(first.fractional_ranks, second.fractional_ranks)
    assert torch.equal(after, torch.rand(1))
    assert not np.array_equal(first.ranks, dx.sbc(Analytic(), pairs, seed=4).ranks)


def test_results_read_and_plot(test_pairs):
    pairs = test_pairs[:200]
    for result in (
        dx.sbc(Analytic(), pairs, num_samples=50),
        dx.coverage(Analytic(), pairs, num_samples=50),
        dx.tarp(Analytic(), pairs, num_samples=50),
        dx.recovery(Analytic(), pairs, num_samples=50),
    ):
        text = repr(result)
        assert text.startswith(type(result).__name__ + "(") and "\n" not in text.split(")")[0]
        assert isinstance(result.plot(), Figure)
    assert "mean_1" in repr(dx.sbc(Analytic(), pairs, num_samples=50))


def test_sets_of_any_size_are_drawn_per_member_count():
    # the exact posterior of mu with tau known, for groups (m, M, 1) of any member count M
    tau, noise = 0.5, hierarchical_gaussian.NOISE

    class Groups:
        def q(self, x):
            s2 = tau**2 + noise**2
            precision = 1 + x.shape[-2] / s2
            scale = precision**-0.5 * torch.ones(x.shape[:-2] + (1,))
            return Independent(Normal(x.sum(-2) / s2 / precision, scale), 1)

        def sample(self, n, x):
            return self.q(x).sample((n,))

        def log_prob(self, theta, x):
            return self.q(x).log_prob(theta)

    model = hierarchical_gaussian.model(tau=tau, num_members=(2, 6))
    data = sbikit.simulate(model, 600, seed=0, show_progress=False)
    assert len(set(data.mask.sum(1).tolist())) == 5
    sbc = dx.sbc(Groups(), data, seed=0)
    assert sbc.passed, sbc
    wrong = Groups()
    wrong.q = lambda x: Independent(Normal(x.mean(-2), 0.1 * torch.ones(x.shape[:-2] + (1,))), 1)
    assert not dx.sbc(wrong, data, seed=0).passed


def test_bad_inputs_are_refused(test_pairs):
    with pytest.raises(TypeError, match="sample.*log_prob"):
        dx.sbc(object(), test_pairs)
    with pytest.raises(TypeError, match="Simulations"):
        dx.coverage(Analytic(), torch.zeros(10, 10))
    with pytest.raises(ValueError, match="alpha"):
        dx.sbc(Analytic(), test_pairs, alpha=1.5)
    with pytest.raises(ValueError, match="num_samples"):
        dx.sbc(Analytic(), test_pairs, num_samples=1)
    with pytest.raises(ValueError, match=r"references must have shape \(1000, 10\)"):
        dx.tarp(Analytic(), test_pairs, references=torch.zeros(3, 10))

    class Flat(Analytic):
        def sample(self, n, x):
            return super().sample(n, x).reshape(-1, 10)

    with pytest.raises(ValueError, match=r"\(n, m, D\)"):
        dx.sbc(Flat(), test_pairs)
    # a tuple (theta, x) serves as test pairs
    assert dx.sbc(Analytic(), (test_pairs.theta[:50], test_pairs.x[:50]), num_samples=20).ranks.shape == (50, 10)
