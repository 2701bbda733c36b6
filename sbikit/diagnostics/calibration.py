r"""Calibration: simulation-based calibration (SBC) and the expected coverage of highest-density
regions.

For pairs :math:`(\theta_i, x_i) \sim p(\theta) p(x | \theta)` and :math:`L` draws
:math:`\theta_{li} \sim q(\theta | x_i)`, the rank of :math:`\theta_i` among the draws is
uniform on :math:`\{0, \dots, L\}` for every coordinate and every statistic when
:math:`q = p(\theta | x)` (Talts et al., 2018). SBC ranks each parameter, and all of them at
once by the log-density: the level of the smallest highest-density region (HPD) that holds
the truth,

.. math:: \alpha_i = \frac{1}{L} \#\{l : q(\theta_{li} | x_i) > q(\theta_i | x_i)\},

is uniform too, and its ECDF at a level :math:`\gamma` is the expected coverage of the
:math:`\gamma` HPD region. Ranks are made continuous, :math:`(r + V) / (L + 1)` with
:math:`V \sim U(0, 1)` (ties broken at random), so that they are exactly uniform under
calibration and scipy's Kolmogorov-Smirnov test applies; the :math:`D + 1` p-values are
adjusted by Holm's method. An over-confident posterior puts the truth in its tails
(U-shaped ranks, coverage below the diagonal), an under-confident one in its centre, and a
biased one to one side.
"""

__all__ = ["CoverageResult", "SBCResult", "coverage", "sbc"]

import numpy as np
import scipy.stats

from dataclasses import dataclass, field

from .. import _arviz
from ._draws import Draws, check_alpha, draw, holm, in_words, randomized_rank, test_pairs
from ._plot import LEVELS, ecdf_difference, panels


def _names(posterior: object, dim: int) -> list[str]:
    names = getattr(posterior, "parameter_names", None)
    if names is None or len(names) != dim:
        names = [f"theta_{i}" for i in range(dim)]
    return list(names)


def hpd_levels(draws: Draws) -> np.ndarray:
    r"""The randomized HPD level :math:`\alpha_i` of each truth, :math:`(N,)`."""

    above = (draws.log_prob_samples > draws.log_prob_truth).sum(0)
    ties = (draws.log_prob_samples == draws.log_prob_truth).sum(0)
    generator = np.random.default_rng([draws.seed, 1])
    return randomized_rank(above, ties, draws.samples.shape[0], generator)


@dataclass(frozen=True, repr=False)
class SBCResult:
    r"""Simulation-based calibration.

    Attributes:
        names: The parameter names and ``"joint"`` (the rank by log-density), :math:`D + 1`.
        ranks: The rank of each truth among the draws per parameter, integers :math:`(N, D)`.
        joint_ranks: The number of draws denser than the truth, integers :math:`(N,)`.
        fractional_ranks: The randomized ranks in :math:`(0, 1)`, :math:`(N, D + 1)`, the joint last.
        statistics: The Kolmogorov-Smirnov distances to uniform, :math:`(D + 1,)`.
        p_values: Holm-adjusted p-values, :math:`(D + 1,)`.
        alpha: The level of the test.
        num_samples: The posterior draws per observation :math:`L`.
    """

    names: list[str]
    ranks: np.ndarray
    joint_ranks: np.ndarray
    fractional_ranks: np.ndarray
    statistics: np.ndarray
    p_values: np.ndarray
    alpha: float
    num_samples: int

    @property
    def passed(self) -> bool:
        r"""Whether no rank distribution departs from uniform at the level ``alpha``."""

        return bool((self.p_values >= self.alpha).all())

    def __repr__(self) -> str:
        width = max(len(n) for n in self.names)
        lines = [
            f"SBCResult(N={len(self.ranks)}, num_samples={self.num_samples}, alpha={self.alpha}, "
            f"passed={self.passed})",
            f"  {'':{width}}  KS stat  p (Holm)",
        ]
        for name, stat, p in zip(self.names, self.statistics, self.p_values):
            flag = "" if p >= self.alpha else "  <- not uniform"
            lines.append(f"  {name:{width}}  {stat:7.3f}  {p:8.3g}{flag}")
        return "\n".join([*lines, f"  {self.verdict}"])

    @property
    def verdict(self) -> str:
        r"""The result in words: the largest distance between a rank ECDF and the uniform CDF
        (the share of truths placed too high or too low among the draws) and whether it matters."""

        worst = int(np.argmax(self.statistics))
        return in_words(self.passed, float(self.statistics[worst]), f"KS distance of {self.names[worst]}'s ranks")

    def plot(self, figure=None):
        r"""Plots each rank's ECDF minus the uniform CDF, with arviz's simultaneous band at
        ``1 - alpha``; a curve leaving the band is drawn red. Returns the figure."""

        band = _arviz.ecdf_band(len(self.ranks), LEVELS, 1 - self.alpha)
        figure, axes = panels(len(self.names), figure)
        for ax, name, values in zip(axes, self.names, self.fractional_ranks.T):
            ecdf_difference(ax, values, band, name)
        figure.suptitle(f"SBC: ECDF - uniform, {1 - self.alpha:.0%} simultaneous band", fontsize=10)
        return figure


