r"""The ``sbikit`` command.

``sbikit demo`` runs the whole path on a built-in simulator: simulate, train
NPE, sample the posterior of a held-out observation, print arviz's summary, and
write a pair plot (PNG), the InferenceData (netCDF) and the trained posterior
into an output folder.
"""

__all__ = ["main"]

import argparse
import sys
import time
import torch

from pathlib import Path

_SIMULATORS = ("two_moons", "gaussian_linear")


def _demo(args: argparse.Namespace) -> int:
    import importlib

    import sbikit

    from sbikit import _arviz
    from sbikit.plots import pair_plot
    from sbikit.train import best_validation

    module = importlib.import_module(f"sbikit.simulators.{args.simulator}")
    prior = module.prior()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    print(f"[1/5] simulating {args.num_simulations} pairs of the {args.simulator} simulator (seed {args.seed})")
    data = sbikit.simulate(module.simulator, prior, args.num_simulations, seed=args.seed)

    print("[2/5] training NPE (spline coupling flow, MLP summary)")
    config = sbikit.TrainConfig(seed=args.seed, device=args.device)
    names = getattr(module, "PARAMETER_NAMES", None)
    posterior = sbikit.NPE(prior, training=config, parameter_names=names).fit(data)
    history = posterior.history
    print(f"      {history['epochs']} epochs, best validation loss {best_validation(history)}")

    print("[3/5] sampling the posterior of a held-out observation")
    held_out = sbikit.simulate(module.simulator, prior, 1, seed=args.seed + 1, show_progress=False)
    theta_true, x_obs = held_out.theta[0], held_out.x[0]
    idata = posterior.to_arviz(x_obs, num_samples=args.num_samples)

    print("[4/5] posterior summary (true parameters: " + ", ".join(f"{v:.3f}" for v in theta_true.tolist()) + ")")
    print(_arviz.summary(idata).to_string())

    print("[5/5] writing results")
    samples = posterior.sample(args.num_samples, x=x_obs)
    title = f"{args.simulator}: NPE posterior of a held-out observation ({args.num_simulations:,} simulations)"
    figure = pair_plot(samples, posterior.parameter_names, truth=theta_true, title=title)
    figure.savefig(out / "pair_plot.png", dpi=120)
    _arviz.to_netcdf(idata, out / "posterior.nc")
    posterior.save(out / "posterior.sbk")
    for name in ("pair_plot.png", "posterior.nc", "posterior.sbk"):
        print(f"      {out / name}")
    print(f"done in {time.perf_counter() - start:.0f} s; results are in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from sbikit import __version__

    parser = argparse.ArgumentParser(prog="sbikit", description="Simulation-based inference.")
    parser.add_argument("--version", action="version", version=f"sbikit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on a built-in simulator",
        description="Simulate, train NPE, sample the posterior of a held-out observation, and write "
        "a pair plot, the arviz InferenceData and the trained posterior.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--simulator", choices=_SIMULATORS, default="two_moons", help="the built-in simulator")
    demo.add_argument("--num-simulations", type=int, default=10_000, help="simulations to train on")
    demo.add_argument("--num-samples", type=int, default=4_000, help="posterior samples to draw")
    demo.add_argument("--seed", type=int, default=0, help="seeds the simulations and the training")
    demo.add_argument("--device", default="cpu", help="where to train: cpu or cuda")
    demo.add_argument("--out", default="sbikit-demo", help="the output folder")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
