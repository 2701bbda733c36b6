r"""Exceptions raised by sbikit.

Input errors are plain :class:`ValueError` and :class:`TypeError`; the classes here
mark failures that have no built-in equivalent.
"""

__all__ = [
    "FormatError",
    "OutOfRangeWarning",
    "SamplingError",
    "SimulatorContractError",
    "SimulatorShapeError",
    "SimulatorTypeError",
    "SmallDataWarning",
    "TrainingError",
]


class FormatError(ValueError):
    r"""A saved file is truncated, foreign, or written by an incompatible version."""


class TrainingError(RuntimeError):
    r"""Training cannot go on, for example after repeated non-finite losses."""


class SamplingError(RuntimeError):
    r"""MCMC cannot go on, for example where the log density turns NaN; the message says where."""


class SimulatorContractError(Exception):
    r"""A simulator, or a function of a structured model, returned something of the wrong type or
    shape: a bug in that function to fix, not a failed simulation to record."""


class SimulatorShapeError(SimulatorContractError, ValueError):
    r"""A simulator's output has the wrong shape or number of rows."""


class SimulatorTypeError(SimulatorContractError, TypeError):
    r"""A simulator's output has the wrong type."""


class OutOfRangeWarning(UserWarning):
    r"""An observation lies outside the data an estimator was trained on, where its answer is an
    extrapolation: beyond the range of a feature, or of a learned summary, or a group with more
    members than any training group."""


class SmallDataWarning(UserWarning):
    r"""An estimator is trained on fewer valid simulations than its defaults were chosen for."""
