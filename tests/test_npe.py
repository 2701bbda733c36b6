import functools
import numpy as np
import math
import pytest
import re
import torch
import warnings
import torch.nn as nn
import zuko

import sbikit

from sbikit.train import TrainConfig, Training, fit, held_out

from conftest import noisy


@pytest.fixture(scope="module")
def trained():
    prior = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    data = sbikit.simulate(noisy, prior, 1000, seed=0, show_progress=False)
    config = TrainConfig(max_epochs=15, show_progress=False)
    return prior, data, sbikit.NPE(prior, training=config).fit(data)


def test_sample_and_log_prob_shapes(trained):
    _, _, posterior = trained
    x = torch.tensor([0.5, -0.2, 1.0])
    assert posterior.sample(11, x=x).shape == (11, 3)
    assert posterior.log_prob(torch.zeros(11, 3), x=x).shape == (11,)
    xs = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).clamp(-2, 2)  # inside the training range
    samples = posterior.sample(11, x=xs)
    assert samples.shape == (11, 4, 3)
    assert posterior.log_prob(samples, x=xs).shape == (11, 4)
    assert posterior.log_prob(torch.zeros(3), x=x).shape == ()


def test_batched_sampling_matches_one_by_one(trained):
    _, _, posterior = trained
    xs = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 1.5]])
    batch = posterior.sample(4000, x=xs)
    for j in range(2):
        single = posterior.sample(4000, x=xs[j])
        assert torch.allclose(batch[:, j].mean(0), single.mean(0), atol=0.05)
        theta = single[:5]
        assert torch.allclose(
            posterior.log_prob(theta.unsqueeze(1).expand(5, 2, 3), x=xs)[:, j], posterior.log_prob(theta, x=xs[j]), atol=1e-4
        )


def test_chunked_sampling_draws_the_same_whatever_the_threads(trained, monkeypatch):
    import sbikit.posterior

    _, _, posterior = trained
    monkeypatch.setattr(sbikit.posterior, "_SAMPLE_CHUNK", 256)  # 100 samples: 2 observations per chunk
    xs = 2 * torch.rand(9, 3, generator=torch.Generator().manual_seed(0)) - 1  # inside the training range
    threads = torch.get_num_threads()
    draws = {}
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            draws[n] = posterior.sample(100, x=xs)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)
    assert draws[1].shape == (100, 9, 3)
    assert torch.equal(draws[1], draws[3])
    # chunk by chunk, in order: the third chunk's draws come from a generator with the third seed
    torch.manual_seed(0)
    seed = torch.randint(2**62, (5,)).tolist()[2]
    third = posterior.distribution(xs[4:6]).sample((100,), torch.Generator().manual_seed(seed))
    assert torch.equal(draws[1][:, 4:6], third)


def test_forward_returns_a_distribution(trained):
    _, _, posterior = trained
    dist = posterior(torch.zeros(3))
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.event_shape == (3,) and dist.batch_shape == ()


def test_history_and_standardization_are_kept(trained):
    _, data, posterior = trained
    history = posterior.history
    assert len(history["train_loss"]) == len(history["validation_loss"]) == history["epochs"]
    losses = [history["initial_validation_loss"]] + history["validation_loss"]
    assert losses[history["best_epoch"] + 1] == min(losses)  # -1: the starting weights
    # standardized on the rows trained on, not those held out for validation
    kept = ~held_out(len(data), TrainConfig(max_epochs=15))  # the fixture's seed
    assert torch.allclose(posterior.network.x_loc, data.x[kept].mean(0), atol=1e-5)
    assert torch.allclose(posterior.network.x_scale, data.x[kept].std(0), atol=1e-5)
    assert not torch.allclose(posterior.network.x_loc, data.x.mean(0), atol=1e-5)
    state = posterior.network.state_dict()
    assert {"theta_loc", "theta_scale", "x_loc", "x_scale"} <= set(state)


def test_training_is_seeded(box3):
    data = sbikit.simulate(noisy, box3, 300, seed=0, show_progress=False)
    config = TrainConfig(max_epochs=2, show_progress=False, seed=7)
    a = sbikit.NPE(box3, training=config).fit(data)
    b = sbikit.NPE(box3, training=config).fit(data)
    c = sbikit.NPE(box3, training=TrainConfig(max_epochs=2, show_progress=False, seed=8)).fit(data)
    theta = box3.sample((5,))
    assert torch.equal(a.log_prob(theta, x=data.x[0]), b.log_prob(theta, x=data.x[0]))
    assert not torch.equal(a.log_prob(theta, x=data.x[0]), c.log_prob(theta, x=data.x[0]))


