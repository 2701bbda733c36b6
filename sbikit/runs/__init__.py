r"""Simulation runs: per-simulation seeds, the chunk function, executors and the on-disk store."""

__all__ = [
    "SimulationError",
    "Store",
    "StoreError",
    "StoreWriteError",
    "WorkerError",
    "open_store",
    "run_chunk",
    "simulate",
    "simulation_seed",
]

from .chunk import run_chunk
from .executors import WorkerError
from .seeds import simulation_seed
from .simulate import SimulationError, simulate
from .store import Store, StoreError, StoreWriteError, open_store
