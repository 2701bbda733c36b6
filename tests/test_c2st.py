import pytest
import torch

from sbikit.diagnostics import c2st


def test_same_distribution_is_near_chance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    assert 0.45 <= c2st(a, b) <= 0.56


def test_shifted_distribution_is_detected():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g) + 1.0
    assert c2st(a, b) > 0.7


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        c2st(torch.zeros(10, 2), torch.zeros(10, 3))


def test_diagnostics_are_reachable_after_import_sbikit():
    import sbikit

    assert sbikit.diagnostics.c2st is c2st
