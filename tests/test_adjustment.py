r"""NPE's regression adjustment and the automatic training settings."""

import pytest
import torch

import sbikit

from sbikit.estimators.base import linear_adjustment
from sbikit.estimators.npe import LowerAffineTransform
from sbikit.train import TrainConfig

from conftest import noisy


def test_linear_adjustment_recovers_the_coefficients_and_the_residual_covariance():
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    z = torch.randn(n, 3, generator=generator)
    coef = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]])
    tril = torch.tensor([[0.3, 0.0], [0.2, 0.4]])
    u = z @ coef.T + torch.randn(n, 2, generator=generator) @ tril.T
    found_coef, found_tril = linear_adjustment(u - u.mean(0), z - z.mean(0))
    # standard errors: sd(residual) / sqrt(n) ~ 0.003 for the coefficients, ~ 0.5% for the factor
    assert torch.allclose(found_coef, coef, atol=0.015)
    assert torch.allclose(found_tril, tril, atol=0.01)


def test_many_useless_regressors_are_shrunk_not_fitted():
    # 200 noise regressors for 300 rows: least squares would fit coefficients of norm about
    # sqrt(200 / 100) = 1.4 to noise; the GCV ridge shrinks them, and the residual scale stays 1
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(300, 200, generator=generator)
    u = torch.randn(300, 1, generator=generator)
    coef, tril = linear_adjustment(u - u.mean(0), z - z.mean(0))
    assert float(tril[0, 0]) == pytest.approx(float(u.std()), rel=0.1)
    assert float(coef.norm()) < 0.2


def test_no_regressors_gives_the_covariance_of_the_targets():
    u = torch.randn(5_000, 2, generator=torch.Generator().manual_seed(2)) * torch.tensor([2.0, 0.5])
    coef, tril = linear_adjustment(u - u.mean(0), torch.zeros(5_000, 0))
    assert coef.shape == (2, 0)
    assert torch.allclose(tril.diagonal(), torch.tensor([2.0, 0.5]), rtol=0.03)


def test_lower_affine_transform_inverts_and_has_the_autograd_log_det():
    tril = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.3, 0.0], [-1.0, 0.2, 1.5]])
    loc = torch.randn(4, 3)
    transform = LowerAffineTransform(loc, tril)
    z = torch.randn(4, 3)
    u = transform(z)
    assert torch.allclose(transform.inv(u), z, atol=1e-5)
    jacobian = torch.autograd.functional.jacobian(lambda v: LowerAffineTransform(loc[0], tril)(v), z[0])
    assert transform.log_abs_det_jacobian(z, u).shape == (4,)
    assert torch.allclose(transform.log_abs_det_jacobian(z, u), torch.linalg.slogdet(jacobian).logabsdet)


@pytest.fixture(scope="module")
def box_data():
    prior = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    return prior, sbikit.simulate(noisy, prior, 1_000, seed=0, show_progress=False)


def test_the_adjustment_is_fitted_or_left_out(box_data):
    prior, data = box_data
    config = TrainConfig(max_epochs=2, show_progress=False)
    adjusted = sbikit.NPE(prior, training=config, adjust=True).fit(data).network
    plain = sbikit.NPE(prior, training=config, adjust=False).fit(data).network
    # x = theta + noise: the regression of u on x is strong, so its coefficients are far from 0
    assert float(adjusted.theta_coef.abs().max()) > 0.5
    assert torch.equal(plain.theta_coef, torch.zeros_like(plain.theta_coef))
    assert torch.equal(plain.theta_tril, torch.eye(3))


def test_auto_races_the_candidates_and_trains_the_winner_on(box_data):
    prior, data = box_data
    config = TrainConfig(max_epochs=20, show_progress=False)
    posterior = sbikit.NPE(prior, training=config).fit(data)
    pilot = posterior.history["adjustment_pilot"]
    # the race: the first tenth of the schedule (2 of 20 epochs), then the winner alone to the end
    assert pilot["epochs"] == 2
    assert posterior.history["epochs"] == 20
    # the pilot's scores are the best validation losses of the first 2 epochs
    assert min(posterior.history["validation_loss"][:2]) == pilot["adjusted"]
    # x = theta + noise is linear in theta: the adjusted flow starts at the answer and wins
    assert posterior.history["adjusted"] is True and pilot["adjusted"] < pilot["unadjusted"]
    assert float(posterior.network.theta_coef.abs().max()) > 0.5
    # the winner trains on as if it had trained alone: the same weights as adjust=True
    alone = sbikit.NPE(prior, training=config, adjust=True).fit(data)
    assert alone.history["validation_loss"] == posterior.history["validation_loss"]
    with pytest.raises(ValueError, match="adjust"):
        sbikit.NPE(prior, adjust="sometimes")


