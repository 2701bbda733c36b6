r"""Training and sampling times on the CPU and on a CUDA device, on the same simulations.

The simulations are made once, in advance, and only ``fit`` and the sampling are timed
(wall clock, with the device synchronized), so that the table compares the devices and not
the simulators. Each case runs on every device named in ``--devices``:

- ``NPE fit``: NPE (the default flow and training) on ``two_moons`` and on ``gaussian_linear``.
- ``NPE sample``: 100,000 posterior draws at one observation, and 1,000 draws at each of
  100 observations (amortized: one network call per batch of observations).
- ``NLE fit``: NLE on ``gaussian_linear``.
- ``NLE emulate``: 100,000 emulator draws at one parameter.
- ``NLE posterior``: 1,000 MCMC draws given 10 i.i.d. trials (initialization, warm-up and
  sampling).

Beside each time, what the result means, so that a fast but wrong device shows: for NPE the
posterior mean's distance from the observation's exact posterior mean (``gaussian_linear``),
for NLE the MCMC posterior's sd over the analytic one. Training with ``--batch-size`` larger
than the automatic one (at most 2,048 rows) is where a GPU can gain.

Run it from the repository root::

    python benchmarks/devices.py                           # cpu and cuda, where torch sees one
    python benchmarks/devices.py --quick                   # smoke test: 2,000 simulations
    python benchmarks/devices.py --simulations 100000 --batch-size 8192 --markdown

Timings depend on the machine and on torch's number of threads, which the header prints.
"""

import argparse
import math
import platform
import sys
import time
import torch
import warnings

from pathlib import Path

import sbikit

from sbikit.simulators import gaussian_linear, two_moons

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nle import analytic, gaussian_trials  # noqa: E402 - the analytic posterior over trials
from npe import format_lines  # noqa: E402 - the shared table


def timed(function, device: str):
    r"""Runs ``function`` and returns its result and wall-clock seconds, the device synchronized."""

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def simulations(module, count: int, seed: int) -> tuple[object, sbikit.Simulations]:
    prior = module.prior()
    return prior, sbikit.simulate(module.simulator, prior, num_simulations=count, seed=seed, show_progress=False)


def cases(data: dict, device: str, seed: int, batch_size: int | None) -> list[tuple[str, float, str]]:
    r"""Each case's label, seconds and check on ``device``, in the order of the table."""

    config = sbikit.TrainConfig(show_progress=False, seed=seed, device=device, batch_size=batch_size)
    rows = []
    for name in ("two_moons", "gaussian_linear"):
        prior, sims = data[name]
        torch.manual_seed(seed)
        posterior, seconds = timed(lambda: sbikit.NPE(prior, training=config).fit(sims), device)
        epochs = posterior.history["epochs"]
        rows.append((f"NPE fit, {name}", seconds, f"{epochs} epochs"))
    x_o = gaussian_trials(1, seed)[0]
    exact = analytic(x_o[None])
    draws, seconds = timed(lambda: posterior.sample(100_000, x=x_o), device)
    error = float(((draws.mean(0) - exact.mean) / exact.stddev).norm())
    rows.append(("NPE sample, 100,000 draws at 1 x", seconds, f"mean off by {error:.2f} sd"))
    many = gaussian_trials(100, seed + 1)
    draws, seconds = timed(lambda: posterior.sample(1_000, x=many), device)
    rows.append(("NPE sample, 1,000 draws at 100 x", seconds, f"shape {tuple(draws.shape)}"))

    prior, sims = data["gaussian_linear"]
    torch.manual_seed(seed)
    likelihood, seconds = timed(lambda: sbikit.NLE(prior, training=config).fit(sims), device)
    rows.append(("NLE fit, gaussian_linear", seconds, f"{likelihood.history['epochs']} epochs"))
    theta = torch.zeros(prior.event_shape)
    fake, seconds = timed(lambda: likelihood.sample(100_000, theta=theta), device)
    sd = float(fake.std(0).mean()) / math.sqrt(gaussian_linear.NOISE_VARIANCE)
    rows.append(("NLE emulate, 100,000 draws", seconds, f"sd / exact {sd:.3f}"))
    trials = gaussian_trials(10, seed)
    torch.manual_seed(seed)

    def mcmc():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # R-hat or ESS: the check below says more
            return likelihood.posterior(trials, sbikit.MCMCConfig(show_progress=False)).sample(1_000)

    draws, seconds = timed(mcmc, device)
    ratio = float((draws.std(0) / analytic(trials).stddev).mean())
    rows.append(("NLE posterior, 1,000 draws, 10 trials", seconds, f"sd / exact {ratio:.3f}"))
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    parser.add_argument("--devices", nargs="+", default=default, help="e.g. cpu cuda")
    parser.add_argument("--simulations", type=int, default=10_000, help="training simulations per simulator")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (None: the automatic one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2,000 simulations")
    parser.add_argument("--markdown", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    count = 2_000 if args.quick else args.simulations
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"# sbikit {sbikit.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, GPU {gpu}; {count:,} simulations, "
          f"batch {args.batch_size or 'automatic'}", flush=True)
    data = {name: simulations(module, count, args.seed)
            for name, module in (("two_moons", two_moons), ("gaussian_linear", gaussian_linear))}
    results = {}
    for device in args.devices:
        results[device] = cases(data, device, args.seed, args.batch_size)
        for label, seconds, check in results[device]:
            print(f"{device}: {label}: {seconds:.2f} s ({check})", flush=True)
    first = args.devices[0]
    header = ["case"] + [f"{d} s" for d in args.devices] + [f"{first} / {d}" for d in args.devices[1:]]
    header += [f"check, {d}" for d in args.devices]
    table = [header]
    for i, (label, _, _) in enumerate(results[first]):
        seconds = [results[d][i][1] for d in args.devices]
        table.append([label] + [f"{s:.2f}" for s in seconds] + [f"{seconds[0] / s:.1f}x" for s in seconds[1:]]
                     + [results[d][i][2] for d in args.devices])
    text_columns = {0} | set(range(1 + 2 * len(args.devices) - 1, len(header)))
    print(format_lines(table, left=text_columns, markdown=args.markdown))


if __name__ == "__main__":
    main()
