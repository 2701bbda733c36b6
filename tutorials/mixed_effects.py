r"""Tutorial: a group of members with global and local parameters (mixed effects).

Ten to a hundred patients per clinic: each patient j has a true level l_j drawn around
the clinic's mean mu with spread tau, and is measured once with noise 0.3. We infer
the clinic's (mu, tau) from all its patients, and then each patient's true level,
jointly, with ``HierarchicalNPE``. The model is ``sbikit.simulators.hierarchical_gaussian``,
whose posterior is known exactly, so the tutorial checks its answer against the truth.

Run it from the repository root::

    python tutorials/mixed_effects.py               # 5,000 clinics, a few minutes on 2 cores
"""

import argparse
import torch

from pathlib import Path

import sbikit

from sbikit.plots import pair_plot
from sbikit.simulators import hierarchical_gaussian


def main(num_simulations: int = 5_000, out: str = "tutorial-output") -> dict:
    model = hierarchical_gaussian.model(num_members=(10, 100))
    data = sbikit.simulate(model, num_simulations, seed=0)      # padded members, a mask, the locals
    print(data)

    joint = sbikit.HierarchicalNPE(model).fit(data)             # p(mu, tau | X) and p(l_j | mu, tau, x_j)

    # one new clinic, simulated with known parameters
    clinic = sbikit.simulate(model, 1, seed=123)
    members = clinic.x[0][clinic.mask[0]]                        # a plain (M, 1) tensor
    g, levels = joint.sample_joint(2_000, x=members)             # (2000, 2) and (2000, M, 1)
    print("true (mu, tau)", [round(v, 3) for v in clinic.theta[0].tolist()])
    print("posterior mean", [round(v, 3) for v in g.mean(0).tolist()], "sd", [round(v, 3) for v in g.std(0).tolist()])

    # the exact posterior of (mu, tau), on a grid, for comparison
    exact = hierarchical_gaussian.reference_posterior(members, 2_000, seed=0)
    print("exact mean    ", [round(v, 3) for v in exact.mean(0).tolist()], "sd", [round(v, 3) for v in exact.std(0).tolist()])

    # each patient's level is pulled from its measurement toward the clinic mean
    truth = clinic.theta_local[0][clinic.mask[0]][:, 0]
    estimate = levels.mean(0)[:, 0]
    print("patients' levels: mean absolute error", round(float((estimate - truth).abs().mean()), 3),
          "against", round(float((members[:, 0] - truth).abs().mean()), 3), "for the raw measurements")

    idata = joint.to_arviz(members, num_samples=2_000)           # locals carry a "member" dimension
    Path(out).mkdir(exist_ok=True)
    pair_plot(g, joint.parameter_names, truth=clinic.theta[0]).savefig(Path(out) / "clinic.png")
    return {"globals": g, "levels": levels, "exact": exact, "idata": idata, "truth": clinic.theta[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-simulations", type=int, default=5_000)
    parser.add_argument("--out", default="tutorial-output")
    args = parser.parse_args()
    main(args.num_simulations, args.out)
