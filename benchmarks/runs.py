r"""Per-simulation overhead of ``sbikit.simulate`` against calling the simulator directly.

Prints, for each simulator style, the time per simulation through ``simulate``,
the time per simulation of calling the function directly (on one batch, or in a
plain Python loop), their difference (the overhead) and their ratio.

    python benchmarks/runs.py [--num-simulations 20000] [--markdown]

Run it alone: two torch processes on 2 cores slow each other down.
"""

import argparse
import math
import numpy as np
import time
import torch

import sbikit

PRIOR = sbikit.BoxUniform(-torch.ones(3), torch.ones(3))


def trivial(theta):
    return theta + 0.1 * torch.randn_like(theta)


def trivial_one(theta):
    return theta + 0.1 * torch.randn(3)


def trivial_numpy(theta):
    return theta + 0.1 * np.random.normal(size=3)


def sde(theta, steps=50, dt=0.02):
    r"""An Ornstein-Uhlenbeck path by Euler-Maruyama: 50 ``randn`` calls per batch."""

    x = torch.zeros(theta.shape[0])
    rate, scale = theta[:, 0].abs() + 0.1, theta[:, 1].abs() + 0.1
    path = []
    for _ in range(steps):
        x = x - rate * x * dt + scale * math.sqrt(dt) * torch.randn(theta.shape[0])
        path.append(x)
    return torch.stack(path, dim=-1)


def _best(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(n: int) -> list[dict]:
    theta = PRIOR.sample((n,))
    cases = [
        ("trivial, batched torch", trivial, {}, lambda: trivial(theta)),
        ("trivial, unbatched torch", trivial_one, {"batched": False}, lambda: [trivial_one(t) for t in theta]),
        (
            "trivial, unbatched numpy",
            trivial_numpy,
            {"batched": False, "numpy": True},
            lambda: [trivial_numpy(t) for t in theta.double().numpy()],
        ),
        ("SDE (50 randn calls), batched torch", sde, {}, lambda: torch.cat([sde(t) for t in theta.split(1000)])),
    ]
    rows = []
    for name, simulator, options, direct in cases:
        through = _best(lambda: sbikit.simulate(simulator, PRIOR, n, seed=0, show_progress=False, **options))
        plain = _best(direct)
        rows.append({
            "case": name,
            "simulate_us": 1e6 * through / n,
            "direct_us": 1e6 * plain / n,
            "overhead_us": 1e6 * (through - plain) / n,
            "ratio": through / plain,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.num_simulations)
    header = ["case", "simulate µs/sim", "direct µs/sim", "overhead µs/sim", "simulate / direct"]
    lines = [[r["case"], f"{r['simulate_us']:.2f}", f"{r['direct_us']:.2f}", f"{r['overhead_us']:.2f}", f"{r['ratio']:.1f}"] for r in rows]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|:--|" + "--:|" * (len(header) - 1))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print(f"\n{args.num_simulations} simulations, torch {torch.__version__}, 1 thread, best of 3.")


if __name__ == "__main__":
    main()
