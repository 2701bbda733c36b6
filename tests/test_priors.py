import math
import pytest
import torch

from torch.distributions import Independent, LogNormal, Normal, Uniform

import sbikit

from sbikit.priors import LinearTailsTransform, check_prior, from_unconstrained

from conftest import noisy


def product():
    return sbikit.ProductPrior([LogNormal(0.0, 0.5), Uniform(-1.0, 3.0), Normal(0.0, 2.0)])


def test_product_prior_samples_and_density():
    prior = product()
    theta = prior.sample((1000,))
    assert theta.shape == (1000, 3)
    assert bool((theta[:, 0] > 0).all()) and bool(((theta[:, 1] > -1) & (theta[:, 1] < 3)).all())
    expected = LogNormal(0.0, 0.5).log_prob(theta[:, 0]) + Uniform(-1.0, 3.0).log_prob(theta[:, 1]) + Normal(0.0, 2.0).log_prob(theta[:, 2])
    assert torch.allclose(prior.log_prob(theta), expected)


@pytest.mark.parametrize("prior", [product(), sbikit.BoxUniform(-torch.ones(2), torch.ones(2)), Independent(Normal(torch.zeros(2), 1.0), 1)])
def test_unconstrained_map_round_trips(prior):
    transform = from_unconstrained(prior)
    theta = prior.sample((100,))
    assert torch.allclose(transform(transform.inv(theta)), theta, atol=1e-5)
    assert transform.log_abs_det_jacobian(transform.inv(theta), theta).shape == (100,)


def test_check_prior_errors():
    with pytest.raises(TypeError, match="prior must be a torch.distributions.Distribution"):
        check_prior([0, 1])
    with pytest.raises(ValueError, match=r"event shape \(D,\)"):
        check_prior(Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="marginals\\[1\\] must be 1-D"):
        sbikit.ProductPrior([Normal(0.0, 1.0), Independent(Normal(torch.zeros(2), 1.0), 1)])
    with pytest.raises(ValueError, match="low < high"):
        sbikit.BoxUniform(torch.ones(2), torch.ones(2))


@pytest.fixture(scope="module")
def product_posterior():
    prior = product()
    data = sbikit.simulate(noisy, prior, 500, seed=0, show_progress=False)
    config = sbikit.TrainConfig(max_epochs=3, show_progress=False)
    return prior, data, sbikit.NPE(prior, training=config).fit(data)


def test_samples_never_leave_the_support(product_posterior):
    prior, data, posterior = product_posterior
    # observations far outside the training data push the flow to extremes
    x = torch.tensor([[50.0, -40.0, 0.0], [-1e3, 1e3, 1e3]])
    with pytest.warns(sbikit.OutOfRangeWarning) as record:
        samples = posterior.sample(20_000, x=x)
    messages = " ".join(str(w.message) for w in record)
    assert "beyond the range the estimator was trained on" in messages
    # the flow, truncated to the box, puts next to nothing inside it there: rejection gives up
    assert "less than 0.1% of its mass inside the prior's support" in messages
    assert bool(torch.isfinite(samples).all())
    assert bool((samples[..., 0] > 0).all())
    assert bool(((samples[..., 1] > -1) & (samples[..., 1] < 3)).all())
    assert bool(torch.isfinite(prior.log_prob(samples)).all())


def test_box_samples_are_strictly_inside():
    prior = sbikit.BoxUniform(torch.zeros(2), torch.ones(2))
    data = sbikit.simulate(lambda t: t + 0.01 * torch.randn_like(t), prior, 300, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=2, show_progress=False)).fit(data)
    with pytest.warns(sbikit.OutOfRangeWarning) as record:
        samples = posterior.sample(50_000, x=torch.tensor([40.0, -40.0]))
    assert any("feature 1 = -40" in str(w.message) for w in record)
    assert bool(((samples > 0) & (samples < 1)).all())
    with pytest.warns(sbikit.OutOfRangeWarning):
        assert bool(torch.isfinite(posterior.log_prob(samples, x=torch.tensor([40.0, -40.0]))).all())