def test_fit_leaves_the_recipe_reusable(box3, quick):
    summary = sbikit.nn.MLP(3, out_features=4)
    before = [p.clone() for p in summary.parameters()]
    npe = sbikit.NPE(box3, summary=summary, training=quick)
    data = sbikit.simulate(noisy, box3, 200, seed=0, show_progress=False)
    posterior = npe.fit(data)
    assert all(torch.equal(a, b) for a, b in zip(before, summary.parameters()))
    trained = list(posterior.network.summary.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trained)), "the summary was not trained"


@pytest.mark.parametrize(
    "flow",
    [
        sbikit.coupling_flow,
        sbikit.affine_coupling_flow,
        functools.partial(sbikit.coupling_flow, transforms=2, bins=4),
        zuko.flows.MAF,
        functools.partial(zuko.flows.NSF, transforms=2),
    ],
    ids=["spline-coupling", "affine-coupling", "spline-coupling-partial", "maf", "nsf"],
)
def test_every_flow_builder_trains_samples_and_round_trips(box3, quick, flow, tmp_path):
    data = sbikit.simulate(noisy, box3, 300, seed=0, show_progress=False)
    posterior = sbikit.NPE(box3, flow=flow, training=quick).fit(data)
    x = data.x[0]
    samples = posterior.sample(50, x=x)
    assert samples.shape == (50, 3) and bool(box3.support.check(samples).all())
    log_p = posterior.log_prob(samples, x=x)
    assert torch.isfinite(log_p).all()
    posterior.save(tmp_path / "p.sbk")
    loaded = sbikit.load(tmp_path / "p.sbk")
    assert torch.allclose(loaded.log_prob(samples, x=x), log_p, atol=1e-5)


def test_one_parameter(quick):
    prior = sbikit.BoxUniform(torch.zeros(1), torch.ones(1))
    data = sbikit.simulate(lambda t: t + 0.05 * torch.randn(len(t), 2), prior, 200, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=quick).fit(data)
    assert posterior.sample(7, x=torch.tensor([0.5, 0.5])).shape == (7, 1)


class SetSummary(nn.Module):
    """A custom summary network for (B, M, 2) sets: mean-pooled MLP."""

    def __init__(self):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x):
        return self.phi(x).mean(-2)


def test_custom_summary_on_structured_x(box3, quick, tmp_path):
    def members(theta):
        return theta[:, None, :2] + 0.1 * torch.randn(len(theta), 6, 2)

    data = sbikit.simulate(members, box3, 200, seed=0, show_progress=False)
    posterior = sbikit.NPE(box3, summary=SetSummary(), training=quick).fit(data)
    assert posterior.sample(3, x=data.x[:4]).shape == (3, 4, 3)
    posterior.save(tmp_path / "set.sbk")
    with pytest.raises(sbikit.FormatError, match="custom summary"):
        sbikit.load(tmp_path / "set.sbk")
    loaded = sbikit.load(tmp_path / "set.sbk", summary=SetSummary())
    theta = box3.sample((4,))
    assert torch.allclose(loaded.log_prob(theta, x=data.x[0]), posterior.log_prob(theta, x=data.x[0]))


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_default_mlp_accepts_multidimensional_x(box3, quick):
    data = sbikit.simulate(lambda t: t.unsqueeze(1).repeat(1, 4, 1), box3, 100, seed=0, show_progress=False)
    posterior = sbikit.NPE(box3, training=quick).fit(data)
    assert posterior.sample(2, x=torch.zeros(5, 4, 3)).shape == (2, 5, 3)


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_summary_with_a_wrong_output_is_an_error(box3, quick):
    data = sbikit.simulate(noisy, box3, 50, seed=0, show_progress=False)
    with pytest.raises(ValueError, match=r"summary must map observations \(B, 3\)"):
        sbikit.NPE(box3, summary=nn.Flatten(0), training=quick).fit(data)


# ---- bad input ---------------------------------------------------------------------------


def test_theta_and_x_with_different_row_counts():
    with pytest.raises(ValueError, match=r"same number of rows.*\(10, 3\).*\(9, 3\)"):
        sbikit.Simulations(theta=torch.zeros(10, 3), x=torch.zeros(9, 3))


