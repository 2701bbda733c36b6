r"""Estimators: each learns one conditional density from simulations."""

__all__ = ["HierarchicalNPE", "HierarchicalPosterior", "Likelihood", "NLE", "NLENetwork", "NPE", "NPENetwork", "NPEPosterior"]

from .hierarchical import HierarchicalNPE, HierarchicalPosterior
from .nle import NLE, Likelihood, NLENetwork
from .npe import NPE, NPENetwork, NPEPosterior
