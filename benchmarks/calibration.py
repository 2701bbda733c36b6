r"""Calibration of trained posteriors: SBC p-values and the largest coverage gap.

- The default NPE, trained on ``two_moons`` and ``gaussian_linear``: the SBC p-values per
  parameter and joint (Holm-adjusted, the smallest shown per kind), whether SBC passes at
  0.05, the largest gap of the HPD coverage curve, and TARP's ATC and p-value, on test
  simulations that were not trained on.
- The reliability of the verdicts: the exact posterior of ``gaussian_linear``, and versions
  that are over-confident (sd x 0.5), under-confident (sd x 2) or biased (mean + 1 sd), over
  many test sets: how often SBC passes and how large the coverage gap gets.
- The README's first example (:math:`x = \theta + 0.1 \epsilon` under a box prior on
  :math:`[-2, 2]^3`, 5,000 simulations): the default NPE and the exact posterior (a normal
  truncated to the box, per parameter) over 10 test sets of 500 pairs: how often SBC, coverage
  and TARP pass, and the largest coverage gap; beside it NPE with ``bounds="map"`` (the box
  mapped onto the line, the default until the truncated flow replaced it), and the mean log
  density of each over 5,000 test
  pairs, where no parameter lies within 0.2 of a bound and where one does (``--only readme``
  for this table alone).

Run it from the repository root::

    python benchmarks/calibration.py            # 10,000 training simulations, 1,000 test pairs, 20 test sets
    python benchmarks/calibration.py --quick    # smoke test
    python benchmarks/calibration.py --only readme
"""

import argparse
import time
import numpy as np
import torch

import sbikit

from sbikit import diagnostics as dx
from sbikit.simulators import gaussian_linear, two_moons


Analytic = gaussian_linear.ExactPosterior  # exact, or its sd scaled and its mean shifted


def _row(label: str, posterior, test, seed: int) -> str:
    sbc = dx.sbc(posterior, test, seed=seed)
    cov = dx.coverage(posterior, test, seed=seed)
    tarp = dx.tarp(posterior, test, seed=seed)
    params = sbc.p_values[:-1]
    return (
        f"| {label} | {len(test):,} | {params.min():.3g} ({sbc.names[int(params.argmin())]}) | "
        f"{sbc.p_values[-1]:.3g} | {'yes' if sbc.passed else 'no'} | {cov.max_gap:.3f} at {cov.worst_level:.2f} | "
        f"{tarp.atc:+.3f} | {tarp.p_value:.3g} |"
    )


def trained(num_simulations: int, num_test: int, seed: int) -> list[str]:
    lines = []
    for module in (two_moons, gaussian_linear):
        name = module.__name__.rsplit(".", 1)[-1]
        prior = module.prior()
        data = sbikit.simulate(module.simulator, prior, num_simulations, seed=seed, show_progress=False)
        start = time.perf_counter()
        posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(show_progress=False, seed=seed)).fit(data)
        seconds = time.perf_counter() - start
        test = sbikit.simulate(module.simulator, prior, num_test, seed=seed + 1_000_000, show_progress=False)
        lines.append(_row(f"{name}, NPE on {num_simulations:,} ({seconds:.0f} s)", posterior, test, seed))
        print(lines[-1], flush=True)
    return lines