def sbc_from(draws: Draws, names: list[str], alpha: float) -> SBCResult:
    samples, theta = draws.samples, draws.theta
    below = (samples < theta).sum(0)
    ties = (samples == theta).sum(0)
    generator = np.random.default_rng([draws.seed, 0])
    fractional = randomized_rank(below, ties, samples.shape[0], generator)
    fractional = np.concatenate([fractional, hpd_levels(draws)[:, None]], axis=1)
    tests = [scipy.stats.kstest(column, "uniform") for column in fractional.T]
    joint = (draws.log_prob_samples > draws.log_prob_truth).sum(0)
    return SBCResult(
        names=[*names, "joint"],
        ranks=below.numpy(),
        joint_ranks=joint.numpy(),
        fractional_ranks=fractional,
        statistics=np.array([t.statistic for t in tests]),
        p_values=holm(np.array([t.pvalue for t in tests])),
        alpha=alpha,
        num_samples=samples.shape[0],
    )


def sbc(posterior: object, test: object, num_samples: int = 200, alpha: float = 0.05, seed: int = 0) -> SBCResult:
    r"""Simulation-based calibration: the ranks of the true parameters among posterior draws.

    Arguments:
        posterior: Anything with ``sample(n, x=xs)`` :math:`\to (n, m, D)` and
            ``log_prob(theta, x=xs)``.
        test: Simulated pairs, :class:`sbikit.Simulations` or ``(theta, x)``, :math:`N` rows,
            drawn from the prior the posterior was trained under (not the training data).
        num_samples: The posterior draws per observation :math:`L`.
        alpha: The level of the uniformity tests (family-wise, by Holm's method).
        seed: Seeds the posterior draws and the randomized ranks.

    Returns:
        An :class:`SBCResult`: ``passed``, ``p_values`` per parameter and joint, the ranks,
        and ``plot()``.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> class Exact:  # x ~ N(theta, 1) under theta ~ N(0, 1): p(theta | x) = N(x / 2, 1 / 2)
        ...     def q(self, x): return Independent(Normal(x / 2, 0.5**0.5), 1)
        ...     def sample(self, n, x): return self.q(x).sample((n,))
        ...     def log_prob(self, theta, x): return self.q(x).log_prob(theta)
        >>> theta = torch.randn(300, 2)
        >>> result = sbc(Exact(), (theta, theta + torch.randn(300, 2)))
        >>> result.names, result.p_values.shape
        (['theta_0', 'theta_1', 'joint'], (3,))
    """

    alpha = check_alpha(alpha)
    test = test_pairs(test)
    draws = draw(posterior, test, num_samples, seed)
    return sbc_from(draws, _names(posterior, test.theta.shape[1]), alpha)