def test_simulations_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"theta must have shape \(N, D\)"):
        sbikit.Simulations(theta=torch.zeros(10), x=torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(N, \*\)"):
        sbikit.Simulations(theta=torch.zeros(10, 1), x=torch.zeros(10))
    with pytest.raises(TypeError, match="theta must hold real numbers"):
        sbikit.Simulations(theta=torch.zeros(10, 1, dtype=torch.complex64), x=torch.zeros(10, 1))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        sbikit.Simulations(theta=torch.zeros(2, 1), x=[["a"], ["b"]])


def test_x_obs_with_the_wrong_shape(trained):
    _, _, posterior = trained
    with pytest.raises(ValueError, match=r"x has shape \(4,\) but the simulator produced outputs of shape \(3,\)"):
        posterior.sample(10, x=torch.zeros(4))
    with pytest.raises(ValueError, match=r"x has shape \(2, 2\)"):
        posterior.log_prob(torch.zeros(3), x=torch.zeros(2, 2))


@pytest.mark.parametrize("bad", [torch.nan, torch.inf])
def test_non_finite_x_obs(trained, bad):
    _, _, posterior = trained
    x = torch.tensor([0.0, bad, 1.0])
    with pytest.raises(ValueError, match="x contains (NaN|inf)"):
        posterior.sample(10, x=x)
    with pytest.raises(ValueError, match="x contains"):
        posterior.to_arviz(x)


def test_theta_dimension_differs_from_the_prior(trained, box3, quick):
    prior, data, posterior = trained
    with pytest.raises(ValueError, match=r"theta has shape \(5, 2\) but the prior has 3 dimensions"):
        posterior.log_prob(torch.zeros(5, 2), x=torch.zeros(3))
    wrong = sbikit.Simulations(theta=torch.zeros(10, 2), x=torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"data.theta has shape \(10, 2\) but the prior has 3 dimensions"):
        sbikit.NPE(box3, training=quick).fit(wrong)


def test_theta_outside_the_support(box3, quick):
    theta = torch.zeros(20, 3)
    theta[4, 1] = 3.0
    with pytest.raises(ValueError, match=r"1 rows of theta lie outside the prior's support \(row 4"):
        sbikit.NPE(box3, training=quick).fit(sbikit.Simulations(theta=theta, x=theta))


def test_log_prob_outside_the_support_is_minus_infinity(trained):
    _, _, posterior = trained
    theta = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.5, 0.0]])
    log_p = posterior.log_prob(theta, x=torch.zeros(3))
    assert math.isfinite(log_p[0]) and log_p[1] == -math.inf


def test_parameters_on_a_bound_of_the_box_are_read_just_inside_it(trained, box3, quick):
    # torch's interval is closed, so a bound is in the support; the map to unconstrained
    # space sends it to infinity, which gave a NaN density and refused training rows on it
    _, data, posterior = trained
    on_bound = torch.tensor([[-2.0, 0.0, 2.0], [0.3, -2.0, 0.1]])
    inside = torch.nextafter(on_bound, torch.zeros(()))
    log_p = posterior.log_prob(on_bound, x=torch.zeros(3))
    assert bool(torch.isfinite(log_p).all()), log_p
    # the density is continuous up to the bound (a truncated flow: no map sends the bound away)
    torch.testing.assert_close(log_p, posterior.log_prob(inside, x=torch.zeros(3)), rtol=1e-6, atol=1e-5)
    theta = data.theta[:200].clone()
    theta[0, 0], theta[1, 2] = -2.0, 2.0
    moved = sbikit.NPE(box3, training=quick).fit(sbikit.Simulations(theta=theta, x=data.x[:200]))
    assert moved.network.theta_loc.isfinite().all() and moved.network.theta_scale.isfinite().all()
    assert bool(torch.isfinite(moved.log_prob(on_bound, x=torch.zeros(3))).all())


def test_fit_needs_simulations(box3):
    with pytest.raises(TypeError, match=r"sbikit.Simulations\(theta=theta, x=x\)"):
        sbikit.NPE(box3).fit((torch.zeros(5, 3), torch.zeros(5, 3)))


