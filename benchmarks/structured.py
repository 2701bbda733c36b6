r"""Accuracy of NPE and HierarchicalNPE on structured simulators with exact answers.

- ``hierarchical_gaussian``: groups of 10 to 100 members. C2ST of the global
  posterior p(mu, tau | X) against the grid reference, and of the joint posterior of
  (mu, tau, l_1) (the globals and the first member's local) against the exact joint
  (grid globals, then the normal conditional of the local); and the posterior sd of
  mu against the member count, beside the exact one (tau known, 0.5).
- ``ornstein_uhlenbeck``: C2ST against importance sampling on the exact (Kalman)
  likelihood.
- ``galactic_disk`` (``--only disk``): whether the central 68% and 95% intervals of the
  dark-matter density hold the truth in 68% and 95% of 100 held-out galaxies; C2ST
  against the exact posterior (the likelihood by quadrature) on 10 of them; and the
  posterior's width against the number of stars, beside the exact posterior's.
- ``sir`` and ``lotka_volterra`` (``--only sir``, ``--only lv``): recovery over 100 held-out
  series of varied lengths (30 to 100 days; about 41 irregular times), per parameter: the
  correlation of the posterior mean with the truth, and the median posterior sd over the
  prior sd. Neither has an exact posterior: these simulators are Gillespie jump processes.

Run it from the repository root::

    python benchmarks/structured.py                    # the budgets of issue 7: 20,000 groups, 5,000 series
    python benchmarks/structured.py --quick            # smoke test: small budgets, 2 observations
    python benchmarks/structured.py --only disk        # galactic_disk: calibration over 100 held-out galaxies
    python benchmarks/structured.py --only sir         # sir: recovery over 100 held-out epidemics
    python benchmarks/structured.py --only lv          # lotka_volterra: recovery over 100 held-out series
"""

import argparse
import sys
import time
import torch

import sbikit

from sbikit.diagnostics import c2st
from sbikit.simulators import hierarchical_gaussian as hg
from sbikit.simulators import ornstein_uhlenbeck as ou

NUM_SAMPLES = 5_000


def _score(reference: torch.Tensor, samples: torch.Tensor, seed: int) -> float:
    return c2st(reference, samples, seed=seed).accuracy


def hierarchical(budget: int, num_observations: int, seed: int) -> list[str]:
    lines = []
    model = hg.model(num_members=(10, 100))
    data = sbikit.simulate(model, num_simulations=budget, seed=seed, show_progress=False)
    config = sbikit.TrainConfig(show_progress=False, seed=seed)
    start = time.perf_counter()
    joint = sbikit.HierarchicalNPE(model, training=config).fit(data)
    seconds = time.perf_counter() - start
    test = sbikit.simulate(model, num_simulations=num_observations, seed=seed + 1_000_000, show_progress=False)
    global_scores, joint_scores = [], []
    for k in range(num_observations):
        x = test.x[k][test.mask[k]]
        reference = hg.reference_posterior(x, NUM_SAMPLES, seed=seed + k)
        # a seed of its own: the same seed as the globals' would reuse their random stream and
        # make the reference's locals depend on its global draws (C2ST 0.67 for an exact posterior)
        local = hg.local_posterior(reference, x[0, 0], seed=seed + k + 500_000)
        g, l = joint.sample_joint(NUM_SAMPLES, x=x)
        global_scores.append(_score(reference, g, seed))
        joint_scores.append(_score(torch.cat([reference, local], 1), torch.cat([g, l[:, 0]], 1), seed))
        print(f"hierarchical_gaussian observation {k}: {len(x)} members, C2ST global {global_scores[-1]:.3f}, "
              f"joint {joint_scores[-1]:.3f}", flush=True)
    lines.append(f"| hierarchical_gaussian, global (mu, tau) | {budget:,} | {sum(global_scores) / len(global_scores):.3f} "
                 f"| {max(global_scores):.3f} | {seconds:.0f} |")
    lines.append(f"| hierarchical_gaussian, joint (mu, tau, l_1) | {budget:,} | "
                 f"{sum(joint_scores) / len(joint_scores):.3f} | {max(joint_scores):.3f} | (same) |")
    return lines


def widths(budget: int, seed: int) -> list[str]:
    r"""The posterior sd of mu with tau known (0.5) against the member count, beside the exact sd."""

    model = hg.model(tau=0.5, num_members=(10, 100))
    data = sbikit.simulate(model, num_simulations=budget, seed=seed, show_progress=False)
    posterior = sbikit.NPE(model.prior, training=sbikit.TrainConfig(show_progress=False, seed=seed)).fit(data)
    generator = torch.Generator().manual_seed(seed)
    lines = []
    for members in (10, 20, 50, 100):
        sds, exact = [], []
        for _ in range(20):
            mu = torch.randn(1, generator=generator)
            x = mu + (0.5**2 + hg.NOISE**2) ** 0.5 * torch.randn(members, 1, generator=generator)
            sds.append(float(posterior.sample(4_000, x=x).std()))
            exact.append(float(hg.mean_posterior(x, 0.5).scale))
        mean_sd, mean_exact = sum(sds) / len(sds), sum(exact) / len(exact)
        lines.append(f"| {members} | {mean_sd:.4f} | {mean_exact:.4f} | {mean_sd / mean_exact:.3f} |")
    return lines