def test_auto_race_ends_when_a_candidate_stops_early(box_data):
    prior, data = box_data
    # patience 1: a candidate stops at its first epoch without progress, before the pilot's end
    config = TrainConfig(max_epochs=200, patience=1, show_progress=False)
    posterior = sbikit.NPE(prior, training=config).fit(data)
    pilot = posterior.history["adjustment_pilot"]
    assert pilot["epochs"] < 40
    assert posterior.history["epochs"] >= pilot["epochs"]


def test_files_from_before_the_adjustment_load_as_unadjusted(box_data, tmp_path):
    prior, data = box_data
    config = TrainConfig(max_epochs=2, show_progress=False)
    posterior = sbikit.NPE(prior, training=config, adjust=False).fit(data)
    posterior.save(tmp_path / "p.sbk")
    payload = torch.load(tmp_path / "p.sbk", weights_only=True)
    del payload["state_dict"]["theta_coef"], payload["state_dict"]["theta_tril"]
    torch.save(payload, tmp_path / "old.sbk")
    old = sbikit.load(tmp_path / "old.sbk")
    theta, x = prior.sample((5,)), torch.tensor([0.1, 0.2, 0.3])
    assert torch.allclose(old.log_prob(theta, x=x), posterior.log_prob(theta, x=x))


def test_automatic_settings_follow_the_number_of_rows():
    small, large = TrainConfig().resolve(900), TrainConfig().resolve(90_000)
    assert small[0] == 256 and large[0] == 2048
    assert large[1] > small[1]
    # about 1,000 steps: 4 per epoch at 900 rows, 44 at 90,000 rows
    assert small[2] == 250 and large[2] == 30
    chosen = TrainConfig(batch_size=64, learning_rate=0.01, max_epochs=7, clip_norm=2.0, patience=3)
    assert chosen.resolve(900) == chosen.resolve(900, kind="likelihood") == (64, 0.01, 7, 2.0, 3)
    # sets and series: half the batch and twice the steps, so as many epochs at most
    batch, rate, epochs, clip, patience = TrainConfig().resolve(900, kind="structured")
    assert (batch, epochs, clip, patience) == (128, 250, 5.0, 20) and rate == pytest.approx(small[1] / 2**0.5)
    assert TrainConfig(steps=500).resolve(900, kind="structured")[2] == 63
    assert TrainConfig(steps=500).resolve(900)[2] == 125
    # NLE: a quarter of NPE's batch over as many epochs; the same where the batch is capped
    # with gradients clipped at a norm of 1 instead of 5, and a patience of 40 epochs instead of 20
    batch, rate, epochs, clip, patience = TrainConfig().resolve(900, kind="likelihood")
    assert (batch, epochs, clip, patience) == (64, 250, 1.0, 40) and rate == pytest.approx(small[1] / 2)
    assert small[3:] == large[3:] == (5.0, 20)
    assert TrainConfig().resolve(90_000, kind="likelihood") == (*large[:3], 1.0, 40)
    assert TrainConfig(steps=500).resolve(900, kind="likelihood")[2] == 34  # 500 steps of 15 per epoch
    # NLE's count model: NLE's settings over twice the epochs, unless they are set
    assert TrainConfig().resolve(900, kind="counts") == (batch, rate, 500, 1.0, 40)
    assert chosen.resolve(900, kind="counts") == chosen.resolve(900)
    with pytest.raises(ValueError, match="kind must be one of"):
        TrainConfig().resolve(900, kind="sets")


def test_npe_trains_series_in_smaller_batches():
    model = sbikit.simulators.ornstein_uhlenbeck.model()
    data = sbikit.simulate(model, 1000, seed=0, show_progress=False)
    posterior = sbikit.NPE(model.prior, training=TrainConfig(max_epochs=1, show_progress=False)).fit(data)
    assert posterior.history["batch_size"] == TrainConfig().resolve(900, kind="structured")[0] == 128


def test_nle_trains_in_smaller_batches_with_a_tighter_clip_and_more_patience(box_data):
    prior, data = box_data
    likelihood = sbikit.NLE(prior, training=TrainConfig(max_epochs=1, show_progress=False)).fit(data)
    assert likelihood.history["batch_size"] == TrainConfig().resolve(900, kind="likelihood")[0] == 64
    assert (likelihood.history["clip_norm"], likelihood.history["patience"]) == (1.0, 40)


def test_history_records_the_settings_used(box_data):
    prior, data = box_data
    posterior = sbikit.NPE(prior, training=TrainConfig(max_epochs=2, show_progress=False)).fit(data)
    batch, rate, _, clip, patience = TrainConfig().resolve(900)  # 10% of 1,000 rows are held out
    assert (posterior.history["batch_size"], posterior.history["learning_rate"]) == (batch, rate)
    assert (posterior.history["clip_norm"], posterior.history["patience"]) == (clip, patience) == (5.0, 20)
    assert posterior.history["max_epochs"] == 2


@pytest.mark.parametrize("name", ["batch_size", "learning_rate", "max_epochs", "steps", "clip_norm", "patience"])
def test_bad_automatic_settings_are_refused(name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{name: 0})