def test_bad_options(box3):
    with pytest.raises(TypeError, match="summary must be a torch.nn.Module"):
        sbikit.NPE(box3, summary=lambda x: x)
    with pytest.raises(TypeError, match="flow must be a builder"):
        sbikit.NPE(box3, flow="nsf")
    with pytest.raises(ValueError, match="parameter_names must be 3 distinct strings"):
        sbikit.NPE(box3, parameter_names=["a", "a", "b"])
    with pytest.raises(ValueError, match="TrainConfig.batch_size must be a positive int"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainConfig(validation_fraction=1.0)


def test_bad_num_samples(trained):
    _, _, posterior = trained
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        posterior.sample(0, x=torch.zeros(3))


# ---- the training loop -------------------------------------------------------------------


class Quadratic(nn.Module):
    def __init__(self, fail_from=None):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([3.0]))
        self.fail_from = fail_from
        self.calls = 0

    def loss(self, x):
        self.calls += 1
        out = (x[:, 0] - self.w) ** 2
        if self.fail_from is not None and self.calls >= self.fail_from:
            return out * torch.nan
        return out


def test_fit_restores_the_best_weights_and_stops_early():
    module = Quadratic()
    data = (torch.randn(400, 1, generator=torch.Generator().manual_seed(0)),)
    history = fit(module, data, TrainConfig(max_epochs=200, patience=3, learning_rate=0.5, show_progress=False))
    assert history["epochs"] < 200
    assert abs(float(module.w.detach())) < 0.3
    best = history["best_epoch"]
    assert history["validation_loss"][best] == min(history["validation_loss"])


def test_the_starting_weights_are_kept_unless_an_epoch_beats_them_on_validation():
    # w starts at the mean of the validation rows, the minimizer of their loss: no epoch can beat it
    data = (torch.randn(400, 1, generator=torch.Generator().manual_seed(0)),)
    config = TrainConfig(max_epochs=50, patience=5, learning_rate=0.05, show_progress=False)
    held = held_out(400, config)
    module = Quadratic()
    start = float(data[0][held, 0].mean())
    module.w.data.fill_(start)
    history = fit(module, data, config)
    assert history["best_epoch"] == -1 and history["epochs"] == 5  # stopped after `patience` epochs
    assert float(module.w.detach()) == start
    assert history["initial_validation_loss"] < min(history["validation_loss"])


def test_held_out_names_the_rows_that_training_validates_on():
    config = TrainConfig(seed=3, validation_fraction=0.2, show_progress=False)
    x = torch.arange(50.0)[:, None]
    run = Training(Quadratic(), (x,), config)
    held = held_out(50, config)
    assert int(held.sum()) == 10 and torch.equal(run.val[0].sort(0).values, x[held])
    assert torch.equal(run.train[0].sort(0).values, x[~held])


@pytest.mark.parametrize("average", [0.0, 0.5, 0.99])
def test_the_weights_kept_are_the_moving_average_of_the_steps(average, monkeypatch):
    # one epoch of 9 steps (81 training rows): the weights kept (and validated) are the average of the
    # optimizer's iterates, with decay min(average, (1 + t) / (10 + t)) at step t
    iterates = []
    real = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        iterates.append(float(self.param_groups[0]["params"][0].detach()))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    module = Quadratic()
    data = (torch.randn(90, 1, generator=torch.Generator().manual_seed(0)) - 2,)
    config = TrainConfig(max_epochs=1, batch_size=10, learning_rate=0.3, average=average, show_progress=False)
    fit(module, data, config)
    assert len(iterates) == 9
    expected = 3.0
    for t, w in enumerate(iterates, start=1):
        decay = min(average, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * w
    kept = float(module.w.detach())
    assert kept == pytest.approx(expected if average else iterates[-1], rel=1e-6)
    assert kept != pytest.approx(iterates[-1], rel=1e-3) or not average


def test_average_must_lie_in_0_1():
    for bad in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match="TrainConfig.average"):
            TrainConfig(average=bad)


def test_non_finite_losses_are_skipped_then_abort():
    from sbikit.errors import TrainingError

    module = Quadratic(fail_from=5)
    with pytest.raises(TrainingError, match="4 non-finite losses in a row"):
        fit(module, (torch.randn(400, 1),), TrainConfig(max_nonfinite=4, batch_size=32, show_progress=False))


