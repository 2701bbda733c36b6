r"""Sets of members: the data structure, mixed-effects simulation, set and sequence networks, NPE on sets."""

import math
import numpy as np
import pytest
import torch

from torch.distributions import Independent, LogNormal, Normal

import sbikit

from sbikit.nn import ConvSummary, DeepSet, GRUSummary, SetTransformer
from sbikit.simulators import hierarchical_gaussian


def contract_model(num_members=(5, 50)):
    return sbikit.MixedEffects(
        global_prior=sbikit.ProductPrior([Normal(0.0, 1.0), LogNormal(-1.0, 0.5)]),
        local_prior=lambda g: Independent(Normal(g[..., :1], g[..., 1:]), 1),
        member_simulator=lambda g, l: l + 0.3 * torch.randn_like(l),
        num_members=num_members,
    )


# --- Simulations with structure ---------------------------------------------------------


def test_padding_is_zeroed_and_never_marks_a_row_failed():
    x = torch.full((3, 4, 2), torch.nan)
    mask = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    x[mask] = 1.0
    data = sbikit.Simulations(theta=torch.zeros(3, 1), x=x, mask=mask, structure="set")
    assert data.num_invalid == 0
    assert bool((data.x[~mask] == 0).all())
    x[1, 2, 0] = torch.nan  # a present member that failed
    assert sbikit.Simulations(theta=torch.zeros(3, 1), x=x, mask=mask, structure="set").num_invalid == 1


def test_structure_arguments_are_checked():
    x = torch.zeros(3, 4, 2)
    with pytest.raises(TypeError, match="bool"):
        sbikit.Simulations(theta=torch.zeros(3, 1), x=x, mask=torch.ones(3, 4), structure="set")
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        sbikit.Simulations(theta=torch.zeros(3, 1), x=x, mask=torch.ones(3, 5, dtype=torch.bool), structure="set")
    with pytest.raises(ValueError, match="structure"):
        sbikit.Simulations(theta=torch.zeros(3, 1), x=x, structure="graph")
    with pytest.raises(ValueError, match=r"\(N, M, L\)"):
        sbikit.Simulations(theta=torch.zeros(3, 1), x=torch.zeros(3, 4), structure="series")
    with pytest.raises(ValueError, match="structure="):
        sbikit.Simulations(theta=torch.zeros(3, 1), x=x, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="theta_local"):
        sbikit.Simulations(theta=torch.zeros(3, 1), x=x, structure="set", theta_local=torch.zeros(3, 2, 1))


def test_rows_keep_their_structure():
    data = sbikit.simulate(contract_model(), num_simulations=10, seed=0, show_progress=False)
    part = data[torch.arange(10) % 2 == 0]
    assert len(part) == 5 and part.structure == "set"
    assert torch.equal(part.mask, data.mask[::2]) and torch.equal(part.theta_local, data.theta_local[::2])


# --- mixed-effects simulation -------------------------------------------------------------


def test_mixed_effects_shapes_and_member_counts():
    data = sbikit.simulate(contract_model((5, 50)), num_simulations=400, seed=0, show_progress=False)
    assert data.theta.shape == (400, 2) and data.x.shape == (400, 50, 1)
    assert data.mask.shape == (400, 50) and data.theta_local.shape == (400, 50, 1)
    counts = data.mask.sum(1)
    assert int(counts.min()) >= 5 and int(counts.max()) <= 50
    # uniform on 5..50: mean 27.5, sd 13.3; 400 groups give a standard error of 0.7
    assert abs(float(counts.float().mean()) - 27.5) < 3
    # members are present first, then padding
    assert torch.equal(data.mask, torch.arange(50) < counts.unsqueeze(1))


def test_mixed_effects_draws_follow_the_model():
    data = sbikit.simulate(contract_model(20), num_simulations=2_000, seed=1, show_progress=False)
    mu, tau = data.theta[:, :1], data.theta[:, 1:]
    standardized = ((data.theta_local[..., 0] - mu) / tau).flatten()
    noise = (data.x - data.theta_local)[..., 0]
    assert abs(float(standardized.mean())) < 0.02 and abs(float(standardized.std()) - 1) < 0.02
    assert abs(float(noise.std()) - 0.3) < 0.005
    # the measurement noise is independent of the parameters and of the member's index
    for value in (mu[:, 0], tau[:, 0], data.theta_local[:, 0, 0]):
        assert abs(np.corrcoef(noise[:, 0].numpy(), value.numpy())[0, 1]) < 0.06
    assert abs(np.corrcoef(noise[:, 0].numpy(), noise[:, 1].numpy())[0, 1]) < 0.06


