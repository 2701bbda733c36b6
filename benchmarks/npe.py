r"""Benchmark of sbikit's NPE against sbi's NPE (MAF and NSF) on reference problems.

For each simulator (``two_moons``, ``gaussian_linear``, ``poisson_glm``,
``sinusoid``) and simulation budget
:math:`N`, the script

1. simulates :math:`N` pairs :math:`(\theta_i, x_i)` once with
   :func:`sbikit.simulate` (seeded), so every method trains on the same data;
2. draws :math:`K` held-out observations :math:`x_o \sim p(x | \theta_o)`,
   :math:`\theta_o \sim p(\theta)`, with a separate fixed seed, shared by all methods;
3. trains each method with its default settings, timing the training (from the
   data to a posterior that can be sampled);
4. draws 10,000 posterior samples per observation, timing the sampling, and
   scores them by C2ST (:func:`sbikit.diagnostics.c2st`, the same function for
   every method) against 10,000 exact samples of the reference posterior.

Methods: ``sbikit`` (``sbikit.NPE`` defaults) and, when the optional ``bench``
extra is installed (``pip install sbikit[bench]``, which brings ``sbi``),
``sbi-maf`` (sbi's NPE with its default density estimator) and ``sbi-nsf``,
both with sbi's default training settings, on the CPU. ``sbikit-cuda``, only when named in
``--methods``, is ``sbikit`` trained and sampled on a CUDA device, beside it in the same run;
``sbikit-map``, likewise, is ``sbikit.NPE(prior, bounds="map")``, a box prior mapped onto the
line rather than the flow truncated to it.

Amortized sampling (``--amortized M``, on by default with M = 1,000): for the
first simulator at the largest budget, each method draws 1,000 samples for each
of M held-out observations; sbikit in one call with the observations as a batch,
sbi in its documented loop over the observations (and, reported alongside, sbi's
own ``sample_batched``). Each way of sampling is called once on 20 observations
before it is timed, so that no method pays for first-call set-up, and is then timed
three times; the table gives the median, and the log line all three.

Columns: the mean (and max) C2ST over the observations (0.5 is perfect), the
number of training epochs, the training time in seconds, the sampling rate in
samples per second (all samples over all sampling time), and, where sbi's MAF
ran, the training time as a multiple of MAF's and the C2ST minus MAF's.

Run it from the repository root::

    python benchmarks/npe.py                      # full table: N = 1,000 and 10,000, 5 observations
    python benchmarks/npe.py --quick              # smoke test: N = 500, 1 observation
    python benchmarks/npe.py --num-simulations 1000 --simulators two_moons --observations 5 --seed 1
    python benchmarks/npe.py --methods sbikit --markdown
    python benchmarks/npe.py --methods sbikit sbikit-cuda   # CPU against GPU, on a machine with one

Timings depend on the machine; torch's default number of threads is used.
"""

import argparse
import contextlib
import inspect
import io
import math
import os
import platform
import sys
import time
import torch
import warnings

from collections.abc import Callable
from dataclasses import dataclass

import sbikit

from sbikit.diagnostics import c2st
from sbikit.simulators import gaussian_linear, poisson_glm, sinusoid, two_moons

try:
    import sbi
    from sbi.inference import NPE as SbiNPE
except ImportError:  # the optional `bench` extra is not installed
    sbi = None

SIMULATORS = {"two_moons": two_moons, "gaussian_linear": gaussian_linear, "poisson_glm": poisson_glm,
              "sinusoid": sinusoid}
METHODS = ("sbikit", "sbi-maf", "sbi-nsf")
DEVICE_METHODS = ("sbikit-cuda",)  # sbikit trained and sampled on the GPU: only when asked for
OTHER_METHODS = ("sbikit-map",)  # sbikit with bounds="map", the default before the truncated flow: when asked for
BASELINE = "sbi-maf"
NUM_SAMPLES = 10_000
AMORTIZED_SAMPLES = 1_000
AMORTIZED_REPEATS = 3  # timed calls per method and way of sampling; the median is reported
OBSERVATION_SEED_OFFSET = 1_000_000  # observations never share the training seed
REFERENCE_SEED_OFFSET = 2_000_000


