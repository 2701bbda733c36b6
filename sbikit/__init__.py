r"""sbikit: simulation-based inference.

Wrap a simulator with a prior, simulate, train a neural posterior, sample it,
and check it::

    data = sbikit.simulate(simulator, prior, num_simulations=5_000, seed=0)
    posterior = sbikit.NPE(prior).fit(data)
    samples = posterior.sample(1_000, x=x_obs)

or learn a surrogate likelihood, and sample the posterior of i.i.d. trials by MCMC::

    likelihood = sbikit.NLE(prior).fit(data)
    samples = likelihood.posterior(trials).sample(1_000)
"""

__all__ = [
    "AmortizedPosterior",
    "BoxUniform",
    "FormatError",
    "HierarchicalNPE",
    "HierarchicalPosterior",
    "Likelihood",
    "MCMCConfig",
    "MCMCPosterior",
    "MixedEffects",
    "NLE",
    "NPE",
    "NPEPosterior",
    "OutOfRangeWarning",
    "PerObservationPosterior",
    "Posterior",
    "ProductPrior",
    "SamplingError",
    "Simulator",
    "SimulatorContractError",
    "SimulatorShapeError",
    "SimulatorTypeError",
    "Simulations",
    "SmallDataWarning",
    "StateSpace",
    "TrainConfig",
    "TrainingError",
    "affine_coupling_flow",
    "coupling_flow",
    "diagnostics",
    "euler_maruyama",
    "gillespie",
    "load",
    "open_store",
    "simulate",
]

__version__ = "0.1.0"

from . import diagnostics
from .data import Simulations
from .errors import (
    FormatError, OutOfRangeWarning, SamplingError, SimulatorContractError, SimulatorShapeError, SimulatorTypeError,
    SmallDataWarning, TrainingError,
)
from .estimators import NLE, NPE, HierarchicalNPE, HierarchicalPosterior, Likelihood, NPEPosterior
from .flows import affine_coupling_flow, coupling_flow
from .io import load
from .models import MixedEffects, StateSpace, euler_maruyama, gillespie
from .mcmc import MCMCConfig
from .posterior import AmortizedPosterior, MCMCPosterior, PerObservationPosterior, Posterior
from .priors import BoxUniform, ProductPrior
from .runs import open_store, simulate
from .simulator import Simulator
from .train import TrainConfig


def __getattr__(name: str):
    # the example simulators import sbikit themselves: load them on first use, not at import
    if name == "simulators":
        import importlib

        return importlib.import_module(".simulators", __name__)
    raise AttributeError(f"module 'sbikit' has no attribute {name!r}")