def ornstein_uhlenbeck(budget: int, num_observations: int, seed: int) -> list[str]:
    model = ou.model()
    data = sbikit.simulate(model, num_simulations=budget, seed=seed, show_progress=False)
    start = time.perf_counter()
    posterior = sbikit.NPE(model.prior, training=sbikit.TrainConfig(show_progress=False, seed=seed)).fit(data)
    seconds = time.perf_counter() - start
    test = sbikit.simulate(model, num_simulations=num_observations, seed=seed + 1_000_000, show_progress=False)
    scores = []
    for k in range(num_observations):
        reference = ou.reference_posterior(test.x[k], NUM_SAMPLES, seed=seed + k)
        scores.append(_score(reference, posterior.sample(NUM_SAMPLES, x=test.x[k]), seed))
        print(f"ornstein_uhlenbeck observation {k}: C2ST {scores[-1]:.3f}", flush=True)
    return [f"| ornstein_uhlenbeck | {budget:,} | {sum(scores) / len(scores):.3f} | {max(scores):.3f} | {seconds:.0f} |"]


def galactic_disk(budget: int, num_test: int, num_exact: int, seed: int) -> tuple[list[str], list[str]]:
    r"""Calibration of the dark-matter density over held-out galaxies; for the first
    ``num_exact`` of them, C2ST against the exact posterior; and the width of the dark-matter
    density's posterior against the number of stars, NPE's beside the exact one."""

    from sbikit.simulators import galactic_disk as gd

    model = gd.model(num_members=(500, 2_000))
    data = sbikit.simulate(model, num_simulations=budget, seed=seed, show_progress=False)
    start = time.perf_counter()
    posterior = sbikit.NPE(model.prior, training=sbikit.TrainConfig(show_progress=False, seed=seed)).fit(data)
    seconds = time.perf_counter() - start
    test = sbikit.simulate(model, num_simulations=num_test, seed=seed + 1_000_000, show_progress=False)
    print(f"galactic_disk: {budget:,} galaxies, trained in {seconds:.0f} s", flush=True)

    def half_width(rho: torch.Tensor) -> float:
        spread = torch.quantile(rho.double(), torch.tensor([0.16, 0.84], dtype=torch.float64))
        return float(spread[1] - spread[0]) / 2

    inside68 = inside95 = 0
    counts = (250, 500, 1_000, 1_500)
    npe_widths = {n: [] for n in counts}
    relative = {n: [] for n in counts}
    exact_widths = {n: [] for n in counts}
    ratios = {n: [] for n in counts}
    scores = []
    for k in range(num_test):
        stars = test.x[k][test.mask[k]]
        truth = float(test.theta[k, 1])
        samples = posterior.sample(NUM_SAMPLES, x=stars)
        q = torch.quantile(samples[:, 1], torch.tensor([0.025, 0.16, 0.84, 0.975]))
        inside68 += int(q[1] <= truth <= q[2])
        inside95 += int(q[0] <= truth <= q[3])
        if k < num_exact:
            reference = gd.reference_posterior(stars, NUM_SAMPLES, seed=seed + k)
            scores.append(_score(reference, samples, seed))
            print(f"galactic_disk galaxy {k} ({len(stars)} stars): C2ST {scores[-1]:.3f}; sd of rho_DM "
                  f"{float(samples[:, 1].std()):.4f} (exact {float(reference[:, 1].std()):.4f}), truth {truth:.4f}",
                  flush=True)
        for n in counts:
            if n <= len(stars):
                width = half_width(posterior.sample(2_000, x=stars[:n])[:, 1])
                npe_widths[n].append(width)
                relative[n].append(width / max(truth, 1e-3))
                if k < num_exact:
                    exact = half_width(gd.reference_posterior(stars[:n], 2_000, seed=seed + k)[:, 1])
                    exact_widths[n].append(exact)
                    ratios[n].append(width / exact)
    rows = [f"| galactic_disk, {num_test} held-out galaxies | {budget:,} | 68%: {100 * inside68 / num_test:.0f}% "
            f"| 95%: {100 * inside95 / num_test:.0f}% | {seconds:.0f} |"]
    if scores:
        rows.append(f"| galactic_disk, C2ST against the exact posterior, {len(scores)} galaxies | {budget:,} "
                    f"| mean {sum(scores) / len(scores):.3f} | max {max(scores):.3f} | |")

    def median(values: list[float]) -> str:
        return f"{torch.tensor(values).median():.4f}" if values else "-"

    width_rows = [
        f"| {n:,} | {median(relative[n])} | {median(npe_widths[n])} | {len(npe_widths[n])} | {median(exact_widths[n])} "
        f"| {median(ratios[n])} | {len(ratios[n])} |"
        for n in counts if npe_widths[n]
    ]
    return rows, width_rows


