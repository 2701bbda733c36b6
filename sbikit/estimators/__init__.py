r"""Estimators: each learns one conditional density from simulations."""

__all__ = ["NPE", "NPEPosterior"]

from .npe import NPE, NPEPosterior
