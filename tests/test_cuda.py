"""Training and sampling on a CUDA device: every estimator, streaming, saving and the diagnostics.

CI has no GPU, so these tests skip there; they run wherever torch sees CUDA. Each checks that
the work happens on the device and that its result means the same as on the CPU (a
posterior's width, a file read back on the other device), not only that it runs.
"""

import math
import pytest
import torch

import sbikit
import faulty

from conftest import noisy
from sbikit.runs import open_store
from sbikit.simulators import hierarchical_gaussian, ornstein_uhlenbeck

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda(**kwargs):
    return sbikit.TrainConfig(device="cuda", show_progress=False, **kwargs)


@pytest.fixture(scope="module")
def linear():
    # x = theta + 0.1 eps under a box of width 4: the posterior is N(x, 0.1^2) away from the edges
    prior = sbikit.BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    data = sbikit.simulate(noisy, prior, 4_000, seed=0, show_progress=False)
    return prior, data


def test_npe_trains_on_cuda_and_its_posterior_has_the_exact_width(linear, tmp_path):
    prior, data = linear
    posterior = sbikit.NPE(prior, training=cuda()).fit(data)
    assert posterior.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in posterior.network.parameters())
    x_o = torch.tensor([0.3, -0.5])
    draws = posterior.sample(20_000, x=x_o)
    assert draws.device.type == "cpu" and draws.shape == (20_000, 2)
    assert torch.allclose(draws.mean(0), x_o, atol=0.04)  # 0.4 sd: NPE's error at 4,000 simulations
    assert torch.allclose(draws.std(0), torch.full((2,), 0.1), rtol=0.1)
    theta = torch.tensor([[0.3, -0.5], [0.4, -0.5]])
    log_p = posterior.log_prob(theta, x=x_o)
    # N(x, 0.01): one sd apart in one dimension is half a nat
    assert abs(float(log_p[0] - log_p[1]) - 0.5) < 0.15
    posterior.save(tmp_path / "p.sbk")
    for device in ("cpu", "cuda"):
        loaded = sbikit.load(tmp_path / "p.sbk", device=device)
        assert loaded.device.type == device
        assert torch.allclose(loaded.log_prob(theta, x=x_o), log_p, atol=1e-4)
    idata = posterior.to_arviz(x_o, num_samples=200, num_chains=2)
    assert idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"] == 200


def test_npe_on_a_series_and_hierarchical_npe_on_sets_train_on_cuda():
    series = sbikit.simulate(ornstein_uhlenbeck.model(), 300, seed=0, show_progress=False)
    prior = ornstein_uhlenbeck.prior()
    posterior = sbikit.NPE(prior, training=cuda(max_epochs=2, batch_size=64)).fit(series)
    assert posterior.device.type == "cuda"
    assert posterior.sample(50, x=series.x[0][series.mask[0]]).shape == (50, *prior.event_shape)

    model = hierarchical_gaussian.model(num_members=(5, 20))
    groups = sbikit.simulate(model, 300, seed=0, show_progress=False)
    joint = sbikit.HierarchicalNPE(model, training=cuda(max_epochs=2, batch_size=64)).fit(groups)
    members = groups.x[0][groups.mask[0]]
    theta, local = joint.sample_joint(30, x=members)
    assert theta.shape == (30, 2) and local.shape == (30, len(members), 1)
    assert torch.isfinite(joint.log_prob_joint(theta, local, x=members)).all()


def test_npe_streams_a_store_onto_cuda(tmp_path, monkeypatch):
    from sbikit.runs import stream as stream_module

    with pytest.warns(RuntimeWarning, match="returned NaN"):
        sbikit.simulate(faulty.non_finite, faulty.PRIOR, 2000, seed=0, batch_size=100, store=tmp_path / "a",
                        show_progress=False)
    store = open_store(tmp_path / "a")
    monkeypatch.setattr(stream_module, "memory_limit", lambda: 100_000)
    assert stream_module.too_large(store)
    posterior = sbikit.NPE(faulty.PRIOR, training=cuda(max_epochs=3, batch_size=128)).fit(store)
    assert posterior.history["epochs"] == 3 and all(math.isfinite(v) for v in posterior.history["train_loss"])


def test_nle_on_cuda_emulates_and_its_mcmc_posterior_has_the_exact_width(linear, tmp_path):
    prior, data = linear
    likelihood = sbikit.NLE(prior, training=cuda()).fit(data)
    assert likelihood.device.type == "cuda"
    theta = torch.tensor([0.5, -1.0])
    fake = likelihood.sample(20_000, theta=theta)
    assert fake.device.type == "cpu"
    assert torch.allclose(fake.mean(0), theta, atol=0.01) and torch.allclose(fake.std(0), torch.full((2,), 0.1), rtol=0.1)
    # 10 trials: N(mean of the trials, 0.1^2 / 10) away from the edges
    torch.manual_seed(1)
    trials = noisy(theta.expand(10, 2))
    posterior = likelihood.posterior(trials, sbikit.MCMCConfig(show_progress=False))
    draws = posterior.sample(4_000)
    assert torch.allclose(draws.mean(0), trials.mean(0), atol=0.015)
    assert torch.allclose(draws.std(0), torch.full((2,), 0.1 / math.sqrt(10)), rtol=0.15)
    likelihood.save(tmp_path / "l.sbk")
    loaded = sbikit.load(tmp_path / "l.sbk")
    x = torch.randn(3, 2) * 0.1
    assert torch.allclose(loaded.log_prob(x, theta=torch.zeros(2)), likelihood.log_prob(x, theta=torch.zeros(2)),
                          atol=1e-4)


def test_the_diagnostics_take_a_posterior_on_cuda(linear):
    prior, data = linear
    posterior = sbikit.NPE(prior, training=cuda()).fit(data)
    test = sbikit.simulate(noisy, prior, 200, seed=1, show_progress=False)
    result = sbikit.diagnostics.sbc(posterior, test, num_samples=100)
    assert result.ranks.shape == (200, 2)
    coverage = sbikit.diagnostics.coverage(posterior, test, num_samples=100)
    # a posterior of the right width covers about as often as it says, within the binomial noise of 200
    level = int(abs(coverage.levels - 0.68).argmin())
    assert abs(float(coverage.coverage[level]) - float(coverage.levels[level])) < 0.12
