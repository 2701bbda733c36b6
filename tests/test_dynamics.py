"""Stochastic reaction networks: sbikit.gillespie against exact laws, and the sir and
lotka_volterra simulators built on it."""

import math
import pytest
import torch

import sbikit

from sbikit.simulators import lotka_volterra as lv
from sbikit.simulators import sir

# S -> 0 at rate theta S: the survivors at t are Binomial(n0, exp(-theta t))
decay = sbikit.gillespie([[-1.0]], lambda s, theta: theta[:, :1] * s)


def in_chunks(run, state, theta, times, size=2_000):
    # batches of the size simulate uses: torch runs larger ones in threads, slow on a busy machine
    return torch.cat([run(s, t, times) for s, t in zip(state.split(size), theta.split(size))])


def immigration_death(s, theta):
    # 0 -> S at rate k, S -> 0 at rate g S: stationary law Poisson(k / g)
    return torch.cat([theta[:, :1].expand_as(s), theta[:, 1:] * s], -1)


def test_pure_death_survivors_are_binomial():
    n, n0, rate = 20_000, 40, 0.5
    torch.manual_seed(0)
    times = torch.tensor([0.0, 1.0, 2.0, 2.0])
    counts = in_chunks(decay, torch.full((n, 1), float(n0)), torch.full((n, 1), rate), times)
    assert counts.shape == (n, 4, 1)
    assert bool((counts[:, 0] == n0).all()) and torch.equal(counts[:, 2], counts[:, 3])
    assert bool((counts[:, 1:] <= counts[:, :-1]).all())  # deaths only
    for step, t in ((1, 1.0), (2, 2.0)):
        p = math.exp(-rate * t)
        binomial = torch.distributions.Binomial(n0, torch.tensor(p))
        values = torch.arange(n0 + 1.0)
        frequencies = (counts[:, step, 0, None] == values).double().mean(0)
        # 20,000 draws: each frequency's standard error is at most 0.0035
        assert float((frequencies - binomial.log_prob(values).exp()).abs().max()) < 0.015
        x = counts[:, step, 0].double()
        # standard errors: mean 0.025, variance 0.13
        assert abs(float(x.mean()) - n0 * p) < 0.12, (x.mean(), n0 * p)
        assert abs(float(x.var()) - n0 * p * (1 - p)) < 0.65, (x.var(), n0 * p * (1 - p))


def test_immigration_death_reaches_its_poisson_stationary_law():
    run = sbikit.gillespie([[1.0], [-1.0]], immigration_death)
    n = 20_000
    theta = torch.tensor([[10.0, 0.5]]).expand(n, 2)
    torch.manual_seed(1)
    x = in_chunks(run, torch.zeros(n, 1), theta, torch.tensor([0.0, 20.0]))[:, 1, 0].double()  # 10 relaxation times
    # Poisson(20): standard errors of the mean 0.032 and of the variance 0.2
    assert abs(float(x.mean()) - 20) < 0.15 and abs(float(x.var()) - 20) < 1.0, (x.mean(), x.var())
    assert bool((x == x.round()).all()) and bool((x >= 0).all())


def test_absorbing_states_and_zero_rates_never_fire():
    # A -> 0 at rate 5 A; A -> A + B and A -> A + C at rate zero, on either side of the live reaction
    run = sbikit.gillespie([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                           lambda s, theta: torch.cat([0 * s[:, :1], 5 * s[:, :1], 0 * s[:, :1]], -1))
    state = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1000.0, 0.0, 0.0]])
    counts = run(state, torch.zeros(3, 1), torch.tensor([0.0, 1.0, 1e6]))
    assert torch.equal(counts[:, :, 1:], torch.zeros(3, 3, 2))
    assert torch.equal(counts[:, 2, 0], torch.zeros(3)) and bool((counts[1] == 0).all())


