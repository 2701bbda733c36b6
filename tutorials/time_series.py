r"""Tutorial: a dynamical system observed in time (a stochastic epidemic).

A town of 1,000 people, 10 of them infected on day 0: each day we learn how many new
cases were reported (each infection is reported with probability 1/2), for 30 to 100
days. The epidemic is a stochastic SIR model simulated exactly, reaction by reaction,
by ``sbikit.gillespie``; it is ``sbikit.simulators.sir``, a ``sbikit.StateSpace``. We
infer the infection rate beta and the recovery rate gamma (per day), and from them the
basic reproduction number R0 = beta / gamma, from one epidemic's daily counts.

Series of different lengths train one network: ``simulate`` pads them and records a
mask, and ``NPE`` picks a recurrent summary network for series by default. An
observation is a plain (days, 2) tensor of (day, reported cases), of any length; the
tutorial asks what the first 30 days of an epidemic say, and what 80 days say.

Run it from the repository root::

    python tutorials/time_series.py                 # 5,000 epidemics, a few minutes on 2 cores
"""

import argparse
import torch

from pathlib import Path

import sbikit

from sbikit.plots import pair_plot
from sbikit.simulators import sir


def describe(label: str, samples: torch.Tensor) -> None:
    r0 = samples[:, 0] / samples[:, 1]
    low, median, high = torch.quantile(r0, torch.tensor([0.05, 0.5, 0.95])).tolist()
    print(f"{label:>14}: beta {samples[:, 0].mean():.3f} ± {samples[:, 0].std():.3f}, "
          f"gamma {samples[:, 1].mean():.3f} ± {samples[:, 1].std():.3f}, R0 {median:.2f} (90%: {low:.2f}-{high:.2f})")


def main(num_simulations: int = 5_000, out: str = "tutorial-output") -> dict:
    model = sir.model()                                          # 30 to 100 days per epidemic
    data = sbikit.simulate(model, num_simulations, seed=0)       # x: (n, 100, 2), padded, with a mask
    print(data)
    posterior = sbikit.NPE(model.prior, parameter_names=sir.PARAMETER_NAMES).fit(data)

    # one new epidemic of 80 days, simulated with known parameters
    outbreak = sbikit.simulate(sir.model(days=(80, 80)), 1, seed=123)
    cases, truth = outbreak.x[0], outbreak.theta[0]              # (80, 2): day, reported cases
    print("reported cases, days 1-30:", cases[:30, 1].int().tolist())
    print(f"{'truth':>14}: beta {truth[0]:.3f}, gamma {truth[1]:.3f}, R0 {truth[0] / truth[1]:.2f}")
    early = posterior.sample(2_000, x=cases[:30])                # the first 30 days only
    full = posterior.sample(2_000, x=cases)                      # all 80 days
    describe("first 30 days", early)
    describe("80 days", full)

    # recovery over held-out epidemics of varied lengths: posterior means against the truth
    test = sbikit.simulate(model, 50, seed=1)
    means = torch.stack([posterior.sample(500, x=x[m]).mean(0) for x, m in zip(test.x, test.mask)])
    correlation = [float(torch.corrcoef(torch.stack([means[:, j], test.theta[:, j]]))[0, 1]) for j in range(2)]
    print("correlation of posterior means with the truth over 50 held-out epidemics:",
          dict(zip(sir.PARAMETER_NAMES, [round(c, 3) for c in correlation])))

    Path(out).mkdir(exist_ok=True)
    pair_plot(full, posterior.parameter_names, truth=truth).savefig(Path(out) / "epidemic.png")
    return {"early": early, "full": full, "truth": truth, "correlation": correlation}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-simulations", type=int, default=5_000)
    parser.add_argument("--out", default="tutorial-output")
    args = parser.parse_args()
    main(args.num_simulations, args.out)
