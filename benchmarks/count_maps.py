r"""How NLE's map of counts onto the real line shapes the emulator (``sbikit.estimators.support``).

The Ricker model's 50 counts (``simulators/ricker.py``) are zero about half the time and
reach hundreds otherwise. NLE trains on 10,000 simulations for ``--epochs`` epochs with each
of three maps of a count's dequantized value :math:`y = x + v` onto the line, and the table
gives, at 5 prior parameters (seeded), the share of zeros, the mean, the sd and the largest
of 5,000 emulator draws beside 5,000 simulator draws:

- ``knee``: sbikit's map, :math:`s \log(e^{y / s} - 1)` with :math:`s` the column's sd;
- ``softplus``: the same with :math:`s = 1`, linear beyond one count;
- ``log``: :math:`\log y`.

Run it from the repository root, alone on the machine (about 10 minutes on 2 cores)::

    python benchmarks/count_maps.py --epochs 60
"""

import argparse
import time
import torch

import sbikit
import sbikit.estimators.nle as nle

from sbikit.estimators import support
from sbikit.simulators import ricker


def log_map(y, low, high, knee):
    w = (y - low.to(y)).clamp_min(1e-6).log()
    return w, (-w).sum(-1)


def log_inverse(w, discrete, low, high, knee):
    low, high = low.to(w), high.to(w)
    y = low + w.clamp(max=60.0).exp()
    return torch.where(discrete.to(w.device).bool(), y.floor().clamp(low, high - 1), y)


def run(name: str, data: sbikit.Simulations, theta: torch.Tensor, epochs: int) -> None:
    nle.to_free, nle.from_free = (log_map, log_inverse) if name == "log" else (support.to_free, support.from_free)
    knees = support.knees
    if name == "softplus":
        support.knees = lambda y, low, high: torch.ones(y.shape[1])
    began = time.perf_counter()
    try:
        config = sbikit.TrainConfig(max_epochs=epochs, show_progress=False)
        likelihood = sbikit.NLE(ricker.prior(), training=config, counts="dequantized").fit(data)
    finally:
        support.knees = knees
    torch.manual_seed(0)
    emulated = likelihood.sample(5000, theta=theta).transpose(0, 1)
    print(f"\n{name}: {time.perf_counter() - began:.0f} s, best epoch {likelihood.history['best_epoch']}")
    print("| theta | zeros sim | zeros emu | mean sim | mean emu | sd sim | sd emu | largest emu |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for k, t in enumerate(theta):
        torch.manual_seed(10 + k)
        s, e = ricker.batched_simulator(t.expand(5000, 3)), emulated[k]
        print(f"| {', '.join(f'{v:.2f}' for v in t.tolist())} | {(s == 0).float().mean():.3f} | "
              f"{(e == 0).float().mean():.3f} | {s.mean():.1f} | {e.mean():.1f} | {s.std():.1f} | {e.std():.1f} | "
              f"{e.max():.3g} |", flush=True)
    nle.to_free, nle.from_free = support.to_free, support.from_free


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--maps", nargs="+", default=["knee", "softplus", "log"], choices=["knee", "softplus", "log"])
    args = parser.parse_args(argv)
    prior = ricker.prior()
    data = sbikit.simulate(sbikit.Simulator(ricker.batched_simulator, prior), 10_000, seed=0, show_progress=False)
    torch.manual_seed(1)
    theta = prior.sample((5,))
    for name in args.maps:
        run(name, data, theta, args.epochs)


if __name__ == "__main__":
    main()
