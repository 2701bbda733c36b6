r"""Calibrating NLE: the posterior of many observations, batched (tempered SMC) or one MCMC run each.

``likelihood.posterior()`` is the posterior of any observation, which the diagnostics sample for
every test observation. With ``batched=True`` (the default) all of them are sampled together by
tempered SMC; with ``batched=False`` each by its own MCMC run (:class:`sbikit.MCMCPosterior`).

For each model, NLE trains on :math:`N` simulations (10,000 by default), and on test
simulations that were not trained on:

1. **Agreement.** For :math:`K` test observations (10 by default), 2,000 draws of each sampler:
   the C2ST between them, and against the reference posterior where there is one
   (``gaussian_linear``: exact; ``ricker``: the particle filter, for the first 3 observations
   with ``--reference``), and the seconds per observation of each.
2. **SBC.** Over :math:`m` test observations (200 by default, 100 draws each, drawn once for
   both): whether SBC passes, the smallest Holm-adjusted p-value, the largest coverage gap, and
   the seconds per observation (the draws and the log-densities that SBC and coverage use); the per-observation MCMC too where ``--sbc-mcmc`` names the model (it costs
   :math:`m` MCMC runs).

Run it from the repository root, alone on the machine::

    python benchmarks/batched_nle.py                               # gaussian_linear and ricker
    python benchmarks/batched_nle.py --models ricker --load ricker.sbk --reference
    python benchmarks/batched_nle.py --quick                        # smoke test
"""

import argparse
import time
import warnings

import numpy as np
import torch

import sbikit

from sbikit import diagnostics as dx
from sbikit.diagnostics._draws import draw
from sbikit.diagnostics.calibration import coverage_from, sbc_from
from sbikit.simulators import gaussian_linear, ricker


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def model(name: str):
    r"""The prior, a ``sbikit.Simulator`` and a reference sampler ``(x, n) -> draws`` (or None)."""

    if name == "gaussian_linear":
        prior = gaussian_linear.prior()
        return prior, sbikit.Simulator(gaussian_linear.simulator, prior), gaussian_linear.reference_posterior
    prior = ricker.prior()
    return (prior, sbikit.Simulator(ricker.simulator, prior, batched=False, numpy=True, rng=True),
            lambda x, n: ricker.reference_posterior(x, n, seed=0))


def timed(work):
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = work()
    return out, time.perf_counter() - began, sorted({type(w.message).__name__ for w in caught})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gaussian_linear", "ricker"])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--agreement", type=int, default=10, help="test observations compared draw by draw")
    parser.add_argument("--test", type=int, default=200, help="test observations of SBC")
    parser.add_argument("--load", default=None, help="a saved likelihood to use instead of training (one model)")
    parser.add_argument("--reference", action="store_true", help="ricker: particle-filter references for 3")
    parser.add_argument("--sbc-mcmc", nargs="*", default=["gaussian_linear"], help="models whose SBC also runs MCMC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_simulations, args.agreement, args.test = 1000, 2, 20
    quiet = sbikit.MCMCConfig(show_progress=False)
    for name in args.models:
        prior, simulator, reference = model(name)
        if args.load:
            likelihood, seconds = sbikit.load(args.load), 0.0
        else:
            data = sbikit.simulate(simulator, args.num_simulations, seed=args.seed, show_progress=False)
            config = sbikit.TrainConfig(show_progress=False, seed=args.seed, max_epochs=20 if args.quick else None)
            likelihood, seconds, _ = timed(lambda: sbikit.NLE(prior, training=config).fit(data))
        test = sbikit.simulate(simulator, max(args.test, args.agreement), seed=args.seed + 1, show_progress=False)
        print(f"\n{name}: NLE on {args.num_simulations} simulations (trained in {seconds:.0f} s); "
              f"torch threads {torch.get_num_threads()}\n")
        rows = []
        batched = likelihood.posterior(mcmc=quiet)
        each = likelihood.posterior(mcmc=quiet, batched=False)
        x = test.x[: args.agreement]
        torch.manual_seed(args.seed)
        smc, smc_s, smc_w = timed(lambda: batched.sample(2000, x=x))
        torch.manual_seed(args.seed)
        mcmc, mcmc_s, mcmc_w = timed(lambda: each.sample(2000, x=x))
        for j in range(len(x)):
            ref = ""
            if name == "gaussian_linear" or (args.reference and j < 3):
                r = reference(x[j], 2000)
                ref = f"{float(dx.c2st(r, smc[:, j])):.3f} / {float(dx.c2st(r, mcmc[:, j])):.3f}"
            rows.append([str(j), f"{float(dx.c2st(smc[:, j], mcmc[:, j])):.3f}", ref or "-"])
        print(table(["obs", "C2ST SMC vs MCMC", "C2ST vs reference (SMC / MCMC)"], rows))
        print(f"\nseconds per observation, 2,000 draws: SMC {smc_s / len(x):.2f} (all {len(x)} at once), "
              f"MCMC {mcmc_s / len(x):.2f}; warnings: SMC {smc_w or '-'}, MCMC {mcmc_w or '-'}")
        rows = []
        samplers = [("batched SMC", batched)] + ([("MCMC each", each)] if name in args.sbc_mcmc else [])
        for label, posterior in samplers:
            draws, s, w = timed(lambda: draw(posterior, test[: args.test], 100, args.seed))  # as dx.sbc draws
            sbc, cov = sbc_from(draws, likelihood.parameter_names, 0.05), coverage_from(draws, 0.05)
            rows.append([label, str(sbc.passed), f"{float(np.min(sbc.p_values)):.3f}",
                         f"{cov.max_gap:.3f}", f"{s / args.test:.2f}", "; ".join(w) or "-"])
        print()
        print(table(["sampler", "SBC passed", "min p", "coverage gap", "s / observation", "warnings"], rows))


if __name__ == "__main__":
    main()
