r"""Benchmark of sbikit's NLE: the emulator, the MCMC posterior over i.i.d. trials, and its speed.

1. **Emulator.** On ``gaussian_linear`` and ``two_moons``, NLE trains on :math:`N`
   simulations (10,000 by default); for 5 fixed parameters :math:`\theta_k` (prior
   draws, seeded), the C2ST between 10,000 draws of ``likelihood.sample`` and 10,000
   simulator draws at :math:`\theta_k` (0.5 is perfect); beside it, with the ``bench``
   extra, the same C2ST for sbi's NLE (its default density estimator and training) on
   the same simulations, and both training times.
2. **Posterior.** On ``gaussian_linear``, trained on 10,000, 100,000 and 1,000,000 simulations
   (``--posterior-simulations``), with 1, 10 and 100 i.i.d. trials of one parameter,
   the C2ST between 10,000 MCMC draws and the analytic posterior
   :math:`\mathcal{N}(\sum_i x_i / (n + 1), 0.1 / (n + 1) I)`, and the posterior sd
   (the mean over dimensions) against that theory. Beside it, the floor: the C2ST of the
   posterior under a least-squares fit of the exact model class, :math:`x \sim
   \mathcal{N}(a + C\theta, \Sigma)`, to the same simulations. Its error in the mean of
   :math:`x` does not shrink with the trials while the posterior does, so with 100 trials
   no estimator learned from :math:`N` simulations can be expected below it.
3. **A posterior with four modes.** On ``slcp`` (five parameters; four i.i.d. Gaussian draws
   whose scales are squares, so the signs of two parameters leave the likelihood unchanged),
   NLE trains on :math:`N` simulations of one draw :math:`(2,)`; for 5 observations (the
   four draws at prior parameters, seeded) the MCMC posterior over the four trials, against
   the exact reference posterior (``simulators/slcp.py``): the C2ST, the smallest share of
   the draws among the four sign quadrants of :math:`(\theta_3, \theta_4)` (exactly 0.25
   each), the largest R-hat and whether a convergence warning was raised; beside it, with
   the ``bench`` extra, sbi's NLE on the same simulations with its default MCMC.
4. **Speed.** The time for 1,000 posterior draws (from the observation to the draws:
   initialization, warm-up and sampling) on ``two_moons`` (one observation) and on
   ``gaussian_linear`` (10 trials), for sbikit and, with the ``bench`` extra, sbi's NLE
   (its default density estimator and training) with its default MCMC (vectorized slice
   sampling, 20 chains, 200 warm-up steps), trained on the same data in the same run;
   with the ratio and both C2STs against the reference posterior (the least processor
   time of 3 alternating runs, and their mean C2ST).

Run it from the repository root::

    python benchmarks/nle.py                 # the full tables
    python benchmarks/nle.py --quick         # smoke test: N = 1,000, 1 parameter, 2,000 draws
    python benchmarks/nle.py --markdown
    python benchmarks/nle.py --simulators gaussian_linear --posterior-simulations 1000000 --device cuda
    python benchmarks/nle.py --emulator-seeds 0 1 2 3 --methods sbikit   # the emulator table only, per seed
    python benchmarks/nle.py --only-slcp     # the SLCP posterior table only

Timings depend on the machine; torch's default number of threads is used. The speed table
counts processor time (all threads of the process), so that other work on the machine does
not count; for a fair ratio run it with one thread (``OMP_NUM_THREADS=1``).
"""

import argparse
import contextlib
import functools
import io
import math
import os
import platform
import sys
import time
import torch
import warnings

from pathlib import Path

import sbikit

from sbikit.diagnostics import c2st
from sbikit.simulators import gaussian_linear, slcp, two_moons

sys.path.insert(0, str(Path(__file__).resolve().parent))
from npe import NullTracker, format_lines, quiet_nflows  # noqa: E402 - the shared table and sbi helpers

