r"""Tutorial: your own numpy simulator, a prior with mixed supports, many observations.

A damped oscillator is observed at 20 times with Gaussian noise. Its parameters
are a positive frequency (LogNormal), a damping rate in (0, 1) (Uniform) and a
phase (Normal). The simulator is plain numpy and handles one parameter vector at
a time, so ``simulate`` loops over it (``batched=False``, ``numpy=True``). It draws
its noise from the generator it is handed, numpy's recommended style, so
``rng=True`` asks ``simulate`` for one seeded generator per simulation.

Run it from the repository root::

    python tutorials/custom_simulator.py            # 5,000 simulations, about a minute on 2 cores
"""

import argparse
import numpy as np
import torch

from pathlib import Path
from torch.distributions import LogNormal, Normal, Uniform

import sbikit

from sbikit.plots import pair_plot

TIMES = np.linspace(0.0, 10.0, 20)


def oscillator(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One simulation: parameters (3,) -> observations (20,)."""
    frequency, damping, phase = theta
    signal = np.exp(-damping * TIMES) * np.cos(frequency * TIMES + phase)
    return signal + 0.05 * rng.normal(size=TIMES.shape)


def main(num_simulations: int = 5_000, out: str = "tutorial-output") -> torch.Tensor:
    prior = sbikit.ProductPrior([LogNormal(0.0, 0.3), Uniform(0.0, 1.0), Normal(0.0, 0.5)])
    data = sbikit.simulate(oscillator, prior, num_simulations, seed=0, batched=False, numpy=True, rng=True)

    npe = sbikit.NPE(prior, parameter_names=["frequency", "damping", "phase"])
    posterior = npe.fit(data)

    # amortized: one call gives posteriors for a whole batch of observations
    truth = prior.sample((4,))
    rng = np.random.default_rng(1)
    observations = torch.stack([torch.as_tensor(oscillator(t.double().numpy(), rng), dtype=torch.float32) for t in truth])
    samples = posterior.sample(2_000, x=observations)  # (2000, 4, 3)
    for t, s in zip(truth, samples.unbind(1)):
        print("true", [round(v, 3) for v in t.tolist()], "posterior mean", [round(v, 3) for v in s.mean(0).tolist()])

    Path(out).mkdir(exist_ok=True)
    pair_plot(samples[:, 0], posterior.parameter_names, truth=truth[0]).savefig(Path(out) / "oscillator.png")
    return samples


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-simulations", type=int, default=5_000)
    parser.add_argument("--out", default="tutorial-output")
    args = parser.parse_args()
    main(args.num_simulations, args.out)