@dataclass
class Row:
    r"""One line of the table: a method trained on one (simulator, N)."""

    simulator: str
    num_simulations: int
    method: str
    c2st_mean: float
    c2st_max: float
    epochs: int
    train_seconds: float
    samples_per_second: float
    train_ratio: float = math.nan  # train time / the baseline's
    c2st_delta: float = math.nan  # C2ST - the baseline's


# Methods: each trains on (prior, data, ...) and returns a Sampler and the number of epochs.


@dataclass
class Sampler:
    r"""How a trained method samples: ``one(n, x_o) -> (n, D)`` for one observation, and
    ``many``, the ways it samples M observations ``X`` at once, by name ("one call",
    "loop", "sample_batched"), each ``(n, X) -> (n, M, D)``."""

    one: Callable
    many: dict


def train_sbikit(prior, data: sbikit.Simulations, seed: int, device: str = "cpu",
                 bounds: str = "truncate") -> tuple[Sampler, int]:
    config = sbikit.TrainConfig(show_progress=False, seed=seed, device=device)
    posterior = sbikit.NPE(prior, bounds=bounds, training=config).fit(data)

    def sample(n: int, x: torch.Tensor) -> torch.Tensor:
        return posterior.sample(n, x=x)

    return Sampler(sample, {"one call": sample}), posterior.history["epochs"]


@contextlib.contextmanager
def quiet_nflows():
    r"""Hides nflows' deprecation warning for ``torch.triangular_solve`` (sbi's MAF/NSF)."""

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated", category=UserWarning)
        yield


class NullTracker:
    r"""Discards sbi's training logs, which by default go to TensorBoard files in ./sbi-logs."""

    log_dir = None

    def log_metric(self, name, value, step=None) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_params(self, params) -> None:
        pass

    def add_figure(self, name, figure, step=None) -> None:
        pass

    def flush(self) -> None:
        pass


def train_sbi(prior, data: sbikit.Simulations, estimator: str) -> tuple[Sampler, int]:
    # sbi takes torch distributions as priors: sbikit.BoxUniform is a torch Independent(Uniform).
    options = {"tracker": NullTracker()} if "tracker" in inspect.signature(SbiNPE).parameters else {}
    inference = SbiNPE(prior=prior, density_estimator=estimator, show_progress_bars=False, **options)
    # sbi prints "Neural network successfully converged ..." even without progress bars.
    with contextlib.redirect_stdout(io.StringIO()), quiet_nflows():
        inference.append_simulations(data.theta, data.x).train(show_train_summary=False)
    posterior = inference.build_posterior()
    epochs = inference.summary["epochs_trained"][-1]

    def sample(n: int, x: torch.Tensor) -> torch.Tensor:
        with quiet_nflows():
            return posterior.sample((n,), x=x, show_progress_bars=False)

    def loop(n: int, xs: torch.Tensor) -> torch.Tensor:
        return torch.stack([sample(n, x) for x in xs], dim=1)

    def batched(n: int, xs: torch.Tensor) -> torch.Tensor:
        with quiet_nflows():
            return posterior.sample_batched((n,), x=xs, show_progress_bars=False)

    many = {"loop": loop}
    if hasattr(posterior, "sample_batched"):
        many["sample_batched"] = batched
    return Sampler(sample, many), int(epochs)


def train(method: str, prior, data: sbikit.Simulations, seed: int) -> tuple[Sampler, int]:
    if method.startswith("sbikit"):
        return train_sbikit(prior, data, seed, "cuda" if method == "sbikit-cuda" else "cpu",
                            "map" if method == "sbikit-map" else "truncate")
    return train_sbi(prior, data, method.removeprefix("sbi-"))


def observations(module, prior, count: int, seed: int) -> torch.Tensor:
    r"""Draws ``count`` observations :math:`(K, L)` from the prior predictive, seeded."""

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + OBSERVATION_SEED_OFFSET)
        theta = prior.sample((count,))
        return module.simulator(theta)