def test_a_transition_of_one_step_at_a_time_has_the_same_law():
    # restarting the clock at every time is exact: the waits are memoryless
    def transition(s, theta, t, dt):
        return decay(s, theta, torch.cat([t, t + dt], -1))[:, -1]

    model = sbikit.StateSpace(
        sbikit.BoxUniform(torch.tensor([0.49]), torch.tensor([0.51])),
        times=torch.linspace(0.0, 2.0, 9),
        initial=lambda theta: torch.full((len(theta), 1), 40.0),
        transition=transition,
        observation=lambda s, theta, t: s,
    )
    data = sbikit.simulate(model, 8_000, seed=0, show_progress=False)
    survivors = data.x[:, -1, 1].double()
    p = math.exp(-1.0)
    assert abs(float(survivors.mean()) - 40 * p) < 0.2 and abs(float(survivors.var()) - 40 * p * (1 - p)) < 1.0


def test_a_series_past_max_reactions_is_nan_from_there_and_a_recorded_failure():
    # X -> 2X at rate theta X from one: after 50 reactions a series holds 51, and its 51st
    # reaction makes it NaN from then on
    def growth(cap):
        return sbikit.gillespie([[1.0]], lambda s, theta: theta * s, max_reactions=cap)

    theta, times = torch.linspace(0.0, 2.0, 200)[:, None], torch.linspace(0.0, 3.0, 61)
    counts = []
    for cap in (10_000, 50):
        torch.manual_seed(0)  # the same keys, the same series
        counts.append(growth(cap)(torch.ones(200, 1), theta, times)[..., 0])
    free, capped = counts
    exceeded = free > 51
    assert torch.equal(torch.isnan(capped), exceeded) and torch.equal(capped[~exceeded], free[~exceeded])
    assert 10 < int(exceeded.any(1).sum()) < 190

    model = sbikit.StateSpace(
        sbikit.BoxUniform(torch.tensor([0.0]), torch.tensor([2.0])),
        times=times,
        trajectory=lambda theta, t: growth(50)(torch.ones(len(theta), 1), theta, t),
    )
    with pytest.warns(RuntimeWarning, match="failed"):
        data = sbikit.simulate(model, 200, seed=0, show_progress=False)
    failed = sorted(f.index for f in data.failures)
    assert failed and failed == (~data.valid).nonzero()[:, 0].tolist()
    assert float(data.theta[failed].min()) > float(data.theta[data.valid].min())  # fast growth fails


@pytest.mark.parametrize("build", [lambda: sir.model(days=(5, 40)), lambda: lv.model(horizon=4.0)], ids=["sir", "lv"])
def test_series_do_not_depend_on_the_batch_size(build):
    model = build()
    whole = sbikit.simulate(model, 24, seed=0, show_progress=False)
    split = sbikit.simulate(model, 24, seed=0, batch_size=5, show_progress=False)
    assert torch.equal(whole.theta, split.theta) and torch.equal(whole.mask, split.mask)
    torch.testing.assert_close(whole.x, split.x, rtol=0, atol=0, equal_nan=True)
    other = sbikit.simulate(model, 24, seed=1, show_progress=False)
    assert not torch.equal(whole.x[:, :3], other.x[:, :3])


def test_sir_series_are_daily_counts_of_varied_lengths():
    data = sbikit.simulate(sir.model(), 300, seed=0, show_progress=False)
    lengths = data.mask.sum(1)
    assert data.structure == "series" and data.x.shape == (300, 100, 2)
    assert int(lengths.min()) >= 30 and int(lengths.max()) <= 100 and len(set(lengths.tolist())) > 30
    for row, present, length in zip(data.x, data.mask, lengths):
        assert bool(present[:length].all()) and not bool(present[length:].any())  # the mask is a prefix
        assert torch.equal(row[present, 0], torch.arange(1.0, length + 1))
    cases = data.x[..., 1][data.mask]
    assert bool((cases == cases.round()).all()) and bool((cases >= 0).all())
    assert float((data.x[..., 1] * data.mask).sum(1).max()) <= sir.POPULATION - sir.INFECTED
    # an epidemic with R0 = beta / gamma > 2 is over by day 80, having infected the share z of the
    # town given by the final-size equation z = 1 - exp(-R0 z); half of them are reported
    r0 = data.theta[:, 0] / data.theta[:, 1]
    z = torch.ones_like(r0)
    for _ in range(200):
        z = 1 - torch.exp(-r0 * z)
    expected = sir.REPORTING * (sir.POPULATION * z - sir.INFECTED)
    over = (r0 > 2) & (lengths >= 80)
    ratio = (data.x[..., 1] * data.mask).sum(1)[over] / expected[over]
    # about 80 epidemics, ratios with sd 0.035: a standard error of 0.004
    assert int(over.sum()) > 50 and abs(float(ratio.mean()) - 1) < 0.02, ratio.mean()


