r"""How often the out-of-range checks flag well-specified observations (false warnings).

**Features** (:class:`sbikit.estimators.base.TrainingRange`, used by every estimator): for each
simulator, the range is fitted to :math:`N` simulations, and batches of :math:`m` fresh
simulations from the same model are checked by its rule. The table gives the share of batches
flagged (the rule aims at ``OUT_OF_RANGE`` = 1% at most, whatever :math:`m`), beside the share the
old rule (any row more than half a training sd beyond) flagged. ``slcp`` has heavy tails,
``poisson_glm`` and ``ricker`` are counts.

**Summaries** (:class:`sbikit.estimators.base.SummaryRange`, NPE only, ``--summaries``): the
default NPE trains on 2,000 simulations, and on 20,000 fresh ones the table gives the share
whose learned summary lies beyond the farthest training summary, and beyond ``SUMMARY_MARGIN``
(1.5) times its distance, where the warning starts.

Run it from the repository root::

    python benchmarks/out_of_range.py
    python benchmarks/out_of_range.py --summaries
"""

import argparse
import torch

import sbikit

from sbikit.estimators.base import OUT_OF_RANGE, SUMMARY_MARGIN, TrainingRange
from sbikit.simulators import gaussian_linear, poisson_glm, ricker, slcp, two_moons

SIMULATORS = {"gaussian_linear": gaussian_linear, "two_moons": two_moons, "slcp": slcp,
              "poisson_glm": poisson_glm, "ricker": ricker}


def simulations(module, n: int, seed: int) -> torch.Tensor:
    simulator = getattr(module, "batched_simulator", module.simulator)
    return sbikit.simulate(simulator, module.prior(), n, seed=seed, show_progress=False).x.float()


def features(args) -> None:
    sizes = (1, 40, 500)
    print(f"| simulator | N | {' | '.join(f'm = {m}' for m in sizes)} | old rule, m = 500 |")
    print("|:--|--:|" + "--:|" * (len(sizes) + 1))
    for name, module in SIMULATORS.items():
        fresh = simulations(module, args.fresh, seed=100)
        for n in args.num_simulations:
            train = simulations(module, n, seed=0)
            check = TrainingRange(train.shape[-1])
            check.fit(train)
            chance = check.chance(fresh)
            old = (torch.maximum(check.low - fresh, fresh - check.high) / check.scale).amax(-1) > 0.5
            cells = []
            for m in sizes:
                batches = len(fresh) // m
                flagged = (chance[: batches * m].reshape(batches, m) * m < OUT_OF_RANGE).any(-1)
                cells.append(f"{float(flagged.float().mean()):.4f} ({batches})")
            batches = len(fresh) // 500
            cells.append(f"{float(old[: batches * 500].reshape(batches, 500).any(-1).float().mean()):.3f}")
            print(f"| {name} | {n} | {' | '.join(cells)} |", flush=True)


def summaries(args) -> None:
    print("| simulator | N | beyond the farthest summary | beyond 1.5 times it |")
    print("|:--|--:|--:|--:|")
    for name in ("gaussian_linear", "two_moons"):
        module = SIMULATORS[name]
        prior = module.prior()
        data = sbikit.simulate(module.simulator, prior, 2000, seed=0, show_progress=False)
        net = sbikit.NPE(prior, training=sbikit.TrainConfig(show_progress=False)).fit(data).network
        x = simulations(module, 20_000, seed=1)
        with torch.no_grad():
            distance = net.summary_range.distance(net.embed(x))
        radius = float(net.summary_range.radius)
        print(f"| {name} | 2000 | {float((distance > radius).float().mean()):.4f} | "
              f"{float((distance > SUMMARY_MARGIN * radius).float().mean()):.4f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-simulations", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--fresh", type=int, default=200_000, help="fresh simulations per simulator")
    parser.add_argument("--summaries", action="store_true", help="the summary-space check instead")
    args = parser.parse_args(argv)
    summaries(args) if args.summaries else features(args)


if __name__ == "__main__":
    main()