def run_method(method, prior, data, x_obs, references, seed, label) -> tuple[Row, Sampler]:
    torch.manual_seed(seed)
    start = time.perf_counter()
    sampler, epochs = train(method, prior, data, seed)
    train_seconds = time.perf_counter() - start

    scores, sampling_seconds = [], 0.0
    for x_o, reference in zip(x_obs, references):
        start = time.perf_counter()
        samples = sampler.one(NUM_SAMPLES, x_o)
        sampling_seconds += time.perf_counter() - start
        scores.append(c2st(reference, samples, seed=seed).accuracy)
    return Row(
        simulator=label[0],
        num_simulations=label[1],
        method=method,
        c2st_mean=sum(scores) / len(scores),
        c2st_max=max(scores),
        epochs=epochs,
        train_seconds=train_seconds,
        samples_per_second=NUM_SAMPLES * len(x_obs) / sampling_seconds,
    ), sampler


def amortized(samplers: dict[str, Sampler], x_many: torch.Tensor) -> list[list[str]]:
    r"""Times ``AMORTIZED_SAMPLES`` samples for each of the observations ``x_many``,
    per method and way of sampling (the median of ``AMORTIZED_REPEATS`` calls); returns table
    lines (method, how, seconds, samples/s)."""

    lines = []
    for method, sampler in samplers.items():
        for how, many in sampler.many.items():
            many(AMORTIZED_SAMPLES, x_many[:20])  # a warm-up call, the same for every method
            timings = []
            for _ in range(AMORTIZED_REPEATS):
                start = time.perf_counter()
                samples = many(AMORTIZED_SAMPLES, x_many)
                timings.append(time.perf_counter() - start)
            seconds = sorted(timings)[len(timings) // 2]
            if samples.shape[:2] != (AMORTIZED_SAMPLES, len(x_many)):
                raise RuntimeError(f"{method} ({how}) returned samples of shape {tuple(samples.shape)}.")
            lines.append([method, how, f"{seconds:.2f}", f"{samples.shape[0] * samples.shape[1] / seconds:,.0f}"])
            print(f"amortized: {method} ({how}): {seconds:.2f} s for {len(x_many):,} observations (timings "
                  f"{', '.join(f'{t:.2f}' for t in timings)} s)", flush=True)
    return lines


def add_ratios(rows: list[Row]) -> None:
    r"""Fills each row's comparison with the baseline of its (simulator, N)."""

    baselines = {(r.simulator, r.num_simulations): r for r in rows if r.method == BASELINE}
    for row in rows:
        base = baselines.get((row.simulator, row.num_simulations))
        if base is not None:
            row.train_ratio = row.train_seconds / base.train_seconds
            row.c2st_delta = row.c2st_mean - base.c2st_mean


HEADER = ("simulator", "N", "method", "C2ST", "C2ST max", "epochs", "train s", "samples/s",
          f"train / {BASELINE}", f"C2ST - {BASELINE}")


def cells(row: Row) -> list[str]:
    def number(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)

    return [
        row.simulator,
        f"{row.num_simulations:,}",
        row.method,
        f"{row.c2st_mean:.3f}",
        f"{row.c2st_max:.3f}",
        str(row.epochs),
        f"{row.train_seconds:.1f}",
        f"{row.samples_per_second:,.0f}",
        number(row.train_ratio, ".2f"),
        number(row.c2st_delta, "+.3f"),
    ]


def format_table(rows: list[Row], markdown: bool = False) -> str:
    table = [list(HEADER)] + [cells(r) for r in rows]
    if all(math.isnan(r.train_ratio) for r in rows):  # no baseline ran: drop the comparisons
        table = [line[:-2] for line in table]
    return format_lines(table, left={0, 2}, markdown=markdown)


def format_lines(table: list[list[str]], left: set[int], markdown: bool = False) -> str:
    r"""Aligns a header and rows; the ``left`` columns hold text, the others numbers."""

    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]

    def line(values: list[str]) -> str:
        parts = [v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return f"| {' | '.join(parts)} |" if markdown else "  ".join(parts)

    if markdown:
        rule = "|" + "|".join(
            "-" * (w + 1) + ":" if i not in left else ":" + "-" * (w + 1) for i, w in enumerate(widths)
        ) + "|"
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(table[0]), rule] + [line(values) for values in table[1:]])


