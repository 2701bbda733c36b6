r"""The misspecification test's false alarms and power, and the member outlier flags.

- ``gaussian_linear`` (10 parameters, noise sd 0.32): rejection rates at alpha = 0.05 of
  :func:`sbikit.diagnostics.misspecification` for well-specified observations (false alarms)
  and two contaminations, the noise sd x 3 and Student-t noise with 2 degrees of freedom, for
  single observations and batches of 10. Two feature spaces: the learned summaries of the
  default NPE (its summary network and regression adjustment), and the observations themselves
  (the exact posterior, which has no summaries); with ``--mmd-weight``, also the summaries of an
  NPE whose summary network was trained with the MMD penalty of
  :class:`sbikit.diagnostics.MMDSummary` (Schmitt et al., 2023).
- ``hierarchical_gaussian`` with tau known (0.5), groups of 100 members of which 5 have their
  noise x 5: the share of contaminated members that :func:`sbikit.diagnostics.outliers` flags
  at 0.05, and the false-flag rate among the clean ones, with the exact posterior and with an
  NPE trained on 2,000 groups.

Run it from the repository root::

    python benchmarks/misspecification.py           # 200 single observations and 100 batches per row
    python benchmarks/misspecification.py --quick   # smoke test
    python benchmarks/misspecification.py --mmd-weight 1   # and with MMD-trained summaries (+2 minutes)
"""

import argparse
import math
import time
import numpy as np
import torch

from torch.distributions import StudentT

import sbikit

from sbikit import diagnostics as dx
from sbikit.simulators import gaussian_linear, hierarchical_gaussian

NOISE = math.sqrt(gaussian_linear.NOISE_VARIANCE)
ALPHA = 0.05


class Exact:
    r"""The exact posterior of gaussian_linear (no learned summaries: the test uses the observations)."""

    def q(self, x):
        return gaussian_linear.posterior(torch.as_tensor(x))

    def sample(self, n, x):
        return self.q(x).sample((n,))

    def log_prob(self, theta, x):
        return self.q(x).log_prob(theta)


def observations(n: int, kind: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    theta = math.sqrt(gaussian_linear.PRIOR_VARIANCE) * torch.randn(n, gaussian_linear.DIM, generator=generator)
    if kind == "well-specified":
        noise = torch.randn(n, gaussian_linear.DIM, generator=generator)
    elif kind == "noise sd x 3":
        noise = 3 * torch.randn(n, gaussian_linear.DIM, generator=generator)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            noise = StudentT(2.0).sample((n, gaussian_linear.DIM))
    return theta + NOISE * noise


def detection(
    num_single: int, num_batches: int, num_simulations: int, seed: int, mmd_weight: float | None
) -> list[str]:
    prior = gaussian_linear.prior()
    data = sbikit.simulate(gaussian_linear.simulator, prior, num_simulations, seed=seed, show_progress=False)
    spaces = {}
    summaries = {"NPE summaries": None}
    if mmd_weight is not None:
        mlp = sbikit.nn.MLP([gaussian_linear.DIM], out_features=32, hidden_features=(128, 128))  # NPE's default
        summaries[f"NPE summaries, MMD-trained (weight {mmd_weight:g})"] = dx.MMDSummary(mlp, weight=mmd_weight)
    for label, summary in summaries.items():
        start = time.perf_counter()
        config = sbikit.TrainConfig(show_progress=False, seed=seed)
        spaces[label] = sbikit.NPE(prior, summary=summary, training=config).fit(data)
        print(f"gaussian_linear: {label}: trained on {num_simulations:,} in {time.perf_counter() - start:.0f} s",
              flush=True)
    spaces["observations"] = Exact()
    test = sbikit.simulate(gaussian_linear.simulator, prior, 2_000, seed=seed + 1_000_000, show_progress=False)
    lines = []
    for kind in ("well-specified", "noise sd x 3", "Student-t, 2 dof"):
        single_x = observations(num_single, kind, seed + 1)
        batch_x = observations(10 * num_batches, kind, seed + 2)
        for space, posterior in spaces.items():
            single = dx.misspecification(posterior, test, single_x, alpha=ALPHA, seed=seed).observation_p_values
            batches = [
                dx.misspecification(posterior, test, batch_x[10 * b : 10 * b + 10], alpha=ALPHA, seed=seed + b).rejected
                for b in range(num_batches)
            ]
            lines.append(
                f"| {kind} | {space} | {np.mean(single < ALPHA):.3f} ({num_single}) | "
                f"{np.mean(batches):.3f} ({num_batches}) |"
            )
            print(lines[-1], flush=True)
    return lines


GroupMean = hierarchical_gaussian.GroupMeanPosterior


def member_outliers(num_groups: int, num_simulations: int, seed: int) -> list[str]:
    tau, members, bad = 0.5, 100, 5
    model = hierarchical_gaussian.model(tau=tau, num_members=members)
    data = sbikit.simulate(model, num_simulations, seed=seed, show_progress=False)
    start = time.perf_counter()
    npe = sbikit.NPE(model.prior, training=sbikit.TrainConfig(show_progress=False, seed=seed)).fit(data)
    print(f"hierarchical_gaussian: NPE trained on {num_simulations:,} groups in {time.perf_counter() - start:.0f} s",
          flush=True)
    lines = []
    for label, posterior in (("exact", GroupMean(tau)), (f"NPE ({num_simulations:,} groups)", npe)):
        caught, false = [], []
        for g in range(num_groups):
            generator = torch.Generator().manual_seed(seed + g)
            mu = torch.randn(1, generator=generator)
            local = mu + tau * torch.randn(members, 1, generator=generator)
            scale = torch.full((members, 1), hierarchical_gaussian.NOISE)
            scale[:bad] *= 5
            x = local + scale * torch.randn(members, 1, generator=generator)
            result = dx.outliers(posterior, model, x, alpha=ALPHA, seed=seed + g)
            caught.append(result.flagged[:bad].mean())
            false.append(result.flagged[bad:].mean())
        lines.append(f"| {label} | {num_groups} | {np.mean(caught):.3f} | {np.mean(false):.3f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, to smoke-test the script")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mmd-weight", type=float, default=None,
                        help="also train an NPE whose summaries carry this MMD penalty, and test in their space")
    args = parser.parse_args(argv)
    if args.quick:
        single, batches, simulations, groups, group_simulations = 50, 10, 1_000, 3, 500
    else:
        single, batches, simulations, groups, group_simulations = 200, 100, 10_000, 40, 2_000
    detect = detection(single, batches, simulations, args.seed, args.mmd_weight)
    members = member_outliers(groups, group_simulations, args.seed)
    print()
    print(f"rejection rate at alpha = {ALPHA} (number of tests), gaussian_linear, 1,000 reference and 1,000 "
          "calibration simulations:")
    print("\n".join(["| observations | feature space | single | batches of 10 |", "|:--|:--|--:|--:|", *detect]))
    print()
    print(f"member outliers, hierarchical_gaussian (tau = 0.5), 5 of 100 members with noise x 5, alpha = {ALPHA}:")
    print("\n".join(["| posterior | groups | contaminated flagged | clean flagged |", "|:--|--:|--:|--:|", *members]))


if __name__ == "__main__":
    main()
