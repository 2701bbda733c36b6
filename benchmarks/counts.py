r"""Benchmark of NLE and NPE on counts: the Ricker model's 50 Poisson counts (``simulators/ricker.py``).

1. **Emulator.** NLE trains on :math:`N` simulations (10,000 by default) of the unbatched numpy
   simulator with its own generator (``sbikit.Simulator(..., batched=False, numpy=True, rng=True)``).
   At 5 parameters (prior draws, seeded), 10,000 emulator draws against 10,000 simulator draws:
   the share of draws below zero or not integers, and for every one of the 50 counts its share
   of zeros, mean and variance. A statistic passes where the emulator's is within 10% of the
   simulator's or within 3 Monte Carlo standard errors of the difference, whichever is larger;
   the table gives the worst ratio of error to that tolerance (at most 1 passes) and the C2ST
   of :func:`sbikit.diagnostics.emulator_check`. ``--null R`` scores the simulator itself, against
   :math:`R` independent sets of its draws: the worst of 50 ratios that an exact emulator gets.
   ``--family`` fits the count model's family (a mixture of negative binomials) to the simulator's
   draws of one count at each parameter alone, by maximum likelihood: how close the family itself
   comes to each count's mean and variance, with no amortization over the parameters.
2. **Posterior.** For :math:`K` observations (the classic truth :math:`(3.8, 0.3, 10)`, then
   prior draws), the reference posterior by a particle filter on a grid
   (:func:`ricker.reference_posterior`), against 10,000 draws of NLE's MCMC posterior and of
   NPE's posterior trained on the same simulations: the C2ST of each, the truth's quantile
   and the posterior sd of each parameter, and the times.

3. **NPE on the counts as a plain tensor** (``--series``): the same references against sbikit's
   NPE with an MLP summary (``summary="mlp"``, the default for long vectors before the race),
   with its default (for a vector of 20 values or more, the MLP and ``summary="series"``, the
   counts read as a series of 50 steps by a 1-D convolutional network, both trained and the
   lower validation loss kept; the row names both losses), and sbi's NPE with its defaults, all
   trained on the same simulations: the C2ST, the posterior sd over the reference's, and the
   training time.
   ``--hybrid`` adds a summary defined here (:class:`ConvMLP`: the MLP beside that
   convolutional network, their summaries mixed by a linear layer). ``--seed`` changes the
   simulations, the observations and the training seed.

Run it from the repository root, alone on the machine::

    python benchmarks/counts.py                    # tables 1 and 2
    python benchmarks/counts.py --series           # table 3
    python benchmarks/counts.py --observations 1   # one posterior
    python benchmarks/counts.py --quick            # smoke test: N = 2,000, 1 observation, 2,000 draws
    python benchmarks/counts.py --null 10          # table 1's criterion for an exact emulator
    python benchmarks/counts.py --family           # the count model's family at each parameter alone
"""

import argparse
import math
import pathlib
import sys
import time
import torch
import warnings

import numpy as np

import sbikit

from sbikit import diagnostics as dx
from sbikit.simulators import ricker

CLASSIC = torch.tensor([3.8, 0.3, 10.0])


class ConvMLP(torch.nn.Module):
    r"""A vector :math:`(T,)` summarized whole by sbikit's default MLP and in order by a
    :class:`sbikit.nn.ConvSummary` over its :math:`T` values, the two mixed by a linear layer."""

    def __init__(self, size: int, features: int = 32) -> None:
        super().__init__()
        self.mlp = sbikit.nn.MLP(size, features, (128, 128))
        self.conv = sbikit.nn.ConvSummary(1, features)
        self.out = torch.nn.Linear(2 * features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.mlp(x), self.conv(x.unsqueeze(-1))], -1))


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def tolerance_ratio(sim: np.ndarray, emu: np.ndarray) -> dict[str, float]:
    r"""The worst |emulator - simulator| over max(10% of the simulator's, 3 Monte Carlo standard
    errors of the difference), per statistic, for draws :math:`(n, 50)` of each."""

    n = len(sim)
    out = {}
    zeros_s, zeros_e = (sim == 0).mean(0), (emu == 0).mean(0)
    se = np.sqrt((zeros_s * (1 - zeros_s) + zeros_e * (1 - zeros_e)) / n)
    out["zeros"] = np.abs(zeros_e - zeros_s) / np.maximum(0.1 * zeros_s, 3 * se)
    mean_s, mean_e, var_s, var_e = sim.mean(0), emu.mean(0), sim.var(0), emu.var(0)
    se = np.sqrt((var_s + var_e) / n)
    out["mean"] = np.abs(mean_e - mean_s) / np.maximum(0.1 * np.abs(mean_s), 3 * se)
    m4_s, m4_e = ((sim - mean_s) ** 4).mean(0), ((emu - mean_e) ** 4).mean(0)
    se = np.sqrt((np.maximum(m4_s - var_s**2, 0) + np.maximum(m4_e - var_e**2, 0)) / n)
    out["variance"] = np.abs(var_e - var_s) / np.maximum(0.1 * var_s, 3 * se)
    return {k: float(np.nanmax(v)) for k, v in out.items()}


