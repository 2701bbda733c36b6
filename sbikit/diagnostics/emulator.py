r"""Is the surrogate likelihood a faithful simulator? Emulator draws against simulator draws.

A posterior built on a surrogate :math:`q(x | \theta)` (:class:`sbikit.NLE`) is only as good as
the surrogate, and MCMC diagnostics cannot see its errors: the chains converge to the wrong
answer as readily as to the right one. :func:`emulator_check` draws data from the simulator and
from the emulator at the same parameters and compares them, with a classifier two-sample test
(:func:`~sbikit.diagnostics.c2st`) per parameter, Holm-adjusted over the parameters, and with
the statistics that the predictive check uses (each value of an observation): their means,
standard deviations and shares of zeros under both.
"""

__all__ = ["EmulatorResult", "emulator_check"]

import numpy as np
import scipy.stats
import torch

from dataclasses import dataclass

from .._checks import check_count
from ..data import as_float_tensor
from ._draws import check_alpha, holm
from ._plot import panels
from .c2st import c2st
from .predictive import simulate_at, statistics


@dataclass(frozen=True, repr=False)
class EmulatorResult:
    r"""Emulator draws against simulator draws at :math:`k` parameters.

    Attributes:
        theta: The parameters, :math:`(k, D)`.
        accuracy: Each parameter's C2ST accuracy, :math:`(k,)` (0.5: indistinguishable).
        p_values: Holm-adjusted binomial p-values of those accuracies against 0.5, :math:`(k,)`.
        names: The statistics' names, :math:`K` (each value of the flattened observation).
        mean, sd, zeros: Each statistic's mean, standard deviation and share of exact zeros,
            ``{"simulator": (k, K), "emulator": (k, K)}``.
        num_samples: The draws of each, per parameter.
        alpha: The level of the tests.
    """

    theta: np.ndarray
    accuracy: np.ndarray
    p_values: np.ndarray
    names: list[str]
    mean: dict
    sd: dict
    zeros: dict
    num_samples: int
    alpha: float

    @property
    def flagged(self) -> np.ndarray:
        r"""Which parameters' emulator draws the classifier tells from the simulator's at ``alpha``."""

        return self.p_values < self.alpha

    @property
    def passed(self) -> bool:
        return not bool(self.flagged.any())

    def worst(self) -> tuple[str, float]:
        r"""The statistic whose emulator mean is furthest from the simulator's, in simulator sds
        (over all parameters), and that distance."""

        gap = np.abs(self.mean["emulator"] - self.mean["simulator"]) / np.maximum(self.sd["simulator"], 1e-12)
        row, column = np.unravel_index(np.argmax(gap), gap.shape)
        return f"{self.names[column]} at theta[{row}]", float(gap[row, column])

    def __repr__(self) -> str:
        where, gap = self.worst()
        verdict = "passed" if self.passed else f"flagged {int(self.flagged.sum())} of {len(self.accuracy)} parameters"
        accuracies = ", ".join(f"{a:.3f}" for a in self.accuracy)
        return (f"EmulatorResult({verdict} at alpha={self.alpha}, C2ST [{accuracies}])\n"
                f"  largest mean gap: {where}, {gap:.2g} simulator sds")

    def plot(self, figure=None):
        r"""The emulator's mean, sd and share of zeros of every statistic against the simulator's
        (one point per statistic and parameter; the diagonal is agreement), and each parameter's
        C2ST accuracy. Returns the figure."""

        figure, axes = panels(4, figure, size=(2.9, 2.6))
        for ax, (label, values) in zip(axes, (("mean", self.mean), ("sd", self.sd), ("share of zeros", self.zeros))):
            a, b = values["simulator"].ravel(), values["emulator"].ravel()
            ax.scatter(a, b, s=6, alpha=0.6)
            low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
            ax.plot([low, high], [low, high], color="0.4", lw=0.8)
            ax.set_xlabel(f"simulator {label}", fontsize=8)
            ax.set_ylabel(f"emulator {label}", fontsize=8)
            ax.tick_params(labelsize=7)
        ax = axes[3]
        ax.bar(np.arange(len(self.accuracy)), self.accuracy, color=np.where(self.flagged, "C3", "C0"))
        ax.axhline(0.5, color="0.4", lw=0.8)
        ax.set_ylim(0.4, 1.0)
        ax.set_xlabel("parameter", fontsize=8)
        ax.set_ylabel("C2ST accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        figure.suptitle("emulator against simulator", fontsize=10)
        return figure


def emulator_check(
    likelihood: object,
    simulator: object,
    theta: object = 5,
    num_samples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> EmulatorResult:
    r"""Compares a surrogate likelihood's draws with the simulator's at the same parameters.

    Arguments:
        likelihood: Anything with ``sample(n, theta=theta)`` :math:`\to (n, k, *x\_shape)` and a
            ``prior``, such as a :class:`sbikit.Likelihood`.
        simulator: A :class:`sbikit.Simulator` or a batched function :math:`(n, D) \to (n, *x\_shape)`.
        theta: The parameters :math:`(k, D)`, or a number :math:`k` of them to draw from the prior.
        num_samples: The draws of each, per parameter.
        alpha: The level of the C2ST, Holm-adjusted over the parameters.
        seed: Seeds the parameters, the draws and the classifiers.

    Returns:
        An :class:`EmulatorResult`: ``accuracy``, ``p_values``, ``flagged``, the statistics under
        both, ``plot()``.

    Raises:
        TypeError: If ``likelihood`` has no ``sample(n, theta=...)``.
        ValueError: If the two give observations of different shapes.

    Example:
        >>> class Exact:  # the simulator's own distribution
        ...     prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        ...     def sample(self, n, theta): return theta + 0.1 * torch.randn(n, *theta.shape)
        >>> result = sbikit.diagnostics.emulator_check(Exact(), lambda t: t + 0.1 * torch.randn_like(t), 2,
        ...                                            num_samples=300)
        >>> result.accuracy.shape, result.mean["emulator"].shape
        ((2,), (2, 2))
    """

    if not callable(getattr(likelihood, "sample", None)):
        raise TypeError(f"likelihood must have sample(n, theta=...), got {type(likelihood).__name__}.")
    num_samples = check_count(num_samples, "num_samples")
    alpha = check_alpha(alpha)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(theta, (int, np.integer)) and not isinstance(theta, bool):
            theta = likelihood.prior.sample((check_count(theta, "theta"),))
        theta = as_float_tensor(theta, "theta")
        if theta.ndim != 2:
            raise ValueError(f"theta must be (k, D) parameters or a number of them, got shape {tuple(theta.shape)}.")
        emulated = as_float_tensor(likelihood.sample(num_samples, theta=theta), "likelihood.sample").transpose(0, 1)
        simulated = simulate_at(simulator, theta.repeat_interleave(num_samples, 0))
    simulated = simulated.reshape(len(theta), num_samples, *simulated.shape[1:])
    if simulated.shape != emulated.shape:
        raise ValueError(f"the emulator's draws have shape {tuple(emulated.shape[2:])} but the simulator's "
                         f"{tuple(simulated.shape[2:])}; pass the simulator the likelihood was trained on.")
    accuracy, p_values, stats = [], [], {"simulator": [], "emulator": []}
    for j in range(len(theta)):
        sim = simulated[j][torch.isfinite(simulated[j].reshape(num_samples, -1)).all(1)]
        emu = emulated[j]
        result = c2st(sim.reshape(len(sim), -1), emu.reshape(len(emu), -1), seed=seed + j)
        total = len(result.labels)
        accuracy.append(result.accuracy)
        p_values.append(scipy.stats.binomtest(round(result.accuracy * total), total, 0.5, "greater").pvalue)
        for name, draws in (("simulator", sim), ("emulator", emu)):
            values, names = statistics(draws, False)
            stats[name].append(values.double())
    mean = {k: torch.stack([v.mean(0) for v in vs]).numpy() for k, vs in stats.items()}
    sd = {k: torch.stack([v.std(0) for v in vs]).numpy() for k, vs in stats.items()}
    zeros = {k: torch.stack([(v == 0).double().mean(0) for v in vs]).numpy() for k, vs in stats.items()}
    return EmulatorResult(
        theta=theta.numpy(), accuracy=np.array(accuracy), p_values=holm(np.array(p_values)), names=names,
        mean=mean, sd=sd, zeros=zeros, num_samples=num_samples, alpha=alpha,
    )