def test_gradients_are_clipped(monkeypatch):
    import sbikit.train

    norms = []
    real = sbikit.train.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm):
        parameters = list(parameters)
        total = real(parameters, max_norm)
        norms.append((float(total), float(torch.cat([p.grad.flatten() for p in parameters]).norm()), max_norm))
        return total

    monkeypatch.setattr(sbikit.train.nn.utils, "clip_grad_norm_", spy)
    fit(Quadratic(), (100 * torch.randn(64, 1),), TrainConfig(max_epochs=1, clip_norm=0.5, show_progress=False))
    assert norms and all(after <= 0.5 + 1e-4 and limit == 0.5 for _, after, limit in norms)
    assert any(before > 0.5 for before, _, _ in norms)


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_no_dataloader_is_used(box3, quick, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("training must slice in-memory tensors")

    monkeypatch.setattr(torch.utils.data, "DataLoader", forbidden)
    data = sbikit.simulate(noisy, box3, 100, seed=0, show_progress=False)
    sbikit.NPE(box3, training=quick).fit(data)


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_training_reports_one_line_when_not_a_terminal(box3, capsys):
    data = sbikit.simulate(noisy, box3, 100, seed=0)
    sbikit.NPE(box3, training=TrainConfig(max_epochs=2)).fit(data)
    err = capsys.readouterr().err
    # one line for each of the two candidates that adjust="auto" races: the loser's and the winner's
    assert err.count("\n") == 2 and "reached max_epochs" in err
    assert "training (adjusted): 2 epochs" in err and "training (unadjusted): left after 1 of 2 epochs" in err
    sbikit.NPE(box3, training=TrainConfig(max_epochs=2), adjust=False).fit(data)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training: 2 epochs" in err
    sbikit.NPE(box3, training=TrainConfig(max_epochs=2, show_progress=False)).fit(data)
    assert capsys.readouterr().err == ""


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_device_selection(box3):
    data = sbikit.simulate(noisy, box3, 100, seed=0, show_progress=False)
    posterior = sbikit.NPE(box3, training=TrainConfig(max_epochs=1, device="cpu", show_progress=False)).fit(data)
    assert posterior.device.type == "cpu"
    with pytest.raises(ValueError, match="TrainConfig.device must be a torch device"):
        TrainConfig(device="no-such-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"TrainConfig.device is 'cuda'.*device='cpu'"):
        TrainConfig(device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_sampling_on_cuda(box3):
    data = sbikit.simulate(noisy, box3, 200, seed=0, show_progress=False)
    posterior = sbikit.NPE(box3, training=TrainConfig(max_epochs=2, device="cuda", show_progress=False)).fit(data)
    assert posterior.device.type == "cuda"
    assert posterior.sample(10, x=data.x[0]).shape == (10, 3)


def test_log_prob_leaves_the_global_rng_alone(trained):
    _, _, posterior = trained
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    posterior.log_prob(torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]), x=torch.zeros(3))
    assert torch.equal(torch.rand(2), expected)


# ---- edge cases ----------------------------------------------------------------------------


def test_all_failed_simulations_say_so(box3, quick):
    data = sbikit.Simulations(theta=torch.zeros(5, 3), x=torch.full((5, 3), torch.nan))
    with pytest.raises(ValueError, match=r"at least 20 valid simulations to train, got 0 of 5 \(5 have NaN"):
        sbikit.NPE(box3, training=quick).fit(data)


def test_a_scalar_observation_is_one_observation_whatever_its_type(quick):
    prior = sbikit.BoxUniform(torch.zeros(1), torch.ones(1))
    data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 200, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=quick).fit(data)
    theta = torch.full((4, 1), 0.4)
    expected = posterior.log_prob(theta, x=torch.tensor([0.3]))
    for x in (0.3, torch.tensor(0.3), np.float64(0.3), np.array(0.3)):
        assert posterior.sample(5, x=x).shape == (5, 1)
        assert torch.allclose(posterior.log_prob(theta, x=x), expected)


def test_sets_are_standardized_per_feature_so_permutations_change_nothing(box3, quick):
    def members(theta):  # members differ in scale along the set axis: a per-position scale would differ
        return theta[:, None, :2] * torch.arange(1.0, 7.0)[None, :, None] + 0.1 * torch.randn(len(theta), 6, 2)

    data = sbikit.simulate(members, box3, 200, seed=0, show_progress=False)
    posterior = sbikit.NPE(box3, summary=SetSummary(), training=quick).fit(data)
    assert posterior.network.x_loc.shape == (2,)
    kept = ~held_out(len(data), quick)  # the rows trained on
    assert torch.allclose(posterior.network.x_loc, data.x[kept].reshape(-1, 2).mean(0), atol=1e-5)
    x = data.x[0]
    shuffled = x[torch.randperm(6)]
    theta = box3.sample((8,))
    assert torch.allclose(posterior.log_prob(theta, x=x), posterior.log_prob(theta, x=shuffled), atol=1e-5)