def progress(row: Row) -> str:
    return (
        f"[{row.simulator}, N={row.num_simulations:,}] {row.method}: C2ST {row.c2st_mean:.3f} "
        f"(max {row.c2st_max:.3f}), trained {row.train_seconds:.1f} s ({row.epochs} epochs), "
        f"{row.samples_per_second:,.0f} samples/s"
    )


def benchmark(simulators, budgets, methods, num_observations, seed, num_amortized=0) -> tuple[list[Row], list]:
    rows, amortized_lines = [], []
    for name in simulators:
        module = SIMULATORS[name]
        prior = module.prior()
        x_obs = observations(module, prior, num_observations, seed)
        references = [
            module.reference_posterior(x_o, NUM_SAMPLES, seed=seed + REFERENCE_SEED_OFFSET + k)
            for k, x_o in enumerate(x_obs)
        ]
        for n in budgets:
            data = sbikit.simulate(module.simulator, prior, num_simulations=n, seed=seed, show_progress=False)
            samplers = {}
            for method in methods:
                row, samplers[method] = run_method(method, prior, data, x_obs, references, seed, (name, n))
                rows.append(row)
                print(progress(row), flush=True)
            if num_amortized and name == simulators[0] and n == max(budgets):
                x_many = observations(module, prior, num_amortized, seed + 1)
                amortized_lines = [[name, f"{n:,}", *line] for line in amortized(samplers, x_many)]
    add_ratios(rows)
    return rows, amortized_lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulators", nargs="+", choices=list(SIMULATORS), default=list(SIMULATORS))
    parser.add_argument("--num-simulations", nargs="+", type=int, default=[1_000, 10_000], metavar="N")
    parser.add_argument("--observations", type=int, default=5, metavar="K",
                        help="held-out observations per simulator (default 5)")
    parser.add_argument("--amortized", type=int, default=1_000, metavar="M",
                        help=f"observations for the amortized-sampling timing, {AMORTIZED_SAMPLES:,} samples "
                             "each (default 1,000; 0 skips it)")
    parser.add_argument("--methods", nargs="+", choices=METHODS + DEVICE_METHODS + OTHER_METHODS, default=list(METHODS),
                        help="methods to run; sbi's need the `bench` extra (default: all available)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the simulations, observations and training")
    parser.add_argument("--markdown", action="store_true", help="print the final table as markdown")
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 500 and 1 observation")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_simulations, args.observations, args.amortized = [500], 1, 20
    if min(args.num_simulations) < 2 or args.observations < 1:
        parser.error("--num-simulations must be at least 2 and --observations at least 1.")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    methods = list(dict.fromkeys(args.methods))
    if sbi is None:
        print("sbi is not installed (pip install sbikit[bench]); showing sbikit only.", flush=True)
        methods = [m for m in methods if m.startswith("sbikit")]
        if not methods:
            sys.exit("no method to run.")
    versions = f"sbikit {sbikit.__version__}, torch {torch.__version__}"
    versions += f", sbi {sbi.__version__}" if sbi is not None else ""
    load = ", load average {:.1f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    print(f"{versions}; Python {platform.python_version()}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs{load}", flush=True)
    print(f"{args.observations} observation(s), {NUM_SAMPLES:,} samples each, seed {args.seed}", flush=True)

    start = time.perf_counter()
    rows, amortized_lines = benchmark(args.simulators, args.num_simulations, methods, args.observations, args.seed,
                                      args.amortized)
    print(flush=True)
    print(format_table(rows, markdown=args.markdown))
    if amortized_lines:
        print(f"\namortized sampling: {AMORTIZED_SAMPLES:,} samples for each of {args.amortized:,} observations\n")
        header = ["simulator", "N", "method", "how", "seconds", "samples/s"]
        print(format_lines([header] + amortized_lines, left={0, 2, 3}, markdown=args.markdown))
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