def recovery(name: str, module, budget: int, num_test: int, seed: int) -> list[str]:
    r"""Trains NPE with the default settings on ``budget`` series; over ``num_test`` held-out
    series, the correlation of each parameter's posterior mean with the truth, and the median
    ratio of the posterior sd to the prior sd."""

    model = module.model()
    start = time.perf_counter()
    data = sbikit.simulate(model, num_simulations=budget, seed=seed, show_progress=False)
    simulation_seconds = time.perf_counter() - start
    start = time.perf_counter()
    config = sbikit.TrainConfig(show_progress=False, seed=seed)
    posterior = sbikit.NPE(model.prior, parameter_names=module.PARAMETER_NAMES, training=config).fit(data)
    seconds = time.perf_counter() - start
    test = sbikit.simulate(model, num_simulations=num_test, seed=seed + 1_000_000, show_progress=False)
    valid = test.valid
    means, sds = [], []
    for x, present in zip(test.x[valid], test.mask[valid]):
        samples = posterior.sample(2_000, x=x[present])
        means.append(samples.mean(0))
        sds.append(samples.std(0))
    means, sds, truth = torch.stack(means), torch.stack(sds), test.theta[valid]
    prior_sd = model.prior.sample((100_000,)).std(0)
    lengths = test.mask[valid].sum(1)
    print(f"{name}: {budget:,} series simulated in {simulation_seconds:.0f} s ({len(data.failures)} failed), "
          f"trained in {seconds:.0f} s; {int(valid.sum())} held-out series of {int(lengths.min())} to "
          f"{int(lengths.max())} steps", flush=True)
    rows = []
    for j, parameter in enumerate(module.PARAMETER_NAMES):
        r = float(torch.corrcoef(torch.stack([means[:, j], truth[:, j]]))[0, 1])
        contraction = float((sds[:, j] / prior_sd[j]).median())
        rows.append(f"| {name} | {parameter} | {budget:,} | {int(valid.sum())} | {r:.3f} | {contraction:.3f} "
                    f"| {seconds:.0f} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small budgets and 2 observations")
    parser.add_argument("--observations", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["hierarchical", "ou", "disk", "sir", "lv"], help="run one part")
    parser.add_argument("--disk-budget", type=int, default=4_000, metavar="N", help="galaxies to train on")
    parser.add_argument("--series-budget", type=int, default=5_000, metavar="N",
                        help="series to train on for sir and lv")
    args = parser.parse_args(argv)
    if args.only in ("sir", "lv"):
        from sbikit.simulators import lotka_volterra, sir

        name, module = ("sir", sir) if args.only == "sir" else ("lotka_volterra", lotka_volterra)
        budget, tests = (args.series_budget, 100) if not args.quick else (500, 10)
        print(f"sbikit {sbikit.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        rows = recovery(name, module, budget, tests, args.seed)
        print("\n| task | parameter | simulations | held-out series | corr(posterior mean, truth) "
              "| posterior sd / prior sd (median) | train s |\n|:--|:--|--:|--:|--:|--:|--:|")
        print("\n".join(rows))
        return
    if args.only == "disk":
        budget, tests, exact = (args.disk_budget, 100, 10) if not args.quick else (300, 10, 2)
        rows, width_rows = galactic_disk(budget, tests, exact, args.seed)
        print("\n| task | simulations | central 68% holds the truth | central 95% | train s |\n|:--|--:|--:|--:|--:|")
        print("\n".join(rows))
        print("\nposterior half-width (16-84%) of the dark-matter density: NPE's over the true density "
              "(at least 0.001), and in M_sun/pc^3, median over galaxies; the exact posterior's on the first "
              "galaxies, and NPE's over the exact per galaxy\n")
        print("| stars | NPE, relative | NPE | galaxies | exact | NPE / exact | galaxies |\n"
              "|--:|--:|--:|--:|--:|--:|--:|")
        print("\n".join(width_rows))
        return
    groups, series, k = (20_000, 5_000, args.observations) if not args.quick else (1_000, 500, 2)
    print(f"sbikit {sbikit.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    start = time.perf_counter()
    rows = hierarchical(groups, k, args.seed) if args.only in (None, "hierarchical") else []
    rows += ornstein_uhlenbeck(series, k, args.seed) if args.only in (None, "ou") else []
    width_rows = widths(groups, args.seed) if args.only in (None, "hierarchical") else []
    print("\n| task | simulations | C2ST mean | C2ST max | train s |\n|:--|--:|--:|--:|--:|")
    print("\n".join(rows))
    if width_rows:
        print("\nposterior sd of mu (tau = 0.5 known), mean over 20 groups per member count\n")
        print("| members | NPE sd | exact sd | ratio |\n|--:|--:|--:|--:|")
        print("\n".join(width_rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
