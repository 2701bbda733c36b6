"""train.fit takes a loss term over the whole batch beside the per-row loss, and NPE uses it for an MMD penalty
on its summaries."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import sbikit

from sbikit.diagnostics import MMDSummary
from sbikit.diagnostics._draws import holm
from sbikit.diagnostics.regularization import mmd_to_normal
from sbikit.train import fit


class Pulled(nn.Module):
    """Per-row loss (w - t)^2, minimized at the mean of t (0); with batch_loss (w - 3)^2 the sum is
    minimized at w = 1.5."""

    def __init__(self, batch_term):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        if batch_term:
            self.batch_loss = lambda t: (self.w - 3.0) ** 2

    def loss(self, t):
        return (self.w - t) ** 2


def test_fit_adds_the_batch_term_to_the_mean_row_loss():
    t = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    t = t - t.mean()
    config = sbikit.TrainConfig(max_epochs=60, batch_size=100, learning_rate=0.05, show_progress=False, patience=60)
    plain, pulled = Pulled(False), Pulled(True)
    fit(plain, (t,), config)
    history = fit(pulled, (t,), config)
    assert abs(float(plain.w.detach())) < 0.1
    assert abs(float(pulled.w.detach()) - 1.5) < 0.1
    # validation scores the same objective: the row loss (about var(t) + w^2) plus the batch term
    assert history["validation_loss"][-1] > 1 + 1.5**2 + 1.5**2 - 0.5


def test_holm_adjustment():
    assert np.allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    assert np.allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])


def test_mmd_summary_pushes_npe_summaries_towards_a_standard_normal():
    torch.manual_seed(0)  # the summary networks' initial weights
    prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
    data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 1000, seed=0, show_progress=False)
    config = sbikit.TrainConfig(max_epochs=40, show_progress=False)
    # 2 features of 2-D data: a standard normal is within reach (more features than the data has
    # dimensions lie on a lower-dimensional surface, which the penalty can only bring close)
    reference = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    distances = []
    for weight in (0.0, 10.0):
        summary = MMDSummary(sbikit.nn.MLP([2], out_features=2), weight=weight)
        posterior = sbikit.NPE(prior, summary=summary, training=config, adjust=False).fit(data)
        with torch.no_grad():
            distances.append(float(mmd_to_normal(posterior.network.embed(data.x[:500]), reference)))
    assert distances[1] < 0.005 and distances[1] < distances[0] / 5, distances  # measured 0.0013 and 0.019


def test_mmd_summary_refuses_bad_options():
    with pytest.raises(TypeError, match="nn.Module"):
        MMDSummary(lambda x: x)
    with pytest.raises(ValueError, match="weight"):
        MMDSummary(nn.Linear(2, 2), weight=-1)


def test_the_training_log_names_the_best_epoch_as_history_does(capsys):
    import faulty

    # show_progress=None off a terminal (pytest's capture): no bar, a summary line on stderr
    config = sbikit.TrainConfig(batch_size=64, max_epochs=6, learning_rate=1e-2, show_progress=None)
    history = fit(faulty.Regression(), faulty.regression_data(), config)
    best = history["best_epoch"]
    assert best >= 0  # an epoch beat the starting weights, so the line names an epoch
    line = capsys.readouterr().err
    assert f"best validation loss {history['validation_loss'][best]:.4f} at epoch {best}\n" in line, line
