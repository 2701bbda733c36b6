r"""Exceptions raised by sbikit.

Input errors are plain :class:`ValueError` and :class:`TypeError`; the classes here
mark failures that have no built-in equivalent.
"""

__all__ = ["FormatError", "SamplingError", "TrainingError"]


class FormatError(ValueError):
    r"""A saved file is truncated, foreign, or written by an incompatible version."""


class TrainingError(RuntimeError):
    r"""Training cannot go on, for example after repeated non-finite losses."""


class SamplingError(RuntimeError):
    r"""MCMC cannot go on, for example where the log density turns NaN; the message says where."""
