r"""How often NPE's out-of-range checks flag well-specified observations (false warnings).

For each simulator, the default NPE trains on :math:`N` simulations (2,000 by default); on
20,000 fresh simulations from the same model it reports the share beyond a feature's training
range by more than half a training sd (:class:`sbikit.estimators.base.TrainingRange`), and the
share whose learned summary lies beyond the farthest training summary, and beyond
``SUMMARY_MARGIN`` (1.5) times its distance, where the warning starts
(:class:`sbikit.estimators.base.SummaryRange`).

Run it from the repository root::

    python benchmarks/out_of_range.py
    python benchmarks/out_of_range.py --num-simulations 10000
"""

import argparse
import torch

import sbikit

from sbikit.estimators.base import OUT_OF_RANGE, SUMMARY_MARGIN
from sbikit.simulators import gaussian_linear, two_moons


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-simulations", type=int, default=2000)
    parser.add_argument("--fresh", type=int, default=20_000)
    args = parser.parse_args(argv)
    print("| simulator | N | beyond a feature's range | beyond the farthest summary | beyond 1.5 times it |")
    print("|:--|--:|--:|--:|--:|")
    for name, module in (("gaussian_linear", gaussian_linear), ("two_moons", two_moons)):
        prior = module.prior()
        data = sbikit.simulate(module.simulator, prior, args.num_simulations, seed=0, show_progress=False)
        net = sbikit.NPE(prior, training=sbikit.TrainConfig(show_progress=False)).fit(data).network
        x = sbikit.simulate(module.simulator, prior, args.fresh, seed=1, show_progress=False).x
        feature = (torch.maximum(net.x_range.low - x, x - net.x_range.high) / net.x_range.scale).amax(-1)
        with torch.no_grad():
            distance = net.summary_range.distance(net.embed(x))
        radius = float(net.summary_range.radius)
        print(f"| {name} | {args.num_simulations} | {float((feature > OUT_OF_RANGE).float().mean()):.4f} | "
              f"{float((distance > radius).float().mean()):.4f} | "
              f"{float((distance > SUMMARY_MARGIN * radius).float().mean()):.4f} |")


if __name__ == "__main__":
    main()