def test_mixed_effects_are_the_same_for_any_batch_size():
    model = contract_model((1, 30))
    a = sbikit.simulate(model, num_simulations=50, seed=3, show_progress=False)
    b = sbikit.simulate(model, num_simulations=50, seed=3, batch_size=7, show_progress=False)
    c = sbikit.simulate(model, num_simulations=50, seed=4, show_progress=False)
    for name in ("theta", "x", "mask", "theta_local"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.theta, c.theta)


def test_member_count_by_function_gets_a_seeded_generator():
    model = contract_model(lambda rng: int(rng.integers(2, 4)))
    a = sbikit.simulate(model, 30, seed=0, show_progress=False)
    b = sbikit.simulate(model, 30, seed=0, batch_size=4, show_progress=False)
    assert torch.equal(a.mask, b.mask) and set(a.mask.sum(1).tolist()) == {2, 3}


def test_failing_groups_are_recorded_and_the_rest_kept():
    def member_simulator(g, l):
        if bool((g[:, 0] > 1.5).any()):
            raise RuntimeError("unstable")
        x = l + 0.3 * torch.randn_like(l)
        return torch.where(g[:, :1] < -1.5, torch.nan, x)

    model = sbikit.MixedEffects(
        global_prior=sbikit.ProductPrior([Normal(0.0, 1.0), LogNormal(-1.0, 0.5)]),
        local_prior=lambda g: Independent(Normal(g[..., :1], g[..., 1:]), 1),
        member_simulator=member_simulator,
        num_members=(2, 6),
    )
    with pytest.warns(RuntimeWarning, match="failed"):
        data = sbikit.simulate(model, 300, seed=0, show_progress=False)
    mu = data.theta[:, 0]
    kinds = {f.index: f.kind for f in data.failures}
    assert {i for i, k in kinds.items() if k == "exception"} == set(torch.nonzero(mu > 1.5)[:, 0].tolist())
    assert {i for i, k in kinds.items() if k == "nan"} == set(torch.nonzero(mu < -1.5)[:, 0].tolist())
    assert data.num_invalid == len(kinds) > 0


def test_model_functions_with_wrong_outputs_are_errors():
    model = sbikit.MixedEffects(
        global_prior=sbikit.BoxUniform(-torch.ones(1), torch.ones(1)),
        local_prior=lambda g: Normal(g[..., 0], 1.0),  # scalar events: (B,) samples
        member_simulator=lambda g, l: l,
        num_members=3,
    )
    with pytest.raises(ValueError, match="Independent"):
        sbikit.simulate(model, 5, seed=0, show_progress=False)
    with pytest.raises(TypeError, match="num_members"):
        contract_model(num_members=2.5)
    with pytest.raises(ValueError, match="low <= high"):
        contract_model(num_members=(5, 2))
    with pytest.raises(TypeError, match="own prior"):
        sbikit.simulate(contract_model(), sbikit.BoxUniform(-torch.ones(1), torch.ones(1)), 5)


# --- set and sequence networks -------------------------------------------------------------


SET_NETWORKS = [lambda: DeepSet(2, 8), lambda: SetTransformer(2, 8)]
SEQUENCE_NETWORKS = [lambda: GRUSummary(2, 8), lambda: GRUSummary(2, 8, pooling="last_and_mean"), lambda: ConvSummary(2, 8)]


@pytest.mark.parametrize("make", SET_NETWORKS, ids=["deepset", "set_transformer"])
def test_set_networks_are_permutation_and_padding_invariant(make):
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(3, 7, 2)
    out = net(x)
    assert torch.allclose(net(x[:, torch.randperm(7)]), out, atol=1e-5)
    padded = torch.cat([x, 100 * torch.randn(3, 5, 2)], dim=1)
    mask = torch.arange(12) < 7
    assert torch.allclose(net(padded, mask=mask.expand(3, 12)), out, atol=1e-5)
    # a set of 1 member and one of 500 go through the same network
    assert net(torch.randn(2, 1, 2)).shape == net(torch.randn(2, 500, 2)).shape == (2, 8)
    # and members matter
    assert not torch.allclose(net(x[:, :3]), out, atol=1e-3)