def reliability(num_test: int, num_sets: int) -> list[str]:
    cases = {
        "exact": Analytic(),
        "over-confident (sd x 0.5)": Analytic(scale=0.5),
        "under-confident (sd x 2)": Analytic(scale=2.0),
        "biased (mean + 1 sd)": Analytic(shift=1.0),
        "slightly over-confident (sd x 0.8)": Analytic(scale=0.8),
        "slightly biased (mean + 0.3 sd)": Analytic(shift=0.3),
    }
    lines = []
    prior = gaussian_linear.prior()
    tests = [
        sbikit.simulate(gaussian_linear.simulator, prior, num_test, seed=100 + s, show_progress=False)
        for s in range(num_sets)
    ]
    for label, posterior in cases.items():
        passed, gaps, tarps = [], [], []
        for s, test in enumerate(tests):
            passed.append(dx.sbc(posterior, test, seed=s).passed)
            gaps.append(dx.coverage(posterior, test, seed=s).max_gap)
            tarps.append(dx.tarp(posterior, test, seed=s).passed)
        lines.append(
            f"| {label} | {np.mean(passed):.2f} | {np.mean(gaps):.3f} | {np.max(gaps):.3f} | {np.mean(tarps):.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


class TruncatedNormal:
    r"""The exact posterior of the README's example: :math:`\mathcal{N}(x, 0.1^2)` per parameter,
    truncated to :math:`[-2, 2]`."""

    low, high, sd = -2.0, 2.0, 0.1

    def _bounds(self, x):
        normal = torch.distributions.Normal(x.double(), self.sd)
        return normal, normal.cdf(torch.tensor(self.low, dtype=torch.float64)), normal.cdf(
            torch.tensor(self.high, dtype=torch.float64))

    def sample(self, n, x):
        normal, a, b = self._bounds(x)
        u = a + (b - a) * torch.rand(n, *x.shape, dtype=torch.float64)
        return normal.icdf(u.clamp(1e-12, 1 - 1e-12)).clamp(self.low, self.high).float()

    def log_prob(self, theta, x):
        normal, a, b = self._bounds(x)
        return (normal.log_prob(theta.double()) - (b - a).log()).sum(-1).float()


def readme_example(num_sets: int, num_test: int, seed: int) -> list[str]:
    prior = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    simulator = lambda theta: theta + 0.1 * torch.randn_like(theta)  # noqa: E731
    data = sbikit.simulate(simulator, prior, num_simulations=5_000, seed=seed, show_progress=False)
    posteriors = {}
    for bounds in ("truncate", "map"):
        start = time.perf_counter()
        npe = sbikit.NPE(prior, bounds=bounds, training=sbikit.TrainConfig(show_progress=False, seed=seed)).fit(data)
        label = "default NPE (bounds='truncate')" if bounds == "truncate" else "NPE, bounds='map'"
        posteriors[f"{label}, {time.perf_counter() - start:.0f} s"] = npe
    posteriors["exact"] = TruncatedNormal()
    tests = [sbikit.simulate(simulator, prior, num_test, seed=seed + 1 + s, show_progress=False)
             for s in range(num_sets)]
    pairs = sbikit.simulate(simulator, prior, 5_000, seed=seed + 1_000, show_progress=False)
    edge = (pairs.theta.abs() > 1.8).any(-1)  # a parameter within 0.2 (2 posterior sds) of a bound
    lines = []
    for label, posterior in posteriors.items():
        sbc, cov, tarp, gaps = [], [], [], []
        for s, test in enumerate(tests):
            sbc.append(dx.sbc(posterior, test, seed=s).passed)
            result = dx.coverage(posterior, test, seed=s)
            cov.append(result.passed)
            gaps.append(result.max_gap)
            tarp.append(dx.tarp(posterior, test, seed=s).passed)
        log_p = posterior.log_prob(pairs.theta.unsqueeze(0), pairs.x).reshape(-1)
        lines.append(f"| {label} | {np.mean(sbc):.1f} | {np.mean(cov):.1f} | {np.mean(tarp):.1f} | "
                     f"{np.mean(gaps):.3f} | {np.max(gaps):.3f} | {log_p[~edge].mean():.3f} | {log_p[edge].mean():.3f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, to smoke-test the script")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("readme",), help="one table alone")
    args = parser.parse_args(argv)
    num_simulations, num_test, num_sets = (1_000, 200, 3) if args.quick else (10_000, 1_000, 20)
    readme = [
        f"The README's example over {3 if args.quick else 10} test sets of 500 pairs (share passed at 0.05):",
        "| posterior | SBC | coverage | TARP | mean largest gap | worst largest gap | "
        "mean log density, interior | at an edge |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    if args.only == "readme":
        print("\n".join(readme), flush=True)
        readme_example(3 if args.quick else 10, 500, args.seed)
        return
    header = [
        "| posterior | test pairs | smallest SBC p, parameters (Holm) | SBC p, joint | SBC passed | "
        "largest coverage gap | TARP ATC | TARP p |",
        "|:--|--:|--:|--:|:--|--:|--:|--:|",
    ]
    rows = trained(num_simulations, num_test, args.seed)
    exact = _row("gaussian_linear, exact", Analytic(), sbikit.simulate(
        gaussian_linear.simulator, gaussian_linear.prior(), num_test, seed=args.seed + 1_000_000, show_progress=False
    ), args.seed)
    print("\n".join(header + rows + [exact]))
    print()
    print(f"gaussian_linear over {num_sets} test sets of {num_test:,} pairs (200 draws each):")
    lines = reliability(num_test, num_sets)
    print("\n".join([
        "| posterior | SBC pass rate | mean largest coverage gap | worst largest gap | TARP pass rate |",
        "|:--|--:|--:|--:|--:|",
        *lines,
    ]))
    print()
    print("\n".join(readme), flush=True)
    readme_example(3 if args.quick else 10, 500, args.seed)


if __name__ == "__main__":
    main()
