r"""Estimators: each learns one conditional density from simulations."""

__all__ = ["NPE", "NPENetwork", "NPEPosterior"]

from .npe import NPE, NPENetwork, NPEPosterior