def emulator_rows(likelihood, simulator, theta: torch.Tensor, draws: int, seed: int) -> list[list[str]]:
    torch.manual_seed(seed)
    emulated = likelihood.sample(draws, theta=theta).transpose(0, 1).double().numpy()
    check = dx.emulator_check(likelihood, simulator, theta, num_samples=min(draws, 5000), seed=seed)
    rows = []
    for k, t in enumerate(theta):
        rng = np.random.default_rng(seed + k)
        sim = np.stack([ricker.simulator(t.double().numpy(), rng) for _ in range(draws)])
        emu = emulated[k]
        outside = float(((emu < 0) | (emu != np.round(emu))).mean())
        ratios = tolerance_ratio(sim, emu)
        rows.append([", ".join(f"{v:.3g}" for v in t.tolist()), f"{(sim == 0).mean():.3f}", f"{(emu == 0).mean():.3f}",
                     f"{outside:.4f}", f"{ratios['zeros']:.2f}", f"{ratios['mean']:.2f}", f"{ratios['variance']:.2f}",
                     f"{check.accuracy[k]:.3f}"])
    return rows


def null_rows(theta: torch.Tensor, draws: int, replicates: int, seed: int) -> list[list[str]]:
    r"""The same criterion for the simulator against ``replicates`` independent sets of its own draws:
    what an exact emulator would score."""

    rows = []
    for k, t in enumerate(theta):
        rng = np.random.default_rng(seed + k)  # table 1's simulator draws
        sim = np.stack([ricker.simulator(t.double().numpy(), rng) for _ in range(draws)])
        ratios = []
        for r in range(replicates):
            rng = np.random.default_rng(1000 + 100 * k + r)
            ratios.append(tolerance_ratio(sim, np.stack([ricker.simulator(t.double().numpy(), rng) for _ in range(draws)])))
        cells = [", ".join(f"{v:.3g}" for v in t.tolist())]
        for key in ("zeros", "mean", "variance"):
            values = np.array([r[key] for r in ratios])
            cells.append(f"{np.median(values):.2f} ({values.min():.2f}-{values.max():.2f}), {int((values > 1).sum())}")
        rows.append(cells)
    return rows


