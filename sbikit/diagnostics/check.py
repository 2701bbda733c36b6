r"""The standard set of checks in one call, and one report."""

__all__ = ["Report", "check"]

import math

from dataclasses import dataclass, fields

from .._checks import check_count
from ..data import Simulations, as_float_tensor
from ._draws import check_alpha, draw, test_pairs
from .calibration import CoverageResult, SBCResult, _names, coverage_from, sbc_from
from .misspecification import MisspecificationResult, misspecification
from .predictive import PPCResult, ppc, replicable
from .recovery import RecoveryResult, recovery_from
from .tarp import TARPResult, tarp_from


@dataclass(frozen=True, repr=False)
class Report:
    r"""The results of :func:`check`.

    Attributes:
        sbc, coverage, tarp, recovery: Calibration on the test simulations.
        ppc: The posterior predictive check of ``x_obs`` (one observation), or None.
        misspecification: The misspecification test of ``x_obs`` (with its power), or None without
            an observation.
        test: The test simulations.
    """

    sbc: SBCResult
    coverage: CoverageResult
    tarp: TARPResult
    recovery: RecoveryResult
    ppc: PPCResult | None
    misspecification: MisspecificationResult | None
    test: Simulations

    @property
    def results(self) -> dict:
        r"""The results that were computed, by name."""

        results = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "test"}
        return {name: result for name, result in results.items() if result is not None}

    @property
    def passed(self) -> bool:
        r"""Whether SBC and coverage pass, and the misspecification test (if run) neither rejects nor
        lacks the power to reject (then ``verdict`` says "not detectable from one observation").

        TARP is shown but left out: each test rejects a calibrated posterior with probability
        ``alpha``, and a third one would raise the report's false alarms for little power
        (the coverage curve is the ECDF of SBC's joint rank, so those two mostly agree)."""

        return self.verdict == "passed"

    @property
    def verdict(self) -> str:
        r"""``"passed"``, ``"failed"``, or, where calibration passes and the misspecification test is
        not rejected but had too little power to be, its ``"not detectable from one observation"``."""

        mismatch = self.misspecification
        if not (self.sbc.passed and self.coverage.passed) or (mismatch is not None and mismatch.rejected):
            return "failed"
        return "passed" if mismatch is None or mismatch.detectable else mismatch.verdict

    def __repr__(self) -> str:
        parts = [f"Report(passed={self.passed}, verdict={self.verdict!r}, test simulations={len(self.test)})"]
        for result in self.results.values():
            parts.append("  " + repr(result).replace("\n", "\n  "))
        return "\n".join(parts)

    def plot(self):
        r"""Draws every result's figure, one below the other, into one figure. Returns it."""

        from matplotlib.figure import Figure

        dim = len(self.recovery.names)
        # rows of figures: coverage and TARP side by side, the others one per row
        rows = [[self.sbc], [self.coverage, self.tarp], [self.recovery], [self.ppc], [self.misspecification]]
        rows = [[r for r in row if r is not None] for row in rows]
        rows = [row for row in rows if row]
        heights = {
            SBCResult: 2.3 * math.ceil((dim + 1) / 4),
            CoverageResult: 3.4,
            RecoveryResult: 4.6,
            PPCResult: 2.1 * min(3, math.ceil(min(12, len(self.ppc.names)) / 4)) if self.ppc is not None else 0,
            MisspecificationResult: 3.2,
        }
        ratios = [heights[type(row[0])] for row in rows]
        figure = Figure(figsize=(max(11.2, 2.4 * dim), sum(ratios) + 0.4 * len(rows)), layout="constrained")
        for sub, row in zip(figure.subfigures(len(rows), 1, height_ratios=ratios), rows):
            cells = [sub] if len(row) == 1 else sub.subfigures(1, len(row))
            for cell, result in zip(cells, row):
                result.plot(figure=cell)
        return figure


def check(
    posterior: object,
    simulator: object,
    prior: object | None = None,
    *,
    x_obs: object | None = None,
    test: object | None = None,
    num_simulations: int = 500,
    num_samples: int = 200,
    alpha: float = 0.05,
    seed: int = 20_251_126,
) -> Report:
    r"""Runs the standard checks: SBC, coverage, TARP and recovery on simulations from the model,
    and, given observations, a posterior predictive check and the misspecification test.

    Arguments:
        posterior: Anything with ``sample(n, x=xs)`` :math:`\to (n, m, D)` and ``log_prob(theta, x=xs)``.
        simulator: The simulator the posterior was trained on: a :class:`sbikit.Simulator` (which
            may hold the prior), a batched function, or a structured model such as
            :class:`sbikit.MixedEffects` (then without ``prior``).
        prior: The prior the posterior was trained under, unless ``simulator`` holds it.
        x_obs: One observation, or a batch of them (then no posterior predictive check).
        test: Test simulations to use instead of simulating ``num_simulations`` new ones.
        num_simulations: The test simulations, drawn with ``seed``, which must differ from
            the seed of the training data.
        num_samples: The posterior draws per test observation.
        alpha: The level of every test.
        seed: Seeds the test simulations and every draw.

    Returns:
        A :class:`Report`: each result as an attribute, ``passed``, ``verdict`` ("passed",
        "failed" or "not detectable from one observation"), and ``plot()``.
    """

    alpha = check_alpha(alpha)
    if test is None:
        from ..runs import simulate

        num_simulations = check_count(num_simulations, "num_simulations")
        if prior is None:  # a structured model or a sbikit.Simulator holds its prior
            test = simulate(simulator, num_simulations, seed=seed, show_progress=False)
        else:
            test = simulate(simulator, prior, num_simulations, seed=seed, show_progress=False)
    test = test_pairs(test)
    draws = draw(posterior, test, num_samples, seed)
    names = _names(posterior, test.theta.shape[1])
    predictive = mismatch = None
    if x_obs is not None:
        x_obs = as_float_tensor(x_obs, "x_obs")
        mismatch = misspecification(posterior, test, x_obs, alpha=alpha, seed=seed)
        one = x_obs.ndim == (2 if test.mask is not None else len(test.x_shape))
        if one and replicable(simulator):  # a StateSpace model cannot be run at given parameters
            predictive = ppc(posterior, simulator, x_obs, alpha=alpha, seed=seed)
    return Report(
        sbc=sbc_from(draws, names, alpha),
        coverage=coverage_from(draws, alpha),
        tarp=tarp_from(draws, alpha),
        recovery=recovery_from(draws, names),
        ppc=predictive,
        misspecification=mismatch,
        test=test,
    )
