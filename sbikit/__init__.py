r"""sbikit: simulation-based inference.

Wrap a simulator with a prior, simulate, train a neural posterior, sample it,
and check it::

    data = sbikit.simulate(simulator, prior, num_simulations=5_000, seed=0)
    posterior = sbikit.NPE(prior).fit(data)
    samples = posterior.sample(1_000, x=x_obs)
"""

__all__ = [
    "BoxUniform",
    "FormatError",
    "HierarchicalNPE",
    "HierarchicalPosterior",
    "MixedEffects",
    "NPE",
    "NPEPosterior",
    "Posterior",
    "ProductPrior",
    "Simulations",
    "StateSpace",
    "TrainConfig",
    "TrainingError",
    "affine_coupling_flow",
    "coupling_flow",
    "diagnostics",
    "euler_maruyama",
    "gillespie",
    "load",
    "simulate",
]

__version__ = "0.1.0"

from . import diagnostics
from .data import Simulations
from .errors import FormatError, TrainingError
from .estimators import NPE, HierarchicalNPE, HierarchicalPosterior, NPEPosterior
from .flows import affine_coupling_flow, coupling_flow
from .io import load
from .models import MixedEffects, StateSpace, euler_maruyama, gillespie
from .posterior import Posterior
from .priors import BoxUniform, ProductPrior
from .runs import simulate
from .train import TrainConfig


def __getattr__(name: str):
    # the example simulators import sbikit themselves: load them on first use, not at import
    if name == "simulators":
        import importlib

        return importlib.import_module(".simulators", __name__)
    raise AttributeError(f"module 'sbikit' has no attribute {name!r}")
