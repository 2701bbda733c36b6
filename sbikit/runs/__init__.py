r"""Simulation runs: per-simulation seeds, reproducible batches, failure records."""

__all__ = ["run_chunk", "simulate", "simulation_seed"]

from .seeds import simulation_seed
from .simulate import run_chunk, simulate