try:
    import sbi
    from sbi.inference import NLE as SbiNLE
except ImportError:  # the optional `bench` extra is not installed
    sbi = None

SIMULATORS = {"gaussian_linear": gaussian_linear, "two_moons": two_moons}
TRIALS = (1, 10, 100)
TIMED_DRAWS = 1_000
THETA_SEED_OFFSET = 1_000_000


def train(module, num_simulations: int, seed: int, device: str = "cpu") -> tuple[object, sbikit.Simulations, float]:
    prior = module.prior()
    data = sbikit.simulate(module.simulator, prior, num_simulations=num_simulations, seed=seed, show_progress=False)
    start = time.perf_counter()
    config = sbikit.TrainConfig(show_progress=False, seed=seed, device=device)
    likelihood = sbikit.NLE(prior, training=config).fit(data)
    return likelihood, data, time.perf_counter() - start


def fixed_parameters(prior, count: int, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + THETA_SEED_OFFSET)
        return prior.sample((count,))


def emulator_rows(likelihoods: dict, sbi_models: dict, num_parameters: int, num_draws: int,
                  seed: int) -> list[list[str]]:
    rows = []
    for name, (likelihood, _, seconds) in likelihoods.items():
        module = SIMULATORS[name]
        for k, theta in enumerate(fixed_parameters(module.prior(), num_parameters, seed)):
            torch.manual_seed(seed + k)
            true = module.simulator(theta.expand(num_draws, -1))
            fake = likelihood.sample(num_draws, theta=theta)
            score = c2st(true, fake, seed=seed).accuracy
            row = [name, str(k), ", ".join(f"{v:+.2f}" for v in theta.tolist()), f"{score:.3f}", f"{seconds:.0f}"]
            line = f"emulator {name} theta_{k}: C2ST {score:.3f}"
            if name in sbi_models:
                _, estimator, sbi_seconds = sbi_models[name]
                torch.manual_seed(seed + k)
                with torch.no_grad():
                    sbi_fake = estimator.sample(torch.Size([num_draws]), condition=theta[None])[:, 0]
                sbi_score = c2st(true, sbi_fake, seed=seed).accuracy
                row += [f"{sbi_score:.3f}", f"{sbi_seconds:.0f}"]
                line += f", sbi {sbi_score:.3f}"
            rows.append(row)
            print(line, flush=True)
    return rows


def analytic(trials: torch.Tensor) -> torch.distributions.Distribution:
    n = len(trials)
    variance = gaussian_linear.PRIOR_VARIANCE * gaussian_linear.NOISE_VARIANCE / (
        gaussian_linear.NOISE_VARIANCE + n * gaussian_linear.PRIOR_VARIANCE
    )
    mean = variance * trials.sum(0) / gaussian_linear.NOISE_VARIANCE
    return torch.distributions.Independent(torch.distributions.Normal(mean, math.sqrt(variance)), 1)


def gaussian_trials(count: int, seed: int) -> torch.Tensor:
    theta = fixed_parameters(gaussian_linear.prior(), 1, seed + 7)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + count)
        return gaussian_linear.simulator(theta.expand(count, -1))


def quietly(function, *args):
    r"""Runs ``function``, counting the RuntimeWarnings (R-hat, ESS) instead of printing them."""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = function(*args)
    return result, sum(issubclass(w.category, RuntimeWarning) for w in caught)