def test_a_named_summary_reads_plain_vectors_as_a_series_or_a_set(box3, quick, tmp_path):
    steps = torch.arange(1.0, 9.0)

    def series(theta):  # 8 steps: theta_0 is a trend, theta_1 a level
        return theta[:, :1] * steps + theta[:, 1:2] + 0.1 * torch.randn(len(theta), 8)

    data = sbikit.simulate(series, box3, 300, seed=0, show_progress=False)
    x, theta = data.x[:2], box3.sample((5,))
    posterior = sbikit.NPE(box3, summary="series", training=quick).fit(data)
    assert isinstance(posterior.network.summary, sbikit.nn.ConvSummary)
    assert posterior.sample(4, x=x[0]).shape == (4, 3) and posterior.sample(4, x=x).shape == (4, 2, 3)
    assert not torch.allclose(posterior.log_prob(theta, x=x[0]), posterior.log_prob(theta, x=x[0].flip(0)), atol=1e-4)
    posterior.save(tmp_path / "series.sbk")
    loaded = sbikit.load(tmp_path / "series.sbk")
    assert torch.allclose(loaded.log_prob(theta, x=x[0]), posterior.log_prob(theta, x=x[0]), atol=1e-5)
    as_set = sbikit.NPE(box3, summary="set", training=quick).fit(data)
    assert isinstance(as_set.network.summary, sbikit.nn.DeepSet)
    shuffled = x[0][torch.randperm(8)]
    assert torch.allclose(as_set.log_prob(theta, x=x[0]), as_set.log_prob(theta, x=shuffled), atol=1e-4)
    with pytest.raises(ValueError, match="summary must be"):
        sbikit.NPE(box3, summary="gru")
    with pytest.raises(TypeError, match="summary must be"):
        sbikit.NPE(box3, summary=3)


def test_an_observation_unlike_any_simulation_is_flagged_in_summary_space(tmp_path):
    prior = sbikit.BoxUniform(-2 * torch.ones(1), 2 * torch.ones(1))

    def twice(theta):  # one parameter measured twice: the two values agree to within 0.05
        return theta.repeat(1, 2) + 0.05 * torch.randn(len(theta), 2)

    data = sbikit.simulate(twice, prior, 1000, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=TrainConfig(max_epochs=10, show_progress=False)).fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        posterior.sample(10, x=torch.tensor([[0.5, 0.52], [-1.0, -1.03]]))
    x = torch.tensor([1.5, -1.5])  # each value inside its training range, together unlike any simulation
    with pytest.warns(sbikit.OutOfRangeWarning, match="Mahalanobis distance of .* farthest training simulation"):
        posterior.sample(10, x=x)
    posterior.save(tmp_path / "posterior.sbk")
    with pytest.warns(sbikit.OutOfRangeWarning, match="Mahalanobis"):
        sbikit.load(tmp_path / "posterior.sbk").log_prob(torch.zeros(1), x=x)
    # a file from before the summary range loads with an infinite radius, which flags nothing
    state = {k: v for k, v in posterior.network.state_dict().items() if "summary_range" not in k}
    posterior.network.load_state_dict(state)
    assert math.isinf(float(posterior.network.summary_range.radius))


def test_help_shows_the_posterior_not_torch_internals():
    import pydoc

    text = pydoc.render_doc(sbikit.NPEPosterior, renderer=pydoc.plaintext)
    assert len(text.splitlines()) < 200 and "register_forward_hook" not in text
    assert not isinstance(sbikit.NPEPosterior, nn.Module)


def test_a_race_resumed_from_its_checkpoints_ends_where_it_would_have(tmp_path, monkeypatch):
    # with adjust="auto" two candidates race for a pilot of 5 of 50 epochs; a run stopped after
    # epoch 2 of the race resumes both candidates there and races to epoch 5, not 5 more
    prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
    data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 300, seed=0, show_progress=False)
    whole = sbikit.NPE(prior, training=TrainConfig(max_epochs=50, show_progress=False)).fit(data).history

    epoch, calls = sbikit.train.Training._epoch, []

    def stopping_epoch(self):
        if len(calls) == 4:  # both candidates have run (and saved) two epochs
            raise KeyboardInterrupt
        calls.append(self.name)
        epoch(self)

    config = TrainConfig(max_epochs=50, show_progress=False, checkpoint=str(tmp_path))
    monkeypatch.setattr(sbikit.train.Training, "_epoch", stopping_epoch)
    with pytest.raises(KeyboardInterrupt):
        sbikit.NPE(prior, training=config).fit(data)
    monkeypatch.setattr(sbikit.train.Training, "_epoch", epoch)
    resumed = sbikit.NPE(prior, training=config).fit(data).history
    assert resumed["adjustment_pilot"]["adjusted"] == whole["adjustment_pilot"]["adjusted"]
    assert resumed["adjustment_pilot"]["unadjusted"] == whole["adjustment_pilot"]["unadjusted"]
    assert resumed["validation_loss"] == whole["validation_loss"]


