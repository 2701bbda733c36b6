"""Where simulations get their randomness: independent of theta, the same for any batch size,
and distributed as torch says."""

import math
import numpy as np
import pytest
import random
import torch

from scipy import stats

import sbikit

from sbikit.runs.randomness import RowStreams
from sbikit.runs.seeds import NUMPY, PRIOR, PYTHON, TORCH, simulation_seeds, stream_keys

UNIT = sbikit.BoxUniform(torch.zeros(1), torch.ones(1))


def _independence_p_values(theta: np.ndarray, noise: np.ndarray) -> list[float]:
    """p-values of independence between theta and the noise's digits at several scales."""

    p_values = []
    for scale in (1, 2**4, 2**8, 2**12, 2**16):
        digits = np.mod(scale * noise.astype(np.float64), 1.0)
        p_values.append(stats.spearmanr(theta, digits).pvalue)
        table = np.histogram2d(theta, digits, bins=6, range=[[0, 1], [0, 1]])[0]
        p_values.append(stats.chi2_contingency(table).pvalue)
    return p_values


def _numpy_one(theta):
    return np.random.uniform(size=1)


def _numpy_batch(theta):
    return np.random.uniform(size=(len(theta), 1))


def _random_one(theta):
    return torch.tensor([random.random()])


def _random_batch(theta):
    return torch.tensor([[random.random()] for _ in range(len(theta))])


STYLES = {
    "numpy, unbatched": (_numpy_one, {"batched": False, "numpy": True}),
    "torch, unbatched": (lambda t: torch.rand(1), {"batched": False}),
    "random, unbatched": (_random_one, {"batched": False}),
    "torch, batched": (lambda t: torch.rand_like(t), {}),
    "numpy rng, unbatched": (lambda t, rng: rng.uniform(size=1), {"batched": False, "numpy": True, "rng": True}),
    "numpy rng, batched": (lambda t, rng: np.stack([g.uniform(size=1) for g in rng]), {"numpy": True, "rng": True}),
    "torch rng, unbatched": (lambda t, rng: torch.rand(1, generator=rng), {"batched": False, "rng": True}),
    "numpy, batched": (_numpy_batch, {"numpy": True}),
    "random, batched": (_random_batch, {}),
}
# batched simulators that draw from a global generator are reproducible for a fixed batch size only
WARNS = {"numpy, batched", "random, batched"}


@pytest.mark.parametrize("style", list(STYLES))
def test_noise_is_independent_of_theta(style):
    simulator, options = STYLES[style]
    if style in WARNS:
        with pytest.warns(RuntimeWarning, match="reproducible for this batch size only"):
            data = sbikit.simulate(simulator, UNIT, 3_000, seed=0, batch_size=500, show_progress=False, **options)
    else:
        data = sbikit.simulate(simulator, UNIT, 3_000, seed=0, batch_size=500, show_progress=False, **options)
    theta, noise = data.theta[:, 0].numpy(), data.x[:, 0].numpy()
    assert len(np.unique(noise)) > 2_990, "simulations share their noise"
    p_values = _independence_p_values(theta, noise)
    # Bonferroni over the tests at an overall level of 0.001
    assert min(p_values) > 0.001 / len(p_values), p_values
    # the noise is uniform, as the simulator asked
    assert stats.kstest(noise, "uniform").pvalue > 1e-4


def test_the_independence_check_detects_noise_tied_to_theta():
    """The check above rejects the defect it guards against: theta = frac(256 x)."""
    theta = np.random.default_rng(0).uniform(size=3_000)
    noise = (theta + np.random.default_rng(1).integers(0, 256, size=3_000)) / 256
    assert min(_independence_p_values(theta, noise)) < 1e-10


def _everything(theta):
    """A batched torch simulator drawing in every way torch offers."""
    n = len(theta)
    parts = [
        theta + torch.randn_like(theta),
        torch.rand(n, 2),
        torch.randint(0, 10, (n, 1)).float(),
        torch.randint_like(theta, 5),
        torch.normal(theta, 0.5),
        torch.normal(0.0, 1.0, size=(n, 1)),
        torch.bernoulli(torch.full((n, 2), 0.3)),
        torch.empty(n, 1).uniform_(-1, 1),
        torch.empty(n, 1).exponential_(2.0),
        torch.empty(n, 1).geometric_(0.3),
        torch.empty(n, 1).log_normal_(0.0, 0.5),
        torch.empty(n, 1).cauchy_(),
        torch.empty(n, 1).random_(0, 7),
        torch.distributions.Gamma(torch.ones(n), 2.0).sample().unsqueeze(-1),
        torch.distributions.Poisson(3 * theta.abs()).sample(),
        torch.distributions.Categorical(torch.ones(n, 4)).sample().unsqueeze(-1).float(),
        torch.distributions.Beta(torch.ones(n, 1), 2.0).sample(),
        torch.distributions.Binomial(10, torch.full((n, 1), 0.4)).sample(),
        torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)).sample((n,)),
    ]
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_every_torch_sampler_is_the_same_whatever_the_batch_size(box3, batch_size):
    reference = sbikit.simulate(_everything, box3, 64, seed=11, batch_size=64, show_progress=False)
    other = sbikit.simulate(_everything, box3, 64, seed=11, batch_size=batch_size, show_progress=False)
    assert torch.equal(reference.theta, other.theta)
    assert torch.equal(reference.x, other.x)