def negative_binomial_mixture(counts: np.ndarray, components: int, steps: int = 3000) -> tuple[float, float]:
    r"""The mean and variance of a mixture of negative binomials fitted to ``counts`` :math:`(N,)` by
    maximum likelihood (Adam, float64): the count model's family at one parameter, with no amortization."""

    k = torch.as_tensor(counts, dtype=torch.float64).unsqueeze(-1)
    logits = torch.zeros(components, dtype=torch.float64, requires_grad=True)
    log_mean = (k.mean().add(0.5).log() + torch.linspace(-2, 2, components, dtype=torch.float64)).requires_grad_()
    log_size = torch.ones(components, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits, log_mean, log_size], lr=0.05)
    for _ in range(steps):
        n = log_size.exp()
        log_p = (torch.lgamma(k + n) - torch.lgamma(n) - torch.lgamma(k + 1)
                 - n * torch.nn.functional.softplus(log_mean - log_size) - k * torch.nn.functional.softplus(log_size - log_mean))
        loss = -torch.logsumexp(logits.log_softmax(-1) + log_p, -1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        w, mu, n = logits.softmax(-1), log_mean.exp(), log_size.exp()
        mean = (w * mu).sum()
        return float(mean), float((w * (mu + mu**2 / n + mu**2)).sum() - mean**2)


def family_rows(theta: torch.Tensor, draws: int, seed: int, columns=(0, 10)) -> list[list[str]]:
    r"""Each column's mean and variance under a mixture of 4 and of 8 negative binomials fitted to
    ``draws`` simulator draws at each parameter alone, over the simulator's."""

    rows = []
    for k, t in enumerate(theta):
        rng = np.random.default_rng(seed + k)  # table 1's simulator draws
        sim = np.stack([ricker.simulator(t.double().numpy(), rng) for _ in range(draws)])
        for column in columns:
            cells = [", ".join(f"{v:.3g}" for v in t.tolist()), str(column)]
            for components in (4, 8):
                mean, variance = negative_binomial_mixture(sim[:, column], components)
                cells.append(f"{mean / sim[:, column].mean():.3f} / {variance / sim[:, column].var():.3f}")
            rows.append(cells)
    return rows


def posterior_rows(likelihood, npe, observations: list[tuple[torch.Tensor, torch.Tensor]], draws: int,
                   seed: int, quick: bool) -> list[list[str]]:
    rows = []
    mcmc = sbikit.MCMCConfig(show_progress=False)
    for k, (truth, x) in enumerate(observations):
        began = time.perf_counter()
        reference = ricker.reference_posterior(x, draws, seed=seed, num_particles=200 if quick else 2000)
        seconds_ref = time.perf_counter() - began
        torch.manual_seed(seed)
        began = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nle_draws = likelihood.posterior(x, mcmc).sample(draws)
        seconds_nle = time.perf_counter() - began
        began = time.perf_counter()
        npe_draws = npe.sample(draws, x=x)
        seconds_npe = time.perf_counter() - began
        for name, samples, seconds in (("NLE", nle_draws, seconds_nle), ("NPE", npe_draws, seconds_npe)):
            quantiles = (samples < truth).float().mean(0)
            ratio = samples.std(0) / reference.std(0)
            warned = "; ".join(sorted({type(w.message).__name__ for w in caught})) if name == "NLE" else ""
            rows.append([str(k), name, f"{float(dx.c2st(reference, samples)):.3f}",
                         ", ".join(f"{q:.2f}" for q in quantiles.tolist()),
                         ", ".join(f"{r:.2f}" for r in ratio.tolist()), f"{seconds:.1f}", f"{seconds_ref:.0f}",
                         warned or "-"])
    return rows


def npe_rows(prior, data, observations, draws: int, seed: int, hybrid: bool = False) -> list[list[str]]:
    references = [ricker.reference_posterior(x, draws, seed=seed) for _, x in observations]
    torch.manual_seed(seed)  # the ConvMLP's starting weights
    methods = {'sbikit NPE (summary="mlp", the default before)': "mlp", "sbikit NPE (default)": None}
    if hybrid:
        methods["sbikit NPE (summary=ConvMLP(50))"] = ConvMLP(ricker.NUM_COUNTS)
    trained = {}
    for name, summary in methods.items():
        config = sbikit.TrainConfig(show_progress=False, seed=seed)
        began = time.perf_counter()
        posterior = sbikit.NPE(prior, summary=summary, training=config).fit(data)
        history = posterior.history
        if "summary" in history:  # the race of a long vector's two summaries
            name += f": kept {history['summary']} ({', '.join(f'{k} {v:.3f}' for k, v in history['summary_race'].items())})"
        else:
            name += f" (validation loss {min(history['validation_loss']):.3f})"
        trained[name] = (posterior.sample, time.perf_counter() - began, history["epochs"])
    try:
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        from npe import train_sbi

        began = time.perf_counter()
        sampler, epochs = train_sbi(prior, data, "maf")
        trained["sbi NPE (default: maf)"] = (lambda n, x: sampler.one(n, x), time.perf_counter() - began, epochs)
    except ImportError:  # sbi is in the optional bench extra
        pass
    rows = []
    for name, (sample, seconds, epochs) in trained.items():
        torch.manual_seed(seed)
        scores, ratios = [], []
        for (_, x), reference in zip(observations, references):
            draws_ = sample(draws, x)
            scores.append(float(dx.c2st(reference, draws_)))
            ratios.append(", ".join(f"{r:.2f}" for r in (draws_.std(0) / reference.std(0)).tolist()))
        rows.append([name, " / ".join(f"{c:.3f}" for c in scores), f"{np.mean(scores):.3f}", " | ".join(ratios),
                     f"{seconds:.0f}", str(epochs)])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--parameters", type=int, default=5)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--series", action="store_true", help="table 3 only: NPE's summaries against sbi's NPE")
    parser.add_argument("--hybrid", action="store_true", help="table 3 with a ConvMLP summary too")
    parser.add_argument("--family", action="store_true",
                        help="the count model's family fitted at each of table 1's parameters alone")
    parser.add_argument("--null", type=int, default=0, metavar="R",
                        help="table 1's criterion for the simulator against R sets of its own draws, alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_simulations, args.parameters, args.observations, args.draws = 2000, 2, 1, 2000
    prior = ricker.prior()
    if args.family:
        torch.manual_seed(args.seed + 1)  # table 1's parameters
        print(f"Mixtures of negative binomials fitted to {args.draws} simulator draws at each parameter alone: "
              "mean / variance over the simulator's")
        print(table(["theta", "count", "4 components", "8 components"],
                    family_rows(prior.sample((args.parameters,)), args.draws, args.seed)))
        return
    if args.null:
        torch.manual_seed(args.seed + 1)  # table 1's parameters
        print(f"The simulator against {args.null} independent sets of {args.draws} of its own draws: "
              "median err/tol (range), and how many sets exceed 1")
        print(table(["theta", "zeros", "mean", "variance"],
                    null_rows(prior.sample((args.parameters,)), args.draws, args.null, args.seed)))
        return
    simulator = sbikit.Simulator(ricker.simulator, prior, batched=False, numpy=True, rng=True)
    data = sbikit.simulate(simulator, args.num_simulations, seed=args.seed, show_progress=False)
    if args.series:
        rng = np.random.default_rng(args.seed + 2)
        torch.manual_seed(args.seed + 2)  # the same observations whatever ran before
        truths = [CLASSIC] + list(prior.sample((args.observations - 1,)))
        observations = [(t, torch.as_tensor(ricker.simulator(t.double().numpy(), rng), dtype=torch.float32))
                        for t in truths[: args.observations]]
        print(f"Ricker, {args.num_simulations} simulations as a plain (N, 50) tensor (seed {args.seed}); "
              f"torch threads {torch.get_num_threads()}")
        print(table(["method", "C2ST per observation", "mean", "sd / reference (log r, sigma, phi)", "train s",
                     "epochs"], npe_rows(prior, data, observations, args.draws, args.seed, args.hybrid)))
        return
    config = sbikit.TrainConfig(show_progress=False, seed=args.seed, max_epochs=20 if args.quick else None)
    began = time.perf_counter()
    likelihood = sbikit.NLE(prior, training=config, parameter_names=ricker.PARAMETER_NAMES).fit(data)
    nle_seconds = time.perf_counter() - began
    began = time.perf_counter()
    npe = sbikit.NPE(prior, training=config, parameter_names=ricker.PARAMETER_NAMES).fit(data)
    npe_seconds = time.perf_counter() - began
    print(f"Ricker, {args.num_simulations} simulations (seed {args.seed}); NLE trained in {nle_seconds:.0f} s "
          f"(best epoch {likelihood.history['best_epoch']}), NPE in {npe_seconds:.0f} s "
          f"(best epoch {npe.history['best_epoch']}); torch threads {torch.get_num_threads()}")
    print(f"NLE's support: {likelihood!r}\n")
    torch.manual_seed(args.seed + 1)
    theta = prior.sample((args.parameters,))
    print(table(["theta", "zeros (sim)", "zeros (emu)", "outside", "zeros err/tol", "mean err/tol", "var err/tol",
                 "C2ST"], emulator_rows(likelihood, simulator, theta, args.draws, args.seed)))
    print()
    observations = []
    rng = np.random.default_rng(args.seed + 2)
    torch.manual_seed(args.seed + 2)  # the same observations whatever ran before
    truths = [CLASSIC] + list(prior.sample((args.observations - 1,)))
    for truth in truths[: args.observations]:
        observations.append((truth, torch.as_tensor(ricker.simulator(truth.double().numpy(), rng), dtype=torch.float32)))
    print(table(["obs", "method", "C2ST", "truth quantile", "sd / reference", "seconds", "reference s", "warnings"],
                posterior_rows(likelihood, npe, observations, args.draws, args.seed, args.quick)))


if __name__ == "__main__":
    main()