def sbi_draws(build_posterior, num_draws: int, x: torch.Tensor) -> torch.Tensor:
    r"""``num_draws`` from the sbi posterior that ``build_posterior()`` returns, at ``x``, with its
    progress bars, nflows' messages and warnings silenced (building it is silenced too)."""

    with quiet_nflows(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_posterior().sample((num_draws,), x=x, show_progress_bars=False)


def linear_gaussian_fit(data: sbikit.Simulations, trials: torch.Tensor) -> torch.distributions.Distribution:
    r"""The posterior of ``trials`` under the model class that is exactly right for gaussian_linear,
    :math:`x \sim \mathcal{N}(a + C\theta, \Sigma)`, fitted to ``data`` by least squares: what an
    estimator that knew the model's form could reach with these simulations, the floor against
    which NLE's C2ST is read (the fit's error in the mean of x does not shrink with the trials,
    while the posterior does)."""

    design = torch.cat([torch.ones(len(data), 1), data.theta], 1).double()
    solution = torch.linalg.lstsq(design, data.x.double()).solution
    intercept, slope = solution[0], solution[1:].T
    residual = data.x.double() - design @ solution
    noise = torch.linalg.inv(residual.T @ residual / (len(data) - design.shape[1]))
    precision = torch.eye(data.theta.shape[1], dtype=torch.float64) / gaussian_linear.PRIOR_VARIANCE
    precision = precision + len(trials) * slope.T @ noise @ slope
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (slope.T @ noise @ (trials.double() - intercept).sum(0))
    return torch.distributions.MultivariateNormal(mean, covariance)


def posterior_rows(likelihood, data: sbikit.Simulations, num_draws: int, seed: int) -> list[list[str]]:
    rows, num_simulations = [], len(data)
    for count in TRIALS:
        trials = gaussian_trials(count, seed)
        exact = analytic(trials)
        torch.manual_seed(seed)
        floor = c2st(exact.sample((num_draws,)), linear_gaussian_fit(data, trials).sample((num_draws,)).float(),
                     seed=seed).accuracy
        torch.manual_seed(seed)
        posterior = likelihood.posterior(trials, sbikit.MCMCConfig(show_progress=False))
        start = time.perf_counter()
        samples, warned = quietly(posterior.sample, num_draws)
        seconds = time.perf_counter() - start
        score = c2st(exact.sample((num_draws,)), samples, seed=seed).accuracy
        theory = float(exact.stddev.mean())
        history = posterior.history
        rows.append([f"{num_simulations:,}", str(count), f"{score:.3f}", f"{floor:.3f}", f"{float(samples.std(0).mean()):.4f}", f"{theory:.4f}",
                     f"{float(samples.std(0).mean()) / theory:.3f}", history["sampler"],
                     f"{max(history['r_hat']):.3f}", f"{min(history['ess_bulk']):.0f}", f"{seconds:.2f}",
                     "yes" if warned else "no"])
        print(f"posterior, N = {num_simulations:,}, {count} trial(s): C2ST {score:.3f} (floor {floor:.3f}), sd {rows[-1][4]} "
              f"(theory {theory:.4f})", flush=True)
    return rows


def quadrants(samples: torch.Tensor) -> torch.Tensor:
    r"""The shares of ``samples`` in the four sign quadrants of :math:`(\theta_3, \theta_4)`."""

    signs = (samples[:, 2] > 0).long() * 2 + (samples[:, 3] > 0).long()
    return torch.bincount(signs, minlength=4).double() / len(samples)


def slcp_rows(num_simulations: int, count: int, num_draws: int, methods: list[str], seed: int,
              device: str = "cpu") -> list[list[str]]:
    r"""The SLCP posterior table: NLE on one-draw simulations, the posterior of 4 trials at each
    of ``count`` observations against the exact reference, with sbi's NLE beside it if asked."""

    prior = slcp.prior()
    one_draw = functools.partial(slcp.simulator, num_draws=1)
    data = sbikit.simulate(one_draw, prior, num_simulations=num_simulations, seed=seed, show_progress=False)
    config = sbikit.TrainConfig(show_progress=False, seed=seed, device=device)
    likelihood = sbikit.NLE(prior, training=config).fit(data)
    sbi_posterior = None
    if "sbi" in methods:
        inference, _, _ = train_sbi(slcp, data, seed)
        sbi_posterior = inference.build_posterior()
    rows = []
    for k, theta in enumerate(fixed_parameters(prior, count, seed)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + k)
            trials = slcp.simulator(theta).reshape(slcp.NUM_DRAWS, 2)
        reference = slcp.reference_posterior(trials, num_draws, seed=seed + k)
        torch.manual_seed(seed + k)
        start = time.perf_counter()
        posterior = likelihood.posterior(trials, sbikit.MCMCConfig(show_progress=False))
        samples, warned = quietly(posterior.sample, num_draws)
        seconds = time.perf_counter() - start
        score = c2st(reference, samples, seed=seed).accuracy
        row = [str(k), ", ".join(f"{v:+.2f}" for v in theta.tolist()), f"{score:.3f}",
               f"{float(quadrants(samples).min()):.3f}", f"{max(posterior.history['r_hat']):.3f}",
               "yes" if warned else "no", f"{seconds:.1f}"]
        line = f"slcp observation {k}: C2ST {score:.3f}, smallest quadrant {row[3]}"
        if sbi_posterior is not None:
            torch.manual_seed(seed + k)
            start = time.perf_counter()
            sbi_samples = sbi_draws(lambda: sbi_posterior, num_draws, trials)
            sbi_seconds = time.perf_counter() - start
            sbi_score = c2st(reference, sbi_samples.float(), seed=seed).accuracy
            row += [f"{sbi_score:.3f}", f"{float(quadrants(sbi_samples).min()):.3f}", f"{sbi_seconds:.1f}"]
            line += f"; sbi {sbi_score:.3f}, {row[-2]}"
        rows.append(row)
        print(line, flush=True)
    return rows


def speed_cases(likelihoods: dict, seed: int) -> list[tuple[str, object, torch.Tensor, torch.Tensor]]:
    r"""(label, simulator name, observation, reference draws) for the timing."""

    cases = []
    if "two_moons" in likelihoods:
        x_o = two_moons.simulator(fixed_parameters(two_moons.prior(), 1, seed + 3))[0]
        cases.append(("two_moons, 1 observation", "two_moons", x_o,
                      two_moons.reference_posterior(x_o, 10_000, seed=seed)))
    if "gaussian_linear" in likelihoods:
        trials = gaussian_trials(10, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reference = analytic(trials).sample((10_000,))
        cases.append(("gaussian_linear, 10 trials", "gaussian_linear", trials, reference))
    return cases


def train_sbi(module, data: sbikit.Simulations, seed: int) -> tuple[object, object, float]:
    r"""sbi's NLE trained on ``data`` from torch's global seed ``seed``: the inference object, its
    density estimator and the seconds it took."""

    torch.manual_seed(seed)
    start = time.perf_counter()
    inference = SbiNLE(prior=module.prior(), show_progress_bars=False, tracker=NullTracker())
    with contextlib.redirect_stdout(io.StringIO()), quiet_nflows():
        estimator = inference.append_simulations(data.theta, data.x).train(show_train_summary=False)
    return inference, estimator, time.perf_counter() - start


def speed_rows(likelihoods: dict, sbi_models: dict, seed: int, repeats: int = 3) -> list[list[str]]:
    r"""Each method's processor time (``time.process_time``, every thread of this process) for
    1,000 draws from the observation, sbikit and sbi (where ``sbi_models`` has the simulator)
    alternating, the least of ``repeats`` runs (seeds ``seed + r``), with the mean C2ST over the runs."""

    rows = []
    for label, name, x_o, reference in speed_cases(likelihoods, seed):
        likelihood, _, _ = likelihoods[name]
        methods = ["sbikit", "sbi"] if name in sbi_models else ["sbikit"]
        runs = {method: [] for method in methods}
        for r in range(repeats):
            torch.manual_seed(seed + r)
            start = time.process_time()
            posterior = likelihood.posterior(x_o, sbikit.MCMCConfig(show_progress=False))
            samples, warned = quietly(posterior.sample, TIMED_DRAWS)
            seconds = time.process_time() - start
            runs["sbikit"].append((seconds, c2st(reference[:TIMED_DRAWS], samples, seed=seed).accuracy, warned))
            if "sbi" in methods:
                torch.manual_seed(seed + r)
                start = time.process_time()
                sbi_samples = sbi_draws(sbi_models[name][0].build_posterior, TIMED_DRAWS, x_o)
                seconds = time.process_time() - start
                runs["sbi"].append((seconds, c2st(reference[:TIMED_DRAWS], sbi_samples, seed=seed).accuracy, 0))
        timings = {method: (min(t for t, _, _ in result), sum(c for _, c, _ in result) / len(result),
                            ("yes" if any(w for _, _, w in result) else "no") if method == "sbikit" else "-")
                   for method, result in runs.items()}
        base = timings.get("sbi")
        for method, (seconds, score, warned) in timings.items():
            ratio = f"{base[0] / seconds:.1f}x" if base is not None and method == "sbikit" else "-"
            rows.append([label, method, f"{seconds:.2f}", ratio, f"{score:.3f}", warned])
            scores = ", ".join(f"{c:.3f}" for _, c, _ in runs[method])
            print(f"speed {label} {method}: {seconds:.2f} s (least of {repeats}), C2ST {scores}", flush=True)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulators", nargs="+", choices=list(SIMULATORS), default=list(SIMULATORS))
    parser.add_argument("--num-simulations", type=int, default=10_000, metavar="N")
    parser.add_argument("--posterior-simulations", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        metavar="N",
                        help="training budgets for the posterior table (default 10,000, 100,000 and 1,000,000: "
                             "with 100 trials the posterior is 10x narrower than one trial's, and the surrogate's "
                             "statistical error in the mean of x, about sd(x) / sqrt(N / 11) in 10-D, must be "
                             "small against it; see the floor column)")
    parser.add_argument("--parameters", type=int, default=5, help="fixed parameters for the emulator (default 5)")
    parser.add_argument("--slcp-observations", type=int, default=5, metavar="K",
                        help="observations in the SLCP posterior table (default 5; 0 leaves the table out)")
    parser.add_argument("--only-slcp", action="store_true", help="the SLCP posterior table alone")
    parser.add_argument("--draws", type=int, default=10_000, help="draws per C2ST (default 10,000)")
    parser.add_argument("--methods", nargs="+", choices=("sbikit", "sbi"), default=["sbikit", "sbi"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--emulator-seeds", type=int, nargs="+", metavar="S",
                        help="the emulator table only, once per seed (the simulations, the training and the fixed "
                             "parameters all change with it), with the largest C2ST per simulator")
    parser.add_argument("--device", default="cpu",
                        help="where sbikit trains and evaluates its networks, e.g. cuda (sbi stays on the CPU)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 1,000, 1 parameter, 2,000 draws")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_simulations, args.parameters, args.draws = 1_000, 1, 2_000
        args.posterior_simulations = [1_000]
        args.slcp_observations = min(args.slcp_observations, 1)
    return args


def emulator_seeds(args, methods: list[str]) -> None:
    r"""Prints the emulator table for each of ``args.emulator_seeds``, then the largest C2ST per
    simulator and method over all of them and how many exceed 0.55."""

    rows = []
    for seed in args.emulator_seeds:
        likelihoods = {name: train(SIMULATORS[name], args.num_simulations, seed, args.device)
                       for name in args.simulators}
        sbi_models = ({name: train_sbi(SIMULATORS[name], data, seed) for name, (_, data, _) in likelihoods.items()}
                      if "sbi" in methods else {})
        rows += [[str(seed)] + row for row in emulator_rows(likelihoods, sbi_models, args.parameters, args.draws, seed)]
    sbi_columns = len(rows[0]) > 6
    header = ["seed", "simulator", "k", "theta_k", "C2ST", "train s"]
    header += ["sbi C2ST", "sbi train s"] if sbi_columns else []
    print("\nemulator: C2ST of likelihood.sample against the simulator at fixed parameters, per seed\n")
    print(format_lines([header] + rows, left={1, 3}, markdown=args.markdown))
    print()
    for name in args.simulators:
        for label, column in (("sbikit", 4), ("sbi", 6)) if sbi_columns else (("sbikit", 4),):
            scores = [float(row[column]) for row in rows if row[1] == name]
            print(f"{name}, {label}: largest C2ST {max(scores):.3f}; {sum(c > 0.55 for c in scores)} of "
                  f"{len(scores)} above 0.55", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    methods = list(args.methods)
    if sbi is None and "sbi" in methods:
        print("sbi is not installed (pip install sbikit[bench]); timing sbikit only.", flush=True)
        methods.remove("sbi")
    versions = f"sbikit {sbikit.__version__}, torch {torch.__version__}"
    versions += f", sbi {sbi.__version__}" if sbi is not None else ""
    load = ", load average {:.1f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    print(f"{versions}; Python {platform.python_version()}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs{load}; N = {args.num_simulations:,}, seed {args.seed}", flush=True)
    started = time.perf_counter()
    if args.emulator_seeds:
        emulator_seeds(args, methods)
        print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)
        return
    if args.only_slcp:
        args.simulators = []
    likelihoods = {name: train(SIMULATORS[name], args.num_simulations, args.seed, args.device)
                   for name in args.simulators}

    sbi_models = ({name: train_sbi(SIMULATORS[name], data, args.seed) for name, (_, data, _) in likelihoods.items()}
                  if "sbi" in methods else {})
    emulator = emulator_rows(likelihoods, sbi_models, args.parameters, args.draws, args.seed)
    header = ["simulator", "k", "theta_k", "C2ST", "train s"] + (["sbi C2ST", "sbi train s"] if sbi_models else [])
    tables = [("emulator: C2ST of likelihood.sample against the simulator at fixed parameters (sbi: its NLE on "
               "the same simulations)", header, emulator, {0, 2})] if likelihoods else []
    if "gaussian_linear" in likelihoods:
        posterior = []
        for n in args.posterior_simulations:
            likelihood, data, _ = (likelihoods["gaussian_linear"] if n == args.num_simulations
                                   else train(gaussian_linear, n, args.seed, args.device))
            posterior += posterior_rows(likelihood, data, args.draws, args.seed)
        tables.append(("posterior on gaussian_linear: MCMC draws against the analytic posterior; the floor is "
                       "the C2ST of a least-squares fit of the exact model class to the same simulations",
                       ["N", "trials", "C2ST", "floor", "sd", "sd theory", "sd / theory", "sampler", "R-hat max", "ESS min",
                        "seconds", "warned"], posterior, {7, 11}))
    if args.slcp_observations:
        rows = slcp_rows(args.num_simulations, args.slcp_observations, args.draws, methods, args.seed, args.device)
        header = ["k", "theta_k", "C2ST", "smallest quadrant", "R-hat max", "warned", "seconds"]
        header += ["sbi C2ST", "sbi smallest quadrant", "sbi seconds"] if "sbi" in methods else []
        tables.append(("posterior on slcp (4 trials, four modes): MCMC draws against the exact reference; each "
                       "sign quadrant of (theta_3, theta_4) holds 0.25", header, rows, {1, 5}))
    if likelihoods:
        speed = speed_rows(likelihoods, sbi_models, args.seed)
        tables.append((f"speed: {TIMED_DRAWS:,} posterior draws, from the observation (sbi: its default MCMC)",
                       ["case", "method", "CPU s", "sbi / sbikit", "C2ST", "warned"], speed, {0, 1, 5}))
    for title, header, rows, left in tables:
        print(f"\n{title}\n")
        print(format_lines([header] + rows, left=left, markdown=args.markdown))
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
