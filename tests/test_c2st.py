import numpy as np
import pytest
import torch

import sbikit

from sbikit.diagnostics import C2STResult, c2st


def test_same_distribution_is_near_chance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    result = c2st(a, b)
    # 4,000 held-out predictions at chance have a standard error of 0.008
    assert 0.46 <= result.accuracy <= 0.54, result
    assert float(result) == result.accuracy and len(result.fold_accuracies) == 5


def test_disjoint_distributions_are_told_apart():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g) + 8.0
    assert c2st(a, b, max_epochs=20).accuracy > 0.99


def test_shifted_distribution_is_detected():
    # the Bayes accuracy between N(0, I) and N(1, I) in 2-D is Phi(sqrt(2) / 2) = 0.76
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g) + 1.0
    assert 0.72 < c2st(a, b).accuracy < 0.78


def test_seeded_and_reproducible_and_leaves_the_global_stream_alone():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 0.5
    torch.manual_seed(5)
    first = c2st(a, b, seed=3, max_epochs=20)
    after = torch.rand(1)
    torch.manual_seed(5)
    second = c2st(a, b, seed=3, max_epochs=20)
    assert first.accuracy == second.accuracy
    assert np.array_equal(first.probabilities, second.probabilities)
    assert torch.equal(after, torch.rand(1))


def test_result_reads_and_plots():
    g = torch.Generator().manual_seed(0)
    result = c2st(torch.randn(200, 3, generator=g), torch.randn(100, 3, generator=g), folds=3, max_epochs=5)
    assert isinstance(result, C2STResult)
    assert result.probabilities.shape == (300,) and (result.labels == 1).sum() == 100
    assert repr(result).startswith("C2STResult(accuracy=")
    assert len(result.plot().axes) == 1


def test_classifier_trains_through_train_fit(monkeypatch):
    import importlib

    module = importlib.import_module("sbikit.diagnostics.c2st")
    calls = []

    real = module.fit
    monkeypatch.setattr(module, "fit", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    c2st(torch.randn(100, 2), torch.randn(100, 2), folds=2, max_epochs=3, seed=7)
    assert len(calls) == 2 and {c.seed for c in calls} == {7, 8} and calls[0].max_epochs == 3


def test_inputs_are_checked():
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        c2st(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="folds must be at least 2"):
        c2st(torch.zeros(10, 2), torch.zeros(10, 2), folds=1)
    with pytest.raises(ValueError, match="finite"):
        c2st(torch.full((10, 2), float("nan")), torch.zeros(10, 2))
    with pytest.raises(TypeError, match="TrainConfig"):
        c2st(torch.zeros(10, 2), torch.zeros(10, 2), training={"lr": 1})


def test_diagnostics_are_reachable_after_import_sbikit():
    assert sbikit.diagnostics.c2st is c2st
