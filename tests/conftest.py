import pytest
import torch

import sbikit


@pytest.fixture
def box3():
    return sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))


@pytest.fixture
def quick():
    """Training settings for tests that check plumbing, not accuracy."""
    return sbikit.TrainConfig(max_epochs=3, batch_size=128, show_progress=False)


def noisy(theta):
    return theta + 0.1 * torch.randn_like(theta)