@pytest.mark.parametrize("make", SEQUENCE_NETWORKS, ids=["gru", "gru_mean", "conv"])
def test_sequence_networks_ignore_trailing_padding_but_not_order(make):
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(2, 20, 2)
    out = net(x)
    padded = torch.cat([x, 100 * torch.randn(2, 9, 2)], dim=1)
    assert torch.allclose(net(padded, mask=(torch.arange(29) < 20).expand(2, 29)), out, atol=1e-5)
    assert not torch.allclose(net(x.flip(1)), out, atol=1e-3)
    # rows of different lengths in one batch match each row alone
    lengths = torch.tensor([[5], [20]])
    both = net(x, mask=torch.arange(20) < lengths)
    assert torch.allclose(both[0], net(x[:1, :5])[0], atol=1e-5)


@pytest.mark.parametrize("make", [DeepSet, SetTransformer, GRUSummary, ConvSummary])
def test_one_feature_networks_read_plain_vectors_as_members_or_steps(make):
    torch.manual_seed(0)
    net = make(1, 8).eval()
    x = torch.randn(3, 11)
    mask = torch.arange(11) < torch.tensor([[4], [11], [7]])
    assert torch.allclose(net(x), net(x.unsqueeze(-1)), atol=1e-6)
    assert torch.allclose(net(x, mask=mask), net(x.unsqueeze(-1), mask=mask), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, M, L\)"):  # two features cannot come as a vector
        make(2, 8)(x)


