r"""Diagnostics: is the posterior calibrated, is it accurate, and could the simulator have
produced the data?

Every diagnostic is a pure function of a posterior (anything with ``sample(n, x=xs)``
returning :math:`(n, m, D)` and ``log_prob(theta, x=xs)``), simulated pairs
(:class:`sbikit.Simulations`) and observations. Each returns a small result object with a
readable ``repr``, its numbers as attributes, and ``plot()`` returning a matplotlib figure.

- Calibration: :func:`sbc`, :func:`coverage`, :func:`tarp`, :func:`recovery`.
- Accuracy: :func:`c2st`, :func:`ppc`; a surrogate likelihood against its simulator: :func:`emulator_check`.
- Misspecification: :func:`misspecification`, :func:`outliers`.
- All of the standard ones at once: :func:`check`.
- Training summaries that make misspecification detectable: :class:`MMDSummary`.

Example:
    >>> from torch.distributions import Independent, Normal
    >>> class Exact:  # x ~ N(theta, 1) under theta ~ N(0, 1): p(theta | x) = N(x / 2, 1 / 2)
    ...     def q(self, x): return Independent(Normal(x / 2, 0.5**0.5), 1)
    ...     def sample(self, n, x): return self.q(x).sample((n,))
    ...     def log_prob(self, theta, x): return self.q(x).log_prob(theta)
    >>> prior = Independent(Normal(torch.zeros(2), 1.0), 1)
    >>> simulator = lambda theta: theta + torch.randn_like(theta)
    >>> test = sbikit.simulate(simulator, prior, 400, seed=1)
    >>> sbikit.diagnostics.coverage(Exact(), test).max_gap < 0.1
    True
    >>> sbikit.diagnostics.tarp(Exact(), test).ecp.shape, sbikit.diagnostics.recovery(Exact(), test).r2.shape
    ((101,), (2,))
    >>> sbikit.diagnostics.misspecification(Exact(), test, 10 * torch.ones(2)).p_value < 0.01
    True
    >>> sbikit.diagnostics.ppc(Exact(), simulator, torch.zeros(2)).predictive.shape
    (500, 2)
    >>> report = sbikit.diagnostics.check(Exact(), simulator, prior, num_simulations=200)
    >>> sorted(report.results)
    ['coverage', 'recovery', 'sbc', 'tarp']
"""

__all__ = [
    "C2STResult",
    "CoverageResult",
    "EmulatorResult",
    "MMDSummary",
    "MisspecificationResult",
    "OutlierResult",
    "PPCResult",
    "RecoveryResult",
    "Report",
    "SBCResult",
    "TARPResult",
    "c2st",
    "check",
    "coverage",
    "emulator_check",
    "misspecification",
    "outliers",
    "ppc",
    "recovery",
    "sbc",
    "tarp",
]

from .c2st import C2STResult, c2st
from .check import Report, check
from .calibration import CoverageResult, SBCResult, coverage, sbc
from .emulator import EmulatorResult, emulator_check
from .misspecification import MisspecificationResult, OutlierResult, misspecification, outliers
from .predictive import PPCResult, ppc
from .recovery import RecoveryResult, recovery
from .regularization import MMDSummary
from .tarp import TARPResult, tarp
