import pytest
import re
import torch

from pathlib import Path

import sbikit

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def box3():
    return sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))


@pytest.fixture
def quick():
    """Training settings for tests that check plumbing, not accuracy."""
    return sbikit.TrainConfig(max_epochs=3, batch_size=128, show_progress=False)


def noisy(theta):
    return theta + 0.1 * torch.randn_like(theta)


def readme_block(marker: str) -> str:
    """The README's python code block that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(block for block in blocks if marker in block)


def run_readme_block(code: str, namespace: dict | None = None) -> dict:
    """Runs README code as written (tracebacks name README.md) in ``namespace``; returns it."""
    namespace = {} if namespace is None else namespace
    exec(compile(code, str(README), "exec"), namespace)
    return namespace