def _grid_integral(posterior, x, lows, highs, n=400):
    # the midpoint rule on a grid graded towards the box's edges, t -> (1 - cos(pi t)) / 2: where
    # mass sits against an edge, the density rises steeply in the outer hundredth of the interval
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    grade, weight = (1 - torch.cos(torch.pi * t)) / 2, torch.pi / 2 * torch.sin(torch.pi * t) / n
    a, b = (lo + (hi - lo) * grade for lo, hi in zip(lows, highs))
    grid = torch.stack(torch.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2).float()
    cell = (highs[0] - lows[0]) * (highs[1] - lows[1]) * (weight[:, None] * weight[None, :]).reshape(-1)
    return float((posterior.log_prob(grid, x=x).double().exp() * cell).sum())


def test_log_prob_is_a_normalized_density_on_a_box():
    prior = sbikit.BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    data = sbikit.simulate(lambda t: t + 0.3 * torch.randn_like(t), prior, 500, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=5, show_progress=False)).fit(data)
    for x in (torch.tensor([0.3, -0.5]), torch.tensor([1.9, 1.9])):
        assert _grid_integral(posterior, x, (-2, -2), (2, 2), n=1200) == pytest.approx(1.0, abs=0.02)


def test_log_prob_includes_the_jacobian_of_a_half_line():
    prior = sbikit.ProductPrior([LogNormal(0.0, 0.5), Uniform(-1.0, 1.0)])
    data = sbikit.simulate(lambda t: t + 0.2 * torch.randn_like(t), prior, 500, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=5, show_progress=False)).fit(data)
    # the density vanishes fast beyond 12 for these data; integrate over (0, 12] x (-1, 1)
    total = _grid_integral(posterior, torch.tensor([1.0, 0.0]), (0.0, -1.0), (12.0, 1.0), n=600)
    assert total == pytest.approx(1.0, abs=0.03)
    assert math.isfinite(total)


def test_linear_tails_transform_is_a_smooth_bijection():
    transform = LinearTailsTransform(eps=0.05)
    u = torch.linspace(-1.5, 1.5, 30_001, dtype=torch.float64)
    s = transform(u)
    assert bool((s > 0).all() and (s < 1).all()) and bool((s[1:] > s[:-1]).all())
    torch.testing.assert_close(transform.inv(s), u)
    # the inner 90% of the interval is a shift: a Gaussian posterior there keeps its width
    inner = u.abs() <= 0.45
    torch.testing.assert_close(s[inner], u[inner] + 0.5)
    # the Jacobian is the derivative, continuous across the joins at +-0.45
    jacobian = transform.log_abs_det_jacobian(u, s).exp()
    u_ = u.clone().requires_grad_()
    (derivative,) = torch.autograd.grad(transform(u_).sum(), u_)
    torch.testing.assert_close(jacobian, derivative)
    assert float(jacobian[1:].sub(jacobian[:-1]).abs().max()) < 1e-2
    # it integrates to the interval's length: a normalized density stays normalized
    assert float(torch.trapezoid(jacobian, u)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="eps"):
        LinearTailsTransform(eps=0.5)


def test_intervals_map_linearly_and_other_supports_as_torch_does():
    prior = sbikit.ProductPrior([Uniform(-1.0, 3.0), LogNormal(0.0, 1.0), Normal(0.0, 1.0)])
    u = torch.tensor([[0.25, 0.0, 0.7]], dtype=torch.float64)
    theta = from_unconstrained(prior)(u)
    # (0.25 + 0.5) * 4 - 1 = 2 on the interval; exp on the half-line; the identity on the line
    torch.testing.assert_close(theta, torch.tensor([[2.0, 1.0, 0.7]], dtype=torch.float64))
    old = from_unconstrained(prior, "sigmoid")(u)
    assert float(old[0, 0]) == pytest.approx(-1 + 4 * torch.sigmoid(torch.tensor(0.25)).item())
    with pytest.raises(ValueError, match="intervals"):
        from_unconstrained(prior, "tanh")