def test_lotka_volterra_times_are_irregular_and_its_noise_ignores_theta():
    data = sbikit.simulate(lv.model(horizon=0.5), 4_000, seed=0, show_progress=False)
    lengths = data.mask.sum(1)
    assert len(set(lengths.tolist())) > 3
    times = data.x[..., 0]
    assert bool((times[:, 0] == 0).all()) and bool((times[data.mask] <= 0.5).all())
    steps = times[:, 1:] - times[:, :-1]
    assert bool((steps[data.mask[:, 1:]] > 0).all())
    assert float(steps[data.mask[:, 1:]].std()) > 0.01  # not a regular grid
    # at t = 0 the counts are the initial ones, so the first observation is pure noise
    noise = (data.x[:, 0, 1:] - torch.log1p(torch.tensor(lv.INITIAL))) / lv.NOISE
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    centered = torch.cat([noise, data.theta.log()], 1)
    centered = (centered - centered.mean(0)) / centered.std(0)
    correlation = centered.T @ centered / (len(centered) - 1)
    assert float(correlation[:2, 2:].abs().max()) < 4 / math.sqrt(len(centered))  # 4 standard errors


def test_bad_input_gets_typed_errors_that_name_the_argument():
    with pytest.raises(ValueError, match="stoichiometry"):
        sbikit.gillespie([1.0, -1.0], immigration_death)
    with pytest.raises(TypeError, match="stoichiometry"):
        sbikit.gillespie("1, -1", immigration_death)
    with pytest.raises(TypeError, match="propensities"):
        sbikit.gillespie([[1.0], [-1.0]], "rates")
    with pytest.raises(ValueError, match="max_reactions"):
        sbikit.gillespie([[1.0], [-1.0]], immigration_death, max_reactions=0)
    run = sbikit.gillespie([[1.0], [-1.0]], immigration_death)
    theta = torch.ones(4, 2)
    with pytest.raises(ValueError, match=r"state must be \(B, 1\)"):
        run(torch.zeros(4, 2), theta, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="times"):
        run(torch.zeros(4, 1), theta, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="times"):
        run(torch.zeros(4, 1), theta, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="theta"):
        run(torch.zeros(4, 1), theta[:3], torch.tensor([0.0, 1.0]))
    wrong = sbikit.gillespie([[1.0], [-1.0]], lambda s, theta: theta[:, :1] * s)
    with pytest.raises(ValueError, match=r"propensities.*\(4, 2\)"):
        wrong(torch.zeros(4, 1), theta, torch.tensor([0.0, 1.0]))
    negative = sbikit.gillespie([[1.0], [-1.0]], lambda s, theta: -theta)
    with pytest.raises(ValueError, match="negative"):
        negative(torch.zeros(4, 1), theta, torch.tensor([0.0, 1.0]))
    # within simulate, a broken model is a bug to report, not failed simulations to record
    model = sbikit.StateSpace(
        sbikit.BoxUniform(torch.zeros(2), torch.ones(2)),
        times=torch.linspace(0.0, 1.0, 3),
        trajectory=lambda theta, t: wrong(torch.zeros(len(theta), 1), theta, t),
    )
    with pytest.raises(ValueError, match="propensities"):
        sbikit.simulate(model, 10, seed=0, show_progress=False)
