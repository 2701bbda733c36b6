r"""Tests of Accuracy with Random Points (TARP; Lemos et al., 2023).

For each test pair, a reference point :math:`r_i` is drawn, and the truth's distance to it is
ranked among the draws' distances:

.. math:: f_i = \frac{1}{L} \#\{l : \|\theta_{li} - r_i\| < \|\theta_i - r_i\|\}.

The ball around :math:`r_i` through :math:`\theta_i` holds a share :math:`f_i` of the
posterior mass; for a calibrated posterior :math:`f_i` is uniform, so the expected coverage
probability :math:`\mathrm{ECP}(\gamma) = P(f_i < \gamma)` follows the diagonal. With
reference points drawn independently of the data, a uniform :math:`f` is also sufficient
for calibration. Parameters are standardized by the test set's mean and standard deviation,
and by default the references are uniform over the box the standardized test parameters span.
Ranks are randomized as in :mod:`sbikit.diagnostics.calibration`, and tested by scipy's
Kolmogorov-Smirnov test.
"""

__all__ = ["TARPResult", "tarp"]

import numpy as np
import scipy.stats
import torch

from dataclasses import dataclass, field

from ..data import as_float_tensor
from ._draws import Draws, check_alpha, draw, in_words, randomized_rank, test_pairs
from ._plot import LEVELS, panels


@dataclass(frozen=True, repr=False)
class TARPResult:
    r"""TARP's expected coverage.

    Attributes:
        levels: The credibility levels, :math:`(K,)`.
        ecp: The expected coverage probability at each level, :math:`(K,)`.
        atc: The signed area between the curve and the diagonal, :math:`\int (\mathrm{ECP} - \gamma)
            d\gamma`: negative when over-confident or biased, positive when under-confident.
        max_gap: The largest :math:`|\mathrm{ECP} - \gamma|`.
        fractions: Each truth's randomized :math:`f_i`, :math:`(N,)`.
        statistic: The Kolmogorov-Smirnov distance of :math:`f` to uniform.
        p_value: Its p-value.
        alpha: The level of the test.
    """

    levels: np.ndarray
    ecp: np.ndarray
    fractions: np.ndarray
    statistic: float
    p_value: float
    alpha: float
    atc: float = field(init=False)
    max_gap: float = field(init=False)

    def __post_init__(self) -> None:
        gap = self.ecp - self.levels  # the trapezoid rule (np.trapezoid needs numpy 2)
        object.__setattr__(self, "atc", float(((gap[1:] + gap[:-1]) / 2 * np.diff(self.levels)).sum()))
        object.__setattr__(self, "max_gap", float(np.abs(self.ecp - self.levels).max()))

    @property
    def passed(self) -> bool:
        r"""Whether the test does not reject calibration at the level ``alpha``."""

        return self.p_value >= self.alpha

    def __repr__(self) -> str:
        return (
            f"TARPResult(N={len(self.fractions)}, atc={self.atc:+.3f}, max_gap={self.max_gap:.3f}, "
            f"KS={self.statistic:.3f}, p_value={self.p_value:.3g}, passed={self.passed})\n  {self.verdict}"
        )

    @property
    def verdict(self) -> str:
        r"""The result in words: the largest gap between expected coverage and credibility, and
        whether it matters."""

        side = "over" if self.atc < 0 else "under"
        return in_words(self.passed, self.max_gap, f"expected coverage, {side}-confident on balance")

    def plot(self, figure=None):
        r"""Plots the expected coverage probability against the credibility level. Returns the figure."""

        figure, (ax,) = panels(1, figure, size=(3.6, 3.4))
        ax.plot([0, 1], [0, 1], color="0.4", lw=0.8)
        ax.plot(self.levels, self.ecp, color="C0" if self.passed else "C3")
        ax.set_xlabel("credibility level")
        ax.set_ylabel("expected coverage (TARP)")
        ax.set_title(f"TARP: ATC {self.atc:+.3f}, p = {self.p_value:.2g}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        return figure


def tarp_from(draws: Draws, alpha: float, references: torch.Tensor | None = None) -> TARPResult:
    theta, samples = draws.theta, draws.samples
    loc, scale = theta.mean(0), theta.std(0).clamp_min(1e-12)
    theta, samples = (theta - loc) / scale, (samples - loc) / scale
    generator = np.random.default_rng([draws.seed, 2])
    if references is None:
        low, high = theta.min(0).values.numpy(), theta.max(0).values.numpy()
        references = torch.from_numpy(generator.uniform(low, high, size=theta.shape)).float()
    else:
        references = (references - loc) / scale
    truth = (theta - references).norm(dim=-1)
    distances = (samples - references).norm(dim=-1)
    fractions = randomized_rank((distances < truth).sum(0), (distances == truth).sum(0), len(samples), generator)
    ecp = (fractions[:, None] <= LEVELS).mean(0)
    test = scipy.stats.kstest(fractions, "uniform")
    return TARPResult(LEVELS, ecp, fractions, float(test.statistic), float(test.pvalue), alpha)


def tarp(
    posterior: object,
    test: object,
    num_samples: int = 200,
    references: object | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> TARPResult:
    r"""TARP: the expected coverage of balls around random reference points.

    Arguments:
        posterior: Anything with ``sample(n, x=xs)`` :math:`\to (n, m, D)`.
        test: Simulated pairs, :class:`sbikit.Simulations` or ``(theta, x)``, :math:`N` rows.
        num_samples: The posterior draws per observation.
        references: Reference points :math:`(N, D)`, one per test pair; by default uniform
            over the box spanned by the test parameters.
        alpha: The level of the uniformity test.
        seed: Seeds the draws, the references and the randomized ranks.

    Returns:
        A :class:`TARPResult`: ``ecp``, ``atc``, ``p_value``, ``passed`` and ``plot()``.
    """

    alpha = check_alpha(alpha)
    test = test_pairs(test)
    if references is not None:
        references = as_float_tensor(references, "references")
        if references.shape != test.theta.shape:
            raise ValueError(
                f"references must have shape {tuple(test.theta.shape)}, one point per test pair, "
                f"got {tuple(references.shape)}."
            )
    return tarp_from(draw(posterior, test, num_samples, seed, log_prob=False), alpha, references)