@dataclass(frozen=True, repr=False)
class CoverageResult:
    r"""The expected coverage of highest-density regions.

    Attributes:
        levels: The credibility levels :math:`\gamma`, from 0 to 1, :math:`(K,)`.
        coverage: The share of truths inside each level's HPD region, :math:`(K,)`.
        max_gap: The largest :math:`|\text{coverage} - \gamma|`.
        worst_level: The level where it is largest.
        band: The simultaneous ``1 - alpha`` band (lower, upper) of a calibrated posterior's
            coverage at ``levels`` (arviz's, for :math:`N` observations).
        hpd_levels: Each truth's HPD level :math:`\alpha_i` (randomized), :math:`(N,)`.
        alpha: One minus the band's probability.
    """

    levels: np.ndarray
    coverage: np.ndarray
    band: tuple[np.ndarray, np.ndarray]
    hpd_levels: np.ndarray
    alpha: float
    max_gap: float = field(init=False)
    worst_level: float = field(init=False)

    def __post_init__(self) -> None:
        gaps = np.abs(self.coverage - self.levels)
        object.__setattr__(self, "max_gap", float(gaps.max()))
        object.__setattr__(self, "worst_level", float(self.levels[gaps.argmax()]))

    @property
    def passed(self) -> bool:
        r"""Whether the coverage curve stays inside the simultaneous band at every level."""

        return bool(np.all((self.coverage >= self.band[0] - 1e-12) & (self.coverage <= self.band[1] + 1e-12)))

    def __repr__(self) -> str:
        marks = [0.5, 0.8, 0.95]
        at = {m: float(np.interp(m, self.levels, self.coverage)) for m in marks}
        shown = ", ".join(f"{m:.0%}: {c:.3f}" for m, c in at.items())
        side = "over" if np.interp(self.worst_level, self.levels, self.coverage) < self.worst_level else "under"
        return (
            f"CoverageResult(N={len(self.hpd_levels)}, max_gap={self.max_gap:.3f} at level {self.worst_level:.2f} "
            f"({side}-confident there), passed={self.passed})\n  coverage at {shown}\n  {self.verdict}"
        )

    @property
    def verdict(self) -> str:
        r"""The result in words: the largest gap between coverage and credibility, on which side,
        and whether it matters."""

        held = float(np.interp(self.worst_level, self.levels, self.coverage))
        side = "over" if held < self.worst_level else "under"
        return in_words(self.passed, self.max_gap,
                        f"coverage {held:.2f} at level {self.worst_level:.2f}, {side}-confident")

    def plot(self, figure=None):
        r"""Plots empirical against nominal coverage, with the diagonal and the band. Returns the figure."""

        figure, (ax,) = panels(1, figure, size=(3.6, 3.4))
        ax.fill_between(self.levels, *self.band, color="0.85", lw=0, label=f"{1 - self.alpha:.0%} band")
        ax.plot([0, 1], [0, 1], color="0.4", lw=0.8)
        ax.plot(self.levels, self.coverage, color="C0" if self.passed else "C3", label="empirical")
        ax.set_xlabel("credibility level")
        ax.set_ylabel("coverage of HPD regions")
        ax.set_title(f"expected coverage, largest gap {self.max_gap:.3f}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
        return figure


def coverage_from(draws: Draws, alpha: float, levels: np.ndarray | None = None) -> CoverageResult:
    levels = LEVELS if levels is None else levels
    hpd = hpd_levels(draws)
    empirical = (hpd[:, None] <= levels).mean(0)
    return CoverageResult(levels, empirical, _arviz.ecdf_band(len(hpd), levels, 1 - alpha), hpd, alpha)


def coverage(
    posterior: object, test: object, num_samples: int = 200, alpha: float = 0.05, seed: int = 0
) -> CoverageResult:
    r"""The expected coverage of the posterior's highest-density regions at levels 0 to 1.

    The truth lies in the :math:`\gamma` HPD region of :math:`q(\theta | x)` when fewer than a
    share :math:`\gamma` of the draws are denser than it; averaged over test pairs, that
    happens with probability :math:`\gamma` for a calibrated posterior. Coverage below the
    diagonal means over-confidence, above it under-confidence.

    Arguments:
        posterior: Anything with ``sample(n, x=xs)`` :math:`\to (n, m, D)` and
            ``log_prob(theta, x=xs)``.
        test: Simulated pairs, :class:`sbikit.Simulations` or ``(theta, x)``, :math:`N` rows.
        num_samples: The posterior draws per observation.
        alpha: One minus the probability of the simultaneous band that ``passed`` uses.
        seed: Seeds the posterior draws and the randomized levels.

    Returns:
        A :class:`CoverageResult`: ``levels``, ``coverage``, ``max_gap`` and ``plot()``.
    """

    alpha = check_alpha(alpha)
    test = test_pairs(test)
    return coverage_from(draw(posterior, test, num_samples, seed), alpha)