@pytest.mark.parametrize("make", SET_NETWORKS + SEQUENCE_NETWORKS, ids=["deepset", "st", "gru", "gru_mean", "conv"])
def test_empty_rows_and_bad_masks_are_errors(make):
    net = make()
    with pytest.raises(ValueError, match="at least one"):
        net(torch.randn(2, 4, 2), mask=torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="mask must have shape"):
        net(torch.randn(2, 4, 2), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, "):
        net(torch.randn(2, 4))


# --- NPE on sets ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def set_posterior():
    model = hierarchical_gaussian.model(tau=0.5, num_members=(5, 50))
    data = sbikit.simulate(model, num_simulations=3_000, seed=0, show_progress=False)
    config = sbikit.TrainConfig(show_progress=False, max_epochs=60)
    return model, sbikit.NPE(model.prior, training=config).fit(data)


def test_npe_picks_a_set_network_and_accepts_any_member_count(set_posterior):
    model, posterior = set_posterior
    assert isinstance(posterior.network.summary, DeepSet)
    for members in (1, 5, 23, 50):
        assert posterior.sample(10, x=torch.randn(members, 1)).shape == (10, 1)
    with pytest.warns(sbikit.OutOfRangeWarning, match="more members than any simulation trained on"):
        assert posterior.sample(10, x=torch.randn(500, 1)).shape == (10, 1)
    assert posterior.sample(10, x=torch.randn(4, 23, 1)).shape == (10, 4, 1)
    with pytest.raises(ValueError, match=r"\(M, 1\)"):
        posterior.sample(10, x=torch.randn(23, 2))
    with pytest.raises(ValueError, match="no members"):
        posterior.sample(10, x=torch.zeros(0, 1))


def test_npe_on_sets_matches_the_analytic_posterior(set_posterior):
    # tau = 0.5 is known: mu | x is normal; compare its mean and sd at 10 and 40 members
    model, posterior = set_posterior
    generator = torch.Generator().manual_seed(5)
    for members in (10, 40):
        for mu in (-0.5, 0.8):
            x = mu + (0.5**2 + 0.3**2) ** 0.5 * torch.randn(members, 1, generator=generator)
            exact = hierarchical_gaussian.mean_posterior(x, tau=0.5)
            samples = posterior.sample(20_000, x=x)[:, 0]
            # 3,000 groups: about 15% of an sd on the mean, 20% on the width
            assert abs(float(samples.mean()) - float(exact.loc)) < 0.2 * float(exact.scale)
            assert abs(float(samples.std()) / float(exact.scale) - 1) < 0.2


def test_set_posterior_round_trips(set_posterior, tmp_path):
    _, posterior = set_posterior
    posterior.save(tmp_path / "set.sbk")
    loaded = sbikit.load(tmp_path / "set.sbk")
    x, theta = torch.randn(17, 1), torch.zeros(3, 1)
    assert loaded.structure == "set"
    assert torch.equal(loaded.log_prob(theta, x=x), posterior.log_prob(theta, x=x))


@pytest.mark.parametrize("summary", [SetTransformer(1, 16), GRUSummary(1, 16),
                                     GRUSummary(1, 16, pooling="last_and_mean"), ConvSummary(1, 16)],
                         ids=["set_transformer", "gru", "gru_mean", "conv"])
def test_every_structured_network_trains_and_round_trips(summary, tmp_path):
    model = hierarchical_gaussian.model(tau=0.5, num_members=(3, 8))
    data = sbikit.simulate(model, num_simulations=200, seed=0, show_progress=False)
    config = sbikit.TrainConfig(show_progress=False, max_epochs=2)
    posterior = sbikit.NPE(model.prior, summary=summary, training=config).fit(data)
    posterior.save(tmp_path / "p.sbk")
    loaded = sbikit.load(tmp_path / "p.sbk")
    x, theta = torch.randn(6, 1), torch.zeros(3, 1)
    assert torch.equal(loaded.log_prob(theta, x=x), posterior.log_prob(theta, x=x))


# --- state-space models ------------------------------------------------------------------


from sbikit.simulators import ornstein_uhlenbeck as ou  # noqa: E402


def test_state_space_on_a_fixed_grid():
    data = sbikit.simulate(ou.model(), num_simulations=20, seed=0, show_progress=False)
    assert data.structure == "series" and data.x.shape == (20, 50, 2) and bool(data.mask.all())
    assert torch.allclose(data.x[:, :, 0], ou.TIMES.expand(20, -1))


def test_state_space_with_irregular_grids_of_varying_length():
    def times(rng):
        return np.sort(rng.uniform(0.0, 10.0, size=int(rng.integers(10, 31))))

    model = sbikit.StateSpace(ou.prior(), times=times, initial=ou._initial, transition=ou._transition,
                              observation=ou._observation)
    a = sbikit.simulate(model, num_simulations=40, seed=0, show_progress=False)
    b = sbikit.simulate(model, num_simulations=40, seed=0, batch_size=6, show_progress=False)
    lengths = a.mask.sum(1)
    assert int(lengths.min()) >= 10 and int(lengths.max()) <= 30 and a.x.shape[1] == int(lengths.max())
    for i in range(40):  # the same series, whatever the batch, up to its own length
        n = int(lengths[i])
        assert torch.equal(a.x[i, :n], b.x[i, :n]) and int(b.mask[i].sum()) == n
    assert bool((a.x[:, 1:, 0][a.mask[:, 1:]] > a.x[:, :-1, 0][a.mask[:, 1:]]).all())


def _ou_covariance(theta, times):
    kappa, sigma = float(theta[0]), float(theta[2])
    lags = (times[:, None] - times[None, :]).abs().double()
    return sigma**2 / (2 * kappa) * torch.exp(-kappa * lags) + ou.NOISE**2 * torch.eye(len(times), dtype=torch.float64)


def test_ou_series_have_the_exact_gaussian_law():
    # a prior concentrated on one theta: the series are then draws from N(mu, C) with the OU covariance
    theta = torch.tensor([0.7, 0.5, 0.9])
    times = torch.tensor([0.0, 0.3, 1.0, 2.5, 2.6, 6.0])
    point = sbikit.BoxUniform(theta - 1e-6, theta + 1e-6)
    model = sbikit.StateSpace(point, times=times, initial=ou._initial, transition=ou._transition,
                              observation=ou._observation)
    x = sbikit.simulate(model, num_simulations=20_000, seed=0, show_progress=False).x[:, :, 1].double()
    exact = _ou_covariance(theta, times)
    # 20,000 series: the standard error of a covariance entry is about 0.01 here
    assert torch.allclose(x.mean(0), torch.full((6,), 0.5, dtype=torch.float64), atol=0.03)
    assert torch.allclose(torch.cov(x.T), exact, atol=0.04)


def test_ou_kalman_likelihood_is_the_multivariate_normal_density():
    generator = torch.Generator().manual_seed(0)
    times = torch.sort(10 * torch.rand(12, generator=generator)).values
    x = torch.stack([times, torch.randn(12, generator=generator)], dim=1)
    thetas = torch.tensor([[0.7, 0.5, 0.9], [1.8, -1.0, 0.2], [0.1, 0.0, 1.4]])
    exact = torch.stack([
        torch.distributions.MultivariateNormal(
            torch.full((12,), float(t[1]), dtype=torch.float64), _ou_covariance(t, times)
        ).log_prob(x[:, 1].double())
        for t in thetas
    ])
    assert torch.allclose(ou.log_likelihood(thetas, x), exact, atol=1e-8)


def test_ou_reference_posterior_has_a_large_effective_sample_size():
    data = sbikit.simulate(ou.model(), num_simulations=1, seed=3, show_progress=False)
    samples = ou.reference_posterior(data.x[0], 2_000, seed=0, draws=50_000)
    assert samples.shape == (2_000, 3)
    assert bool(ou.prior().support.check(samples).all())


def test_npe_on_series_picks_a_recurrent_network_and_takes_any_length(tmp_path):
    data = sbikit.simulate(ou.model(), num_simulations=300, seed=0, show_progress=False)
    config = sbikit.TrainConfig(show_progress=False, max_epochs=2)
    posterior = sbikit.NPE(ou.prior(), training=config).fit(data)
    assert isinstance(posterior.network.summary, GRUSummary)
    assert posterior.sample(5, x=data.x[0, :20]).shape == (5, 3)
    # ten more steps, at times beyond any trained on: both are out of range
    with pytest.warns(sbikit.OutOfRangeWarning, match="longer"), \
            pytest.warns(sbikit.OutOfRangeWarning, match="feature 0"):
        posterior.sample(5, x=torch.cat([data.x[0], data.x[0, -10:] + torch.tensor([10.0, 0.0])]))
    posterior.save(tmp_path / "ou.sbk")
    loaded = sbikit.load(tmp_path / "ou.sbk")
    theta = ou.prior().sample((4,))
    assert torch.equal(loaded.log_prob(theta, x=data.x[1]), posterior.log_prob(theta, x=data.x[1]))


# --- the joint posterior of globals and locals ---------------------------------------------


@pytest.fixture(scope="module")
def joint_posterior():
    model = hierarchical_gaussian.model(num_members=(5, 30))
    data = sbikit.simulate(model, num_simulations=3_000, seed=0, show_progress=False)
    config = sbikit.TrainConfig(show_progress=False, max_epochs=60)
    return model, sbikit.HierarchicalNPE(model, training=config).fit(data)


def test_local_posterior_matches_the_exact_conditional(joint_posterior):
    # given (mu, tau) and x_j, the local is normal with precision 1/tau^2 + 1/0.3^2
    _, joint = joint_posterior
    for mu, tau, x_j in ((0.3, 0.5, 1.0), (-0.8, 0.25, -0.5)):
        g = torch.tensor([[mu, tau]])
        exact = hierarchical_gaussian.local_posterior(g.expand(20_000, 2), torch.tensor(x_j), seed=0)[:, 0]
        context = joint._context(g, torch.tensor([[x_j]]))[0]
        samples = joint.local_posterior.sample(20_000, x=context[0])[:, 0]
        assert abs(float(samples.mean() - exact.mean())) < 0.2 * float(exact.std())
        assert abs(float(samples.std() / exact.std()) - 1) < 0.15


def test_joint_samples_shapes_names_and_arviz(joint_posterior):
    _, joint = joint_posterior
    x = 0.4 + 0.5 * torch.randn(23, 1, generator=torch.Generator().manual_seed(0))
    g, local = joint.sample_joint(1_000, x=x)
    assert g.shape == (1_000, 2) and local.shape == (1_000, 23, 1)
    assert bool((g[:, 1] > 0).all())
    # each member's local sits between its data and the group mean: closer to x_j than the spread
    assert float((local.mean(0)[:, 0] - x[:, 0]).abs().max()) < 0.5
    idata = joint.to_arviz(x, num_samples=1_000)
    assert idata.posterior["local_0"].dims == ("chain", "draw", "member")
    assert idata.posterior.sizes["member"] == 23 and set(joint.parameter_names) <= set(idata.posterior.data_vars)
    assert joint.log_prob_joint(g[:5], local[:5], x).shape == (5,)


def test_joint_posterior_round_trips(joint_posterior, tmp_path):
    _, joint = joint_posterior
    joint.save(tmp_path / "joint.sbk")
    loaded = sbikit.load(tmp_path / "joint.sbk")
    assert isinstance(loaded, sbikit.HierarchicalPosterior)
    x = torch.randn(7, 1)
    torch.manual_seed(0)
    g, local = joint.sample_joint(50, x=x)
    torch.manual_seed(0)
    g2, local2 = loaded.sample_joint(50, x=x)
    assert torch.equal(g, g2) and torch.equal(local, local2)
    assert torch.equal(loaded.log_prob_joint(g, local, x), joint.log_prob_joint(g, local, x))


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_hierarchical_npe_refuses_what_it_cannot_learn():
    with pytest.raises(TypeError, match="MixedEffects"):
        sbikit.HierarchicalNPE(ou.model())
    model = hierarchical_gaussian.model(num_members=3)
    with pytest.raises(TypeError, match="mixed-effects simulations"):
        sbikit.HierarchicalNPE(model).fit(sbikit.Simulations(theta=torch.rand(10, 2), x=torch.randn(10, 3)))
    moving = sbikit.MixedEffects(
        global_prior=sbikit.BoxUniform(torch.ones(1), 2 * torch.ones(1)),
        local_prior=lambda g: Independent(torch.distributions.Uniform(torch.zeros_like(g), g), 1),
        member_simulator=lambda g, l: l + 0.1 * torch.randn_like(l),
        num_members=3,
    )
    data = sbikit.simulate(moving, 50, seed=0, show_progress=False)
    config = sbikit.TrainConfig(show_progress=False, max_epochs=1)
    with pytest.raises(ValueError, match="changes with the global parameters"):
        sbikit.HierarchicalNPE(moving, training=config).fit(data)


def test_bounded_locals_get_the_support_of_one_member():
    from sbikit.estimators.hierarchical import _local_support
    from sbikit.priors import support_bounds

    model = sbikit.MixedEffects(
        global_prior=sbikit.BoxUniform(torch.ones(2), 2 * torch.ones(2)),
        local_prior=lambda g: Independent(torch.distributions.Uniform(torch.zeros_like(g), 3 * torch.ones_like(g)), 1),
        member_simulator=lambda g, l: l + 0.1 * torch.randn_like(l),
        num_members=3,
    )
    support = _local_support(model, model.global_prior.sample((8,)), 2)
    low, high = support_bounds(support)
    assert low.tolist() == [0.0, 0.0] and high.tolist() == [3.0, 3.0]
    assert support.log_prob(torch.tensor([[1.0, 2.9], [1.0, 3.1]])).tolist() == [0.0, -float("inf")]


# --- the Milky Way disk ------------------------------------------------------------------


from scipy import stats  # noqa: E402

from sbikit.simulators import galactic_disk as gd  # noqa: E402


@pytest.mark.parametrize("theta", [[50.0, 0.01, 20.0], [30.0, 0.0, 30.0], [70.0, 0.03, 15.0]])
def test_disk_stars_follow_the_isothermal_density(theta):
    theta = torch.tensor([theta]).expand(100_000, 3)
    stars = gd.IsothermalDisk(theta).sample()
    # heights: |z| against the CDF of nu(z) = exp(-Phi(z) / sigma^2) by fine quadrature
    z = torch.linspace(0, 40_000, 400_001, dtype=torch.float64)
    nu = torch.exp(-gd.potential(z[None], theta[:1].double())[0] / float(theta[0, 2]) ** 2)
    cdf = (torch.cumsum(nu, 0) / nu.sum()).numpy()
    assert stats.kstest(stars[:, 0].abs().numpy(), lambda q: np.interp(q, z.numpy(), cdf)).pvalue > 0.001
    assert abs(float((stars[:, 0] > 0).float().mean()) - 0.5) < 0.006
    # velocities: N(0, sigma^2), independent of the height
    assert abs(float(stars[:, 1].std()) / float(theta[0, 2]) - 1) < 0.01
    assert abs(np.corrcoef(stars[:, 0].abs().numpy(), stars[:, 1].abs().numpy())[0, 1]) < 0.015


def test_disk_density_is_normalized():
    theta = torch.tensor([[50.0, 0.01, 20.0]])
    z = torch.linspace(-4_000, 4_000, 1601)
    v = torch.linspace(-120, 120, 241)
    grid = torch.stack(torch.meshgrid(z, v, indexing="ij"), -1).reshape(-1, 2)
    log_p = gd.IsothermalDisk(theta.expand(len(grid), 3)).log_prob(grid)
    total = float(log_p.double().exp().sum()) * float(z[1] - z[0]) * float(v[1] - v[0])
    assert total == pytest.approx(1.0, abs=0.01)


def test_disk_model_observes_stars_with_their_errors():
    data = sbikit.simulate(gd.model(num_members=(500, 800)), 40, seed=0, show_progress=False)
    assert data.x.shape[1:] == (800, 2) and data.theta_local.shape[1:] == (800, 2)
    errors = (data.x - data.theta_local)[data.mask]
    assert torch.allclose(errors.std(0), torch.tensor([gd.POSITION_ERROR, gd.VELOCITY_ERROR]), rtol=0.02)
    # stars of one galaxy: the velocity dispersion is the global sigma
    dispersion = torch.stack([data.theta_local[i][data.mask[i]][:, 1].std() for i in range(40)])
    assert float((dispersion / data.theta[:, 2] - 1).abs().max()) < 0.15


def test_disk_likelihood_integrates_out_the_true_heights():
    from scipy import integrate

    def nu(z, surface, rho, sigma):  # the isothermal density, unnormalized, written out again
        phi = 2 * math.pi * gd.G * (surface * (math.sqrt(z**2 + gd.DISK_SCALE**2) - gd.DISK_SCALE) + rho * z**2)
        return math.exp(-phi / sigma**2)

    theta = torch.tensor([[50.0, 0.01, 20.0], [35.0, 0.025, 27.0], [68.0, 0.0, 16.0]], dtype=torch.float64)
    stars = torch.tensor([[10.0, 5.0], [-300.0, -20.0], [820.0, 1.0]], dtype=torch.float64)
    got = gd.log_likelihood(theta, stars)
    for row, value in zip(theta.tolist(), got.tolist()):
        norm = 2 * integrate.quad(lambda z: nu(z, *row), 0, np.inf, limit=200)[0]
        want = 0.0
        for height, velocity in stars.tolist():
            error = gd.POSITION_ERROR
            p_height = integrate.quad(lambda z: nu(z, *row) * stats.norm.pdf(height - z, scale=error),
                                      height - 10 * error, height + 10 * error)[0] / norm
            p_velocity = stats.norm.pdf(velocity, scale=math.sqrt(row[2] ** 2 + gd.VELOCITY_ERROR**2))
            want += math.log(p_height * p_velocity)
        assert value == pytest.approx(want, abs=1e-5)


def test_disk_reference_posterior_matches_importance_sampling_from_the_prior():
    # the grid, the proposal and the resampling against brute force: 300,000 prior draws
    # weighted by the exact likelihood of one galaxy of 60 stars
    data = sbikit.simulate(gd.model(num_members=60), 1, seed=3, show_progress=False)
    stars = data.x[0]
    draws = gd.reference_posterior(stars, 20_000, seed=0).double()
    prior_draws = gd.prior().sample((300_000,)).double()
    log_w = gd.log_likelihood(prior_draws, stars)
    weights = torch.softmax(log_w, 0)
    assert float(1 / (weights**2).sum()) > 3_000  # the brute force's own effective sample size
    mean = weights @ prior_draws
    sd = (weights @ (prior_draws - mean) ** 2).sqrt()
    torch.testing.assert_close((draws.mean(0) - mean) / sd, torch.zeros(3, dtype=torch.float64), atol=0.04, rtol=0)
    torch.testing.assert_close(draws.std(0) / sd, torch.ones(3, dtype=torch.float64), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match=r"\(m, 2\)"):
        gd.reference_posterior(stars[:, :1], 10)


def test_mean_pooling_reads_every_observed_step():
    torch.manual_seed(0)
    net = GRUSummary(1, 8, pooling="last_and_mean").eval()
    x = torch.randn(1, 30, 1)
    # a change at the first step reaches the output through the mean as well as the recurrence
    changed = x.clone()
    changed[0, 0] += 5.0
    assert not torch.allclose(net(changed), net(x), atol=1e-4)
    # a step missing inside the series is left out of the mean: its value changes nothing
    mask = torch.ones(1, 30, dtype=torch.bool)
    mask[0, 10] = False
    other = x.clone()
    other[0, 10] = 100.0
    assert torch.allclose(net(other, mask=mask), net(x, mask=mask), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        GRUSummary(1, 8, pooling="max")