def test_an_observation_beyond_the_training_data_is_flagged(trained, tmp_path):
    # the README's example: every draw sat at the box's corner (sd 0), without a word
    _, data, posterior = trained
    far = torch.tensor([3.4, 2.7, 4.1])
    with pytest.warns(sbikit.OutOfRangeWarning) as record:
        posterior.sample(100, x=far)
    messages = [str(w.message) for w in record]
    assert any(re.search(r"feature 2 = 4.1, 1.\d training sds beyond", m) for m in messages), messages
    with pytest.warns(sbikit.OutOfRangeWarning, match="1 of 2 rows"):
        posterior.log_prob(torch.zeros(3), x=torch.stack([far, torch.zeros(3)]))
    posterior.save(tmp_path / "p.sbk")
    with pytest.warns(sbikit.OutOfRangeWarning):  # the range is saved with the posterior
        sbikit.load(tmp_path / "p.sbk").sample(10, x=far)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        posterior.sample(100, x=data.x[:50])  # the training data themselves are never flagged


@pytest.mark.parametrize("kind", ["gaussian", "lognormal counts"])
def test_the_range_check_rarely_flags_batches_from_the_model_and_flags_a_far_row_among_them(kind):
    # the old half-sd rule flagged most diagnostic calls of 500 test simulations from the model
    from sbikit.estimators.base import TrainingRange

    generator = torch.Generator().manual_seed(0)

    def draw(n):
        z = torch.randn(n, 4, generator=generator)
        if kind == "gaussian":
            return z
        return torch.poisson(torch.exp(1.0 + 1.2 * z), generator=generator)  # heavy-tailed counts

    check = TrainingRange(4)
    check.fit(draw(2000))
    fresh = draw(200 * 500).reshape(200, 500, 4)
    flagged = 0
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        flagged = sum(check.warn(batch) for batch in fresh)
    assert flagged <= 6, flagged  # at most 1% by design: 2 expected, 6 at p < 0.02
    assert len(record) == flagged
    old = (torch.maximum(check.low - fresh, fresh - check.high) / check.scale).amax(-1) > 0.5
    assert int(old.any(-1).sum()) > 20  # the old rule, on the same batches
    far = fresh[0].clone()  # 3 sds beyond a Gaussian's largest of 2,000; for the counts, 10 times theirs
    far[7, 2] = check.high[2] + 3 * check.scale[2] if kind == "gaussian" else 10 * check.high[2]
    with pytest.warns(sbikit.OutOfRangeWarning, match=r"feature 2 = .* training sds beyond .*1 of 500 rows"):
        assert check.warn(far)
    far[7, 2] = check.high[2] + check.scale[2] / 2  # where the old rule started to warn
    assert not check.warn(far)