REPRODUCIBLE = [s for s in STYLES if s not in WARNS]


@pytest.mark.parametrize("style", REPRODUCIBLE)
def test_every_reproducible_style_is_the_same_whatever_the_batch_size(style):
    simulator, options = STYLES[style]
    a = sbikit.simulate(simulator, UNIT, 30, seed=3, batch_size=30, show_progress=False, **options)
    b = sbikit.simulate(simulator, UNIT, 30, seed=3, batch_size=4, show_progress=False, **options)
    c = sbikit.simulate(simulator, UNIT, 30, seed=4, batch_size=30, show_progress=False, **options)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


def test_theta_does_not_depend_on_the_simulator_style():
    a = sbikit.simulate(lambda t: torch.rand_like(t), UNIT, 20, seed=5, show_progress=False)
    b = sbikit.simulate(_numpy_one, UNIT, 20, seed=5, batched=False, numpy=True, batch_size=3, show_progress=False)
    assert torch.equal(a.theta, b.theta)


def test_rng_hands_one_generator_per_simulation():
    seen = []

    def one(theta, rng):
        seen.append(type(rng))
        return rng.normal(size=2)

    def many(theta, rng):
        seen.append((type(rng), len(rng), len(theta)))
        return np.stack([g.normal(size=2) for g in rng])

    sbikit.simulate(one, UNIT, 3, seed=0, batched=False, numpy=True, rng=True, show_progress=False)
    sbikit.simulate(many, UNIT, 5, seed=0, numpy=True, rng=True, batch_size=5, show_progress=False)
    assert seen == [np.random.Generator] * 3 + [(list, 5, 5)]


def test_a_simulator_that_ignores_rng_needs_the_flag():
    with pytest.raises(RuntimeError, match=r"all 4 simulations raised.*TypeError"):
        sbikit.simulate(lambda t: t, UNIT, 4, seed=0, rng=True, show_progress=False)


_SOMETIMES_CALLS = []


def _sometimes(theta):
    # torch always; numpy's global generator only above 0.5, and random's only below 0.2
    _SOMETIMES_CALLS.append(1)
    out = theta + 0.1 * torch.randn(1)
    if float(theta[0]) > 0.5:
        out = out + float(np.random.normal())
    if float(theta[0]) < 0.2:
        out = out + random.random()
    return out


def test_unbatched_data_are_those_of_seeding_every_generator_per_simulation():
    # the runner seeds only the generators it has seen a simulator draw from, checks the others at
    # the end of each chunk, and runs a chunk again when one moved: the data must not show it
    from sbikit.runs import chunk as chunk_module

    chunk_module._DRAWS_FROM.clear()
    _SOMETIMES_CALLS.clear()
    # one chunk, whose first parameter (0.37) draws from torch only: the others are found at its end
    data = sbikit.simulate(_sometimes, UNIT, 40, seed=0, batched=False, batch_size=40, show_progress=False)
    assert float(data.theta[0, 0]) == pytest.approx(0.37, abs=0.01) and len(_SOMETIMES_CALLS) == 80  # ran twice
    assert chunk_module._DRAWS_FROM[chunk_module._simulator_key(_sometimes)] == {TORCH, NUMPY, PYTHON}
    chunk_module._DRAWS_FROM.clear()
    assert torch.equal(sbikit.simulate(_sometimes, UNIT, 40, seed=0, batched=False, batch_size=6,
                                       show_progress=False).x, data.x)
    seeds = simulation_seeds(0, np.arange(40))
    expected = []
    for k, theta in enumerate(data.theta):
        torch.manual_seed(int(stream_keys(seeds, TORCH)[k]))
        np.random.seed(int(stream_keys(seeds, NUMPY)[k]) & 0xFFFFFFFF)
        random.seed(int(stream_keys(seeds, PYTHON)[k]))
        expected.append(_sometimes(theta))
    assert torch.equal(data.x, torch.stack(expected))
    # a simulator that draws from none of them is run once per chunk, with nothing seeded
    calls = []

    def counted(theta):
        calls.append(1)
        return 2 * theta

    data = sbikit.simulate(counted, UNIT, 40, seed=0, batched=False, batch_size=40, show_progress=False)
    assert len(calls) == 40 and torch.equal(data.x, 2 * data.theta)
    assert chunk_module._DRAWS_FROM.get(chunk_module._simulator_key(counted), frozenset()) == frozenset()


