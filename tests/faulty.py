"""Simulators for the fault-injection tests, in a module that spawned workers can import.

What a simulator does wrong is chosen by environment variables, which spawned worker
processes inherit: it cannot see the test's variables.
"""

import math
import os
import signal
import time
import torch

import sbikit

PRIOR = sbikit.BoxUniform(-torch.ones(3), torch.ones(3))


def noisy(theta):
    return theta + 0.1 * torch.randn_like(theta)


def noisy_one(theta):
    return theta + 0.1 * torch.randn(theta.shape)


def _log(theta):
    path = os.environ.get("SBIKIT_TEST_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{float(theta[0])!r} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _is(theta, name):
    value = os.environ.get(name)
    return value is not None and abs(float(theta[0]) - float(value)) < 1e-7


def flaky(theta):
    r"""Raises in about 1% of calls, as a function of the parameters alone."""

    if math.modf(float(theta[0]) * 997.0)[0] % 1.0 < 0.01:
        raise FloatingPointError(f"solver diverged at theta_0={float(theta[0]):.4f}")
    return theta + 0.1 * torch.randn(theta.shape)


def half_broken(theta):
    if float(theta[1]) > 0:
        raise ValueError("step size underflow")
    if float(theta[2]) > 0.5:
        raise KeyError("missing rate constant")
    return theta


def non_finite(theta):
    x = theta + 0.1 * torch.randn_like(theta)
    x[theta[:, 0] > 0.8, 0] = torch.nan
    x[theta[:, 0] < -0.8, 1] = torch.inf
    return x


def hangs(theta):
    r"""Logs its call; hangs where theta_0 is $SBIKIT_TEST_HANG."""

    _log(theta)
    if _is(theta, "SBIKIT_TEST_HANG"):
        time.sleep(3600)
    return theta + 0.1 * torch.randn(theta.shape)


def killed_once(theta):
    r"""Logs its call; SIGKILLs its own process where theta_0 is $SBIKIT_TEST_KILL, the first time."""

    _log(theta)
    marker = os.environ.get("SBIKIT_TEST_MARKER")
    if _is(theta, "SBIKIT_TEST_KILL") and marker and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return theta + 0.1 * torch.randn(theta.shape)


def slow(theta):
    r"""Logs its call and takes 5 ms."""

    _log(theta)
    time.sleep(0.005)
    return theta + 0.1 * torch.randn(theta.shape)


def run(path: str, n: int, batch_size: int) -> None:
    r"""A driver process: ``python -c 'import faulty; faulty.run(...)'`` (so its simulator is ``faulty.slow``)."""

    sbikit.simulate(slow, PRIOR, n, seed=0, batched=False, batch_size=batch_size, store=path, show_progress=False)



class Regression(torch.nn.Module):
    r"""A small estimator for the training-checkpoint tests; SIGKILLs or SIGTERMs its own
    process at training step $SBIKIT_TEST_KILL_STEP or $SBIKIT_TEST_TERM_STEP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        self.calls = 0

    def loss(self, x, y):
        if self.training:
            self.calls += 1
            if self.calls == int(os.environ.get("SBIKIT_TEST_KILL_STEP", 0)):
                os.kill(os.getpid(), signal.SIGKILL)
            if self.calls == int(os.environ.get("SBIKIT_TEST_TERM_STEP", 0)):
                os.kill(os.getpid(), signal.SIGTERM)
        return ((self.net(x) - y) ** 2).sum(-1)


def regression_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(640, 3, generator=generator)
    y = torch.stack([x.sum(-1), x[:, 0] * x[:, 1]], -1) + 0.1 * torch.randn(640, 2, generator=generator)
    return x, y


def train(directory: str | None, every: int = 1):
    r"""Trains :class:`Regression` for 12 epochs of 9 steps; returns the history."""

    from sbikit.train import TrainConfig, fit

    config = TrainConfig(batch_size=64, max_epochs=12, learning_rate=1e-2, show_progress=False,
                         checkpoint=directory, checkpoint_every=every)
    return fit(Regression(), regression_data(), config)


# a mixed-effects model for runs on workers and into stores: one global mean, members around it
def group_locals(g):
    return torch.distributions.Independent(torch.distributions.Normal(g, 0.5), 1)


def group_members(g, local):
    if os.environ.get("SBIKIT_TEST_GROUPS_RAISE") and bool((g[:, 0] > 0.8).any()):
        raise ValueError("a global mean above 0.8")  # NaN rows for those groups, recorded
    if any(_is(row, "SBIKIT_TEST_HANG") for row in g):  # one group's members hang
        time.sleep(3600)
    return local + 0.1 * torch.randn_like(local)


def groups():
    return sbikit.MixedEffects(sbikit.BoxUniform(-torch.ones(1), torch.ones(1)), group_locals, group_members,
                               num_members=(2, 6))