def test_a_flow_truncated_to_the_box_samples_and_evaluates_the_truncated_density():
    import scipy.stats
    from sbikit.posterior import SupportMappedDistribution
    from sbikit.priors import from_unconstrained

    # q(u) = N(0.3, 0.4^2) truncated to [-1/2, 1/2]: theta = 2u ~ N(0.6, 0.8^2) truncated to [-1, 1]
    prior = sbikit.BoxUniform(-torch.ones(1), torch.ones(1))
    base = torch.distributions.Independent(torch.distributions.Normal(torch.tensor([[0.3], [3.0]]), 0.4), 1)
    box = (torch.tensor([-0.5]), torch.tensor([0.5]))
    d = SupportMappedDistribution(base, torch.zeros(1), torch.ones(1), from_unconstrained(prior, "truncated"),
                                  prior, box=box)
    exact = scipy.stats.truncnorm((-1 - 0.6) / 0.8, (1 - 0.6) / 0.8, loc=0.6, scale=0.8)
    with pytest.warns(sbikit.OutOfRangeWarning, match="less than 0.1% of its mass inside"):
        draws = d.sample((4_000,), torch.Generator().manual_seed(0))  # the second: 1e-13 inside
    assert draws.shape == (4_000, 2, 1)
    assert bool(((draws >= -1) & (draws <= 1)).all())
    assert scipy.stats.kstest(draws[:, 0, 0].numpy(), exact.cdf).pvalue > 1e-3
    theta = torch.linspace(-0.99, 0.99, 7)
    log_p = d.log_prob(torch.stack([theta, theta], -1).unsqueeze(-1))[:, 0]  # (7,) for the first
    # the mass inside (0.64) is estimated from 4,096 draws: a relative error of 1.2%
    assert torch.allclose(log_p.double(), torch.from_numpy(exact.logpdf(theta.numpy())), atol=0.04)
    assert d.log_prob(torch.tensor([[1.5], [0.0]]))[0] == -math.inf
    # untruncated, the same flow puts 31% of its draws on the boundary, and its density is not normalized
    plain = SupportMappedDistribution(base, torch.zeros(1), torch.ones(1), from_unconstrained(prior, "truncated"), prior)
    assert float((plain.sample((4_000,))[:, 0].abs() >= 0.9999).float().mean()) > 0.25


def test_npe_truncated_to_the_box_trains_reproducibly_saves_and_keeps_draws_inside(tmp_path):
    prior = sbikit.BoxUniform(torch.zeros(2), torch.ones(2))
    data = sbikit.simulate(lambda t: t + 0.05 * torch.randn_like(t), prior, 400, seed=0, show_progress=False)
    fit = lambda: sbikit.NPE(prior, bounds="truncate", training=TrainConfig(max_epochs=3, show_progress=False)).fit(data)  # noqa: E731
    posterior = fit()
    assert posterior.history["validation_loss"] == fit().history["validation_loss"]  # draws from the run's generator
    assert posterior.network.truncated and posterior.network.generator is None
    x = torch.tensor([[0.02, 0.98], [0.5, 0.5]])
    draws = posterior.sample(500, x=x)
    assert bool(((draws > 0) & (draws < 1)).all())
    log_p = posterior.log_prob(draws, x=x)
    assert bool(torch.isfinite(log_p).all())
    posterior.save(tmp_path / "p.sbk")
    loaded = sbikit.load(tmp_path / "p.sbk")
    assert loaded.specs["intervals"] == "truncated" and loaded.network.truncated
    assert torch.allclose(loaded.log_prob(draws, x=x), log_p)
    with pytest.raises(ValueError, match="bounds must be one of"):
        sbikit.NPE(prior, bounds="clip")


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_a_long_vector_races_an_mlp_against_a_convolution_and_keeps_the_lower_validation_loss(box3, quick, tmp_path):
    def long(theta):  # 24 values along a grid: a level and a trend, with noise
        steps = torch.linspace(0.0, 1.0, 24)
        return theta[:, :1] + theta[:, 1:2] * steps + 0.1 * torch.randn(len(theta), 24)

    data = sbikit.simulate(long, box3, 200, seed=0, show_progress=False)
    posterior = sbikit.NPE(box3, training=quick).fit(data)
    race = posterior.history["summary_race"]
    assert set(race) == {"mlp", "series"} and posterior.history["summary"] == min(race, key=race.get)
    kept = {"mlp": sbikit.nn.MLP, "series": sbikit.nn.ConvSummary}[posterior.history["summary"]]
    assert type(posterior.network.summary) is kept
    # each candidate is the posterior that naming it trains, on the same split
    for name, loss in race.items():
        alone = sbikit.NPE(box3, summary=name, training=quick).fit(data)
        assert "summary_race" not in alone.history
        assert min(alone.history["validation_loss"] + [alone.history.get("initial_validation_loss", math.inf)]) == loss
    theta, x = box3.sample((5,)), data.x[0]
    posterior.save(tmp_path / "long.sbk")
    loaded = sbikit.load(tmp_path / "long.sbk")
    assert type(loaded.network.summary) is kept
    assert torch.allclose(loaded.log_prob(theta, x=x), posterior.log_prob(theta, x=x), atol=1e-5)
    short = sbikit.simulate(lambda t: long(t)[:, :19], box3, 200, seed=0, show_progress=False)
    assert "summary_race" not in sbikit.NPE(box3, training=quick).fit(short).history