def test_global_generators_are_left_alone(box3):
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    expected = (np.random.uniform(), random.random(), torch.rand(1))
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    sbikit.simulate(_numpy_one, UNIT, 10, seed=0, batched=False, numpy=True, show_progress=False)
    sbikit.simulate(lambda t: torch.rand_like(t), UNIT, 10, seed=0, show_progress=False)
    assert (np.random.uniform(), random.random()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])


def test_seeds_and_stream_keys_are_distinct():
    seeds = simulation_seeds(0, np.arange(200_000))
    assert len(np.unique(seeds)) == 200_000
    keys = np.concatenate([stream_keys(seeds, s) for s in (PRIOR, TORCH, NUMPY, PYTHON)])
    assert len(np.unique(keys)) == 4 * 200_000
    assert not np.array_equal(simulation_seeds(1, np.arange(10)), seeds[:10])


# ---- the per-row streams draw from the distributions torch documents ---------------------

ROWS = 4_000


@pytest.fixture
def streams():
    return RowStreams(simulation_seeds(7, np.arange(ROWS)), fallback_seed=0)


def _ks(sample: torch.Tensor, distribution: str, *args) -> float:
    return stats.kstest(sample.double().flatten().numpy(), distribution, args=args).pvalue


def test_continuous_samplers(streams):
    with streams:
        draws = {
            "rand": torch.rand(ROWS, 3),
            "randn": torch.randn(ROWS, 3),
            "normal": torch.normal(torch.full((ROWS, 2), 2.0), 3.0),
            "uniform_": torch.empty(ROWS, 2).uniform_(-1.0, 3.0),
            "exponential_": torch.empty(ROWS, 2).exponential_(2.0),
            "log_normal_": torch.empty(ROWS, 2).log_normal_(0.5, 0.25),
            "cauchy_": torch.empty(ROWS, 2).cauchy_(1.0, 2.0),
            "gamma": torch.distributions.Gamma(torch.full((ROWS,), 2.0), 1.0).sample(),
        }
    p = {
        "rand": _ks(draws["rand"], "uniform"),
        "randn": _ks(draws["randn"], "norm"),
        "normal": _ks(draws["normal"], "norm", 2.0, 3.0),
        "uniform_": _ks(draws["uniform_"], "uniform", -1.0, 4.0),
        "exponential_": _ks(draws["exponential_"], "expon", 0.0, 0.5),
        "log_normal_": _ks(draws["log_normal_"], "lognorm", 0.25, 0.0, math.exp(0.5)),
        "cauchy_": _ks(draws["cauchy_"], "cauchy", 1.0, 2.0),
        "gamma": _ks(draws["gamma"], "gamma", 2.0),
    }
    assert min(p.values()) > 1e-4, p
    assert draws["rand"].dtype == torch.float32 and bool((draws["rand"] < 1).all())


def test_discrete_samplers(streams):
    with streams:
        bern = torch.bernoulli(torch.full((ROWS,), 0.3))
        ints = torch.randint(2, 7, (ROWS, 2))
        geo = torch.empty(ROWS).geometric_(0.25)
        pois = torch.poisson(torch.full((ROWS,), 4.0))
        cat = torch.distributions.Categorical(torch.tensor([0.1, 0.2, 0.7]).expand(ROWS, 3)).sample()
    assert stats.binomtest(int(bern.sum()), ROWS, 0.3).pvalue > 1e-4
    assert ints.dtype == torch.int64 and set(ints.unique().tolist()) == {2, 3, 4, 5, 6}
    assert stats.chisquare(np.bincount(ints.flatten().numpy() - 2)).pvalue > 1e-4
    assert geo.min() >= 1 and stats.chisquare(*_observed_expected(geo, stats.geom(0.25))).pvalue > 1e-4
    assert stats.chisquare(*_observed_expected(pois, stats.poisson(4.0))).pvalue > 1e-4
    counts = np.bincount(cat.numpy(), minlength=3)
    assert stats.chisquare(counts, ROWS * np.array([0.1, 0.2, 0.7])).pvalue > 1e-4


def _observed_expected(sample: torch.Tensor, law, top: int = 12):
    values = sample.long().numpy()
    support = np.arange(law.support()[0], top)
    observed = np.array([(values == k).sum() for k in support] + [(values >= top).sum()])
    expected = len(values) * np.append(law.pmf(support), law.sf(top - 1))
    return observed, expected


def test_calls_and_rows_are_independent(streams):
    with streams:
        a, b = torch.randn(ROWS, 2), torch.randn(ROWS)
    pairs = [(a[:, 0], a[:, 1]), (a[:, 0], b), (a[:-1, 0], a[1:, 0])]
    assert all(stats.pearsonr(u.numpy(), v.numpy()).pvalue > 1e-4 for u, v in pairs)


def test_float64_draws_keep_their_precision(streams):
    with streams:
        x = torch.rand(ROWS, 2, dtype=torch.float64)
    assert x.dtype == torch.float64
    # 53-bit uniforms: multiples of 2^-24 (float32's grid) would make this zero
    assert bool(((x * 2**24) % 1 != 0).any())
