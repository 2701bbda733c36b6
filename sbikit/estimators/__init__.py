r"""Estimators: each learns one conditional density from simulations."""

__all__ = ["HierarchicalNPE", "HierarchicalPosterior", "NPE", "NPENetwork", "NPEPosterior"]

from .hierarchical import HierarchicalNPE, HierarchicalPosterior
from .npe import NPE, NPENetwork, NPEPosterior
