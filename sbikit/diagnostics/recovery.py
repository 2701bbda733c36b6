r"""Recovery and contraction (Schad et al., 2021).

For each test pair, the posterior mean :math:`\mu_i` and standard deviation
:math:`\sigma_i` per parameter give

.. math::
    z_i = \frac{\mu_i - \theta_i}{\sigma_i}, \qquad
    c_i = 1 - \frac{\sigma_i^2}{\sigma_{\text{prior}}^2},

the posterior z-score and the contraction from prior to posterior, with the prior's
variance estimated from the test parameters (draws from the prior). A good posterior
contracts (:math:`c` near 1) without being wrong (:math:`|z|` mostly below 2); a
posterior mean that tracks the truth gives a high :math:`R^2 = 1 - \sum (\mu_i - \theta_i)^2
/ \sum (\theta_i - \bar\theta)^2`.
"""

__all__ = ["RecoveryResult", "recovery"]

import numpy as np

from dataclasses import dataclass

from ._draws import Draws, draw, test_pairs
from ._plot import panels
from .calibration import _names


@dataclass(frozen=True, repr=False)
class RecoveryResult:
    r"""Posterior means against the truth, and z-scores against contraction.

    Attributes:
        names: The parameter names, :math:`D`.
        truth: The true parameters, :math:`(N, D)`.
        mean: The posterior means, :math:`(N, D)`.
        std: The posterior standard deviations, :math:`(N, D)`.
        z: The posterior z-scores, :math:`(N, D)`.
        contraction: The contractions, :math:`(N, D)`.
        r2: :math:`R^2` of the posterior mean per parameter, :math:`(D,)`.
        rmse: The root mean squared error of the posterior mean, :math:`(D,)`.
    """

    names: list[str]
    truth: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    z: np.ndarray
    contraction: np.ndarray
    r2: np.ndarray
    rmse: np.ndarray

    def __repr__(self) -> str:
        width = max(len(n) for n in self.names)
        lines = [
            f"RecoveryResult(N={len(self.truth)})",
            f"  {'':{width}}     R2    RMSE  contraction  |z|>2",
        ]
        for i, name in enumerate(self.names):
            lines.append(
                f"  {name:{width}}  {self.r2[i]:5.2f}  {self.rmse[i]:6.3g}  {np.median(self.contraction[:, i]):11.2f}"
                f"  {np.mean(np.abs(self.z[:, i]) > 2):5.1%}"
            )
        return "\n".join(lines)

    def plot(self, figure=None):
        r"""Plots, per parameter, the posterior mean against the truth (top row) and the z-score
        against the contraction (bottom row). Returns the figure."""

        dim = len(self.names)
        figure, axes = panels(2 * dim, figure, columns=dim, size=(2.4, 2.3))
        for i, name in enumerate(self.names):
            top, bottom = axes[i], axes[dim + i]
            low, high = self.truth[:, i].min(), self.truth[:, i].max()
            top.plot([low, high], [low, high], color="0.4", lw=0.8)
            top.scatter(self.truth[:, i], self.mean[:, i], s=4, alpha=0.5)
            top.set_title(f"{name}: $R^2$ {self.r2[i]:.2f}", fontsize=9)
            top.set_xlabel("truth", fontsize=8)
            bottom.scatter(self.contraction[:, i], self.z[:, i], s=4, alpha=0.5)
            bottom.axhspan(-2, 2, color="0.9", lw=0)
            bottom.set_xlim(right=1.0 + 0.02 * (1.0 - float(self.contraction[:, i].min())))
            bottom.set_xlabel("contraction", fontsize=8)
            for ax in (top, bottom):
                ax.tick_params(labelsize=7)
        axes[0].set_ylabel("posterior mean", fontsize=8)
        axes[dim].set_ylabel("z-score", fontsize=8)
        return figure


def recovery_from(draws: Draws, names: list[str]) -> RecoveryResult:
    truth = draws.theta.double().numpy()
    samples = draws.samples.double().numpy()
    mean, std = samples.mean(0), samples.std(0, ddof=1)
    prior_var = truth.var(0, ddof=1)
    error = mean - truth
    with np.errstate(divide="ignore", invalid="ignore"):
        z = error / std
    return RecoveryResult(
        names=names,
        truth=truth,
        mean=mean,
        std=std,
        z=z,
        contraction=1 - std**2 / prior_var,
        r2=1 - (error**2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0),
        rmse=np.sqrt((error**2).mean(0)),
    )


def recovery(posterior: object, test: object, num_samples: int = 200, seed: int = 0) -> RecoveryResult:
    r"""Posterior means against the truth, and posterior z-scores against contraction.

    Arguments:
        posterior: Anything with ``sample(n, x=xs)`` :math:`\to (n, m, D)`.
        test: Simulated pairs, :class:`sbikit.Simulations` or ``(theta, x)``, :math:`N` rows,
            the parameters drawn from the prior.
        num_samples: The posterior draws per observation.
        seed: Seeds the draws.

    Returns:
        A :class:`RecoveryResult`: ``r2``, ``rmse``, ``z``, ``contraction`` and ``plot()``.
    """

    test = test_pairs(test)
    draws = draw(posterior, test, num_samples, seed, log_prob=False)
    return recovery_from(draws, _names(posterior, test.theta.shape[1]))
