r"""Running a user's simulator over draws from the prior: a loop over chunks.

A run draws all :math:`N` parameter vectors first, each from its own seed (and,
with ``store=``, writes them to disk before any simulation starts). It then hands
chunks of consecutive indices to an executor (this process, local processes, or a
Dask cluster; see :mod:`sbikit.runs.executors`), each of which runs the pure chunk
function :func:`~sbikit.runs.chunk.run_chunk`, and writes each result as it
arrives: to memory, or as one shard of the store (:mod:`sbikit.runs.store`). So
:math:`x` is the same whatever the number of workers, the chunk size, the order or
the retries, and a resumed run equals one that was never interrupted.

Where a simulation's randomness comes from: see :mod:`sbikit.runs.chunk`.
"""

__all__ = ["SimulationError", "simulate"]

import functools
import hashlib
import inspect
import json
import numpy as np
import threading
import time
import torch
import warnings

from collections.abc import Callable, Iterator
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from .chunk import Chunk, draw_prior, run_chunk, run_model_chunk, stack_outputs
from .executors import DaskExecutor, ProcessExecutor, SerialExecutor, Task, preflight
from .randomness import warn_unattributed
from .seeds import root_seed, simulation_seed, simulation_seeds
from .store import SCHEMA, STRUCTURED_SCHEMA, Store, versions
from .._checks import check_count
from ..data import STATUSES, Failure, Simulations, failure_summary
from ..priors import check_prior, prior_fingerprint
from ..simulator import Simulator

_THETA_BLOCK = 100_000  # parameters are drawn up front in blocks of this many rows
# a record's status, as its index in sbikit.data.STATUSES
_CODES = {kind: STATUSES.index(Failure(0, kind).status) for kind in ("nan", "inf", "exception", "timeout", "crashed")}


class SimulationError(RuntimeError):
    r"""A run stopped: a simulation raised under ``on_error="raise"``, or too many failed."""


def _is_model(simulator: object) -> bool:
    r"""Whether ``simulator`` is a structured model (:class:`sbikit.MixedEffects`, :class:`sbikit.StateSpace`)."""

    return not isinstance(simulator, type) and getattr(simulator, "structure", None) is not None and hasattr(
        simulator, "padded_chunk")


def simulator_fingerprint(simulator: Callable) -> dict:
    r"""Names a simulator and hashes its source, to recognize it when a store is resumed."""

    if _is_model(simulator):
        # a structured model: its class (by name: sbikit's code is in the manifest's versions), and
        # each function, distribution and setting it holds
        model, parts = type(simulator), []
        for key, value in sorted(vars(simulator).items()):
            if key == "parameter_names":  # labels, which change no simulation
                continue
            if isinstance(value, Distribution):
                part = prior_fingerprint(value)
            elif isinstance(value, Tensor):
                part = hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            elif callable(value):
                part = simulator_fingerprint(value)
            else:
                part = repr(value)
            parts.append(f"{key}={part}")
        return {"name": f"{model.__module__}.{model.__qualname__}",
                "code": hashlib.sha256(repr(parts).encode()).hexdigest()[:16]}
    if isinstance(simulator, functools.partial):
        inner = simulator_fingerprint(simulator.func)
        extra = repr((simulator.args, sorted(simulator.keywords.items())))
        return {"name": f"partial({inner['name']})", "code": hashlib.sha256((inner["code"] + extra).encode()).hexdigest()[:16]}
    target = simulator if inspect.isfunction(simulator) or inspect.ismethod(simulator) else type(simulator)
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(simulator, "__code__", None)
        source = repr((code.co_code, code.co_consts)) if code is not None else name
    return {"name": name, "code": hashlib.sha256(source.encode()).hexdigest()[:16]}


class _Memory:
    r"""Where a run without a store keeps its chunks: the same calls as :class:`Store`."""

    def __init__(self, theta: Tensor, chunk_size: int) -> None:
        self.theta, self.chunk_size = theta, chunk_size
        self.num_simulations = len(theta)
        self.claim_ttl = 1.0
        self.chunks: dict[int, tuple[Chunk, list[Failure]]] = {}
        self.done = np.zeros(len(theta), dtype=bool)

    def done_mask(self) -> np.ndarray:
        return self.done

    def claim(self, cell: int) -> bool:
        return True

    def release(self, cell: int) -> None:
        pass

    def theta_rows(self, start: int, stop: int) -> Tensor:
        return self.theta[start:stop]

    def write(self, start: int, chunk: Chunk, failures: list[Failure]) -> None:
        self.chunks[start] = (chunk, failures)
        self.done[start : start + len(chunk)] = True

    def result(self, width: int = 0) -> tuple[Tensor | None, Tensor | None, Tensor | None, list[Failure], bool, bool]:
        chunks = [self.chunks[k][0] for k in sorted(self.chunks)]
        failures = [f for k in sorted(self.chunks) for f in self.chunks[k][1]]
        x, mask, local = stack_outputs([(len(c), c.x, c.mask, c.local) for c in chunks], width)
        return x, mask, local, failures, any(c.unattributed for c in chunks), any(c.global_draws for c in chunks)


def _write(sink, task: Task, chunk: Chunk, failures: list[Failure]) -> None:
    if isinstance(sink, _Memory):
        sink.write(task.start, chunk, failures)
        return
    status = np.zeros(len(task), np.uint8)
    for f in failures:
        status[f.index - task.start] = _CODES[f.kind]
    sink.write_shard(
        task.start, _numpy(chunk.x), status, chunk.durations, chunk.attempts, failures,
        {"unattributed": chunk.unattributed, "global_draws": chunk.global_draws},
        mask=_numpy(chunk.mask), local=_numpy(chunk.local),
    )


def _numpy(value: Tensor | None) -> np.ndarray | None:
    return None if value is None else value.numpy()


def _claimable_tasks(sink, owned: dict[int, int]) -> Iterator[Task]:
    r"""Claims the cells with missing simulations that no live process holds, and yields their runs."""

    n, size = sink.num_simulations, sink.chunk_size
    done = sink.done_mask()
    missing = np.flatnonzero(~done)
    for cell in np.unique(missing // size * size).tolist():
        if cell in owned or not sink.claim(cell):
            continue
        stop = min(cell + size, n)
        # another process may have finished the cell before it let the claim go: look again
        left = ~sink.done_mask()[cell:stop]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], left.astype(np.int8), [0]])))
        runs = [(cell + int(a), cell + int(b)) for a, b in zip(edges[::2], edges[1::2])]
        if not runs:
            sink.release(cell)
            continue
        owned[cell] = len(runs)
        for start, stop in runs:
            yield Task(cell, start, stop, sink.theta_rows(start, stop))


def _executor(function: Callable, simulator: Callable, root: int, n: int, options: dict,
              workers: int, executor: object, timeout: float | None, retries: int):
    if executor is None and workers == 1 and timeout is None:
        return SerialExecutor(function)
    # pre-flight: a pickle round trip, and a couple of simulations here, where a traceback is clean
    # (not under a timeout, which only a worker process can enforce)
    payload = preflight(function, simulator)
    probe = function(0, min(2, n)) if timeout is None else None
    if probe is not None and len(probe.failures) == len(probe.theta) and probe.error is not None:
        raise SimulationError(
            f"the first {len(probe.theta)} simulations raised in this process before fanning out; "
            f"simulation 0 (seed {simulation_seed(root, 0)}) raised {type(probe.error).__name__}: {probe.error}"
        ) from probe.error
    if executor is not None:
        return DaskExecutor(executor, payload, timeout, retries, options["batched"])
    return ProcessExecutor(payload, workers, timeout, retries, options["batched"])


def _is_dask_client(executor: object) -> bool:
    return any(c.__module__.startswith("distributed") and c.__name__ == "Client" for c in type(executor).__mro__)


class _Heartbeat(threading.Thread):
    r"""Touches the store's claims while the run holds them."""

    def __init__(self, store: Store) -> None:
        super().__init__(daemon=True)
        self.store, self.stopped = store, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.store.claim_ttl / 4):
            self.store.refresh_claims()


def simulate(
    simulator: Callable,
    prior: Distribution | None = None,
    num_simulations: int | None = None,
    *,
    seed: int | None = None,
    batched: bool | None = None,
    numpy: bool | None = None,
    rng: bool | None = None,
    batch_size: int = 1000,
    show_progress: bool | None = None,
    store: str | None = None,
    workers: int = 1,
    executor: object = None,
    timeout: float | None = None,
    on_error: str = "record",
    max_failure_fraction: float = 1.0,
    retries: int = 1,
) -> Simulations:
    r"""Draws parameters from the prior and runs the simulator on them.

    Simulation :math:`i` takes its parameters and its noise from streams derived
    from its own seed (:func:`sbikit.runs.simulation_seed`), so the same ``seed``
    gives the same simulations whatever ``batch_size``, ``workers`` or executor:

    - a batched torch simulator draws from torch's global functions, which are
      split into one stream per row;
    - an unbatched simulator (torch or numpy) draws from torch's, numpy's and
      ``random``'s global generators, seeded per simulation;
    - with ``rng=True`` the simulator is called as ``simulator(theta, rng)`` and
      draws from ``rng``: a :class:`numpy.random.Generator` (with ``numpy=True``)
      or a :class:`torch.Generator`, one per simulation; a batched simulator gets
      a list with one generator per row;
    - a batched simulator that draws from numpy's or Python's global generator is
      reproducible for a fixed batch size only, and a warning says so.

    Simulations that raise, return NaN or inf, time out or crash their worker are
    recorded in :attr:`Simulations.failures`, kept as NaN rows, and excluded by
    estimators. With ``store=``, the run lives in a directory (see
    :func:`sbikit.open_store`): an interrupted call with the same arguments resumes
    and runs only the missing simulations, a finished one is read back, and one with
    another seed, simulator or prior is refused.

    Arguments:
        simulator: A :class:`sbikit.Simulator`, which carries its calling convention (and
            may carry its prior: then ``simulate(simulator, num_simulations, seed=...)``); a
            function of parameters :math:`(B, D) \to (B, *)` when ``batched``, else of one
            parameter vector :math:`(D,) \to (*)`, which ``batched``, ``numpy`` and ``rng``
            make into a ``Simulator``; or a structured model (:class:`sbikit.MixedEffects`, :class:`sbikit.StateSpace`), which
            holds its prior: ``simulate(model, num_simulations, seed=...)``, with every other
            option but ``batched``, ``numpy`` and ``rng``; its sets or series come padded, with
            ``Simulations.mask``.
        prior: The prior, a distribution over :math:`(D,)` with a support.
        num_simulations: The number of simulations :math:`N`.
        seed: The root seed; fresh entropy if None (recorded in the result).
        batched: Whether ``simulator`` takes a batch of parameter vectors (default True).
        numpy: Whether ``simulator`` takes numpy arrays (float64) instead of tensors (default False).
        rng: Whether ``simulator`` takes a second argument, its random generator(s) (default
            False). These three are a function's; a ``Simulator`` or a model has its own.
        batch_size: The number of simulations per chunk: per batched call, per task
            sent to a worker, and per shard of a store (a store keeps the chunk size
            it was made with).
        show_progress: Whether to show a progress bar; None shows one on a terminal.
        store: A directory that holds the run on disk; None keeps it in memory.
        workers: The number of local worker processes (spawned); 1 runs in this process.
        executor: A ``dask.distributed.Client`` to run the chunks on (``pip install
            sbikit[dask]``), instead of local workers.
        timeout: Seconds a simulator call may take before its worker process is
            killed and replaced (a batched call that runs past it is split into calls
            of one simulation). With ``workers=1`` the run then uses one worker process.
        on_error: ``"record"`` records simulations that raise; ``"raise"`` stops the
            run at the first, naming its index and seed.
        max_failure_fraction: Stops the run early, with a summary of the most common
            errors, once more than this share of the simulations run so far (at least
            100) has failed.
        retries: How many times a simulation that timed out or crashed its worker
            is run again. A simulation that raises is not: its seed fixes the outcome.

    Returns:
        The simulations, with :math:`\theta` :math:`(N, D)` and :math:`x` :math:`(N, *)`.

    Raises:
        SimulationError: Under ``on_error="raise"``, or past ``max_failure_fraction``.
        sbikit.runs.StoreError: If ``store`` holds a run with other arguments.
        sbikit.runs.StoreWriteError: If the store cannot be written (a full disk).

    Example:
        >>> prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 10, seed=0)
        >>> data.theta.shape, data.x.shape
        (torch.Size([10, 2]), torch.Size([10, 2]))
    """

    given = {k: v for k, v in (("batched", batched), ("numpy", numpy), ("rng", rng)) if v is not None}
    model = simulator if _is_model(simulator) else None
    if model is not None or isinstance(simulator, Simulator):
        kind = type(simulator).__name__
        if given:
            raise TypeError(f"{', '.join(given)} do not apply to a {kind}, which has its own calling convention.")
        if simulator.prior is not None:
            if isinstance(prior, (int, np.integer)) and not isinstance(prior, bool) and num_simulations is None:
                prior, num_simulations = None, prior  # simulate(model, 5_000)
            if prior is not None:
                raise TypeError(f"this {kind} holds its own prior; call sbikit.simulate(simulator, num_simulations, ...).")
            prior = simulator.prior
    elif not callable(simulator):
        raise TypeError(f"simulator must be callable, got {type(simulator).__name__}.")
    else:
        simulator = Simulator(simulator, **given)
    if prior is None:
        raise TypeError("simulate needs a prior: sbikit.simulate(simulator, prior, num_simulations).")
    prior = check_prior(prior)
    num_simulations = check_count(num_simulations, "num_simulations")
    batch_size = check_count(batch_size, "batch_size")
    workers = check_count(workers, "workers")
    retries = _check_retries(retries)
    if on_error not in ("record", "raise"):
        raise ValueError(f"on_error must be 'record' or 'raise', got {on_error!r}.")
    if isinstance(max_failure_fraction, bool) or not isinstance(max_failure_fraction, (int, float)) or not (
        0 <= max_failure_fraction <= 1
    ):
        raise ValueError(f"max_failure_fraction must be a number in [0, 1], got {max_failure_fraction!r}.")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}.")
    if executor is not None and not _is_dask_client(executor):
        raise TypeError(f"executor must be a dask.distributed.Client, got {type(executor).__name__}.")
    if executor is not None and workers != 1:
        raise ValueError("pass workers= or executor=, not both: a Dask client brings its own workers.")
    root = root_seed(seed)
    options = {"batched": True, "numpy": False, "rng": False} if model is not None else simulator.options
    if model is None:
        simulator = simulator.function
    # a structured model's chunks are padded sets or series, at least `width` wide; the store records both
    structure = {} if model is None else {"structure": model.structure, "width": int(model.min_width)}

    def theta_blocks() -> Iterator[Tensor]:
        for start in range(0, num_simulations, _THETA_BLOCK):
            stop = min(start + _THETA_BLOCK, num_simulations)
            yield draw_prior(prior, simulation_seeds(root, np.arange(start, stop)))

    if store is None:
        sink = _Memory(torch.cat(list(theta_blocks())), batch_size)
    else:
        manifest = json.loads(json.dumps({
            "schema": SCHEMA if model is None else STRUCTURED_SCHEMA,
            "seed": root,
            "num_simulations": num_simulations,
            "chunk_size": batch_size,
            "simulator": simulator_fingerprint(simulator),
            "prior": prior_fingerprint(prior),
            "options": {**options, **structure},
            "versions": versions(),
        }))
        sink = Store.create(store, manifest, theta_blocks())
        sink.verify()
    if model is None:
        function = functools.partial(run_chunk, simulator, prior, root, **options)
    else:
        function = functools.partial(run_model_chunk, model, prior, root, **options)
    done = int(sink.done_mask().sum())
    if done < num_simulations:
        _run(sink, function, simulator, prior, root, options, workers, executor, timeout, retries, on_error,
             max_failure_fraction, show_progress, done)

    if isinstance(sink, _Memory):
        x, mask, local, failures, unattributed, global_draws = sink.result(structure.get("width", 0))
    else:
        shards = list(sink.shards())
        unattributed = any(bool(f["unattributed"]) for _, _, f in shards)
        global_draws = any(bool(f["global_draws"]) for _, _, f in shards)
        failures = list(sink.failures)
        x = mask = local = None
        if any(bool(f["has_x"]) for _, _, f in shards):
            x, mask, local = sink.x, sink.mask, sink.theta_local
    if x is None:
        raise RuntimeError(f"all {num_simulations} simulations raised an exception. {failure_summary(failures, num_simulations)}")
    if unattributed:
        warn_unattributed()
    if global_draws:
        warnings.warn(
            "the batched simulator drew from numpy's or Python's global random generator, which "
            "sbikit seeds once per batch: these simulations are reproducible for this batch size "
            "only. Pass rng=True and draw from the generators it hands the simulator, or draw "
            "with torch, for simulations that do not depend on the batch size.",
            RuntimeWarning,
            stacklevel=2,
        )
    if failures:
        warnings.warn(failure_summary(failures, num_simulations), RuntimeWarning, stacklevel=2)
    return Simulations(theta=sink.theta, x=x, seed=root, failures=tuple(failures), mask=mask,
                       structure=structure.get("structure"), theta_local=local)


def _check_retries(retries: object) -> int:
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}.")
    return int(retries)


def _run(sink, function, simulator, prior, root, options, workers, executor, timeout, retries, on_error,
         max_failure_fraction, show_progress, done) -> None:
    r"""Runs the missing simulations of ``sink`` and writes each chunk as it arrives."""

    n = sink.num_simulations
    runner = _executor(function, simulator, root, n, options, workers, executor, timeout, retries)
    heartbeat = None if isinstance(sink, _Memory) else _Heartbeat(sink)
    if heartbeat is not None:
        heartbeat.start()
    owned: dict[int, int] = {}
    ran, failed = 0, []
    disable = None if show_progress is None else not show_progress
    bar = tqdm(total=n, initial=done, desc="simulating", unit="sim", disable=disable)
    try:
        while True:
            progressed = False
            for task, chunk in runner.run(_claimable_tasks(sink, owned)):
                progressed = True
                attempts = chunk.attempts if chunk.attempts is not None else np.ones(len(task), np.uint8)
                failures = [
                    Failure(f.index, f.kind, f.message, f.error_type, int(attempts[f.index - task.start]))
                    if f.kind not in ("timeout", "crashed") else f
                    for f in chunk.failures
                ]
                raised = [f for f in failures if f.kind == "exception"]
                if on_error == "raise" and raised:
                    first = raised[0]
                    where = f"\n\nIn the worker:\n{chunk.traceback}" if chunk.traceback and chunk.error is None else ""
                    raise SimulationError(
                        f"simulation {first.index} (seed {simulation_seed(root, first.index)}) raised "
                        f"{first.message}{where}"
                    ) from chunk.error
                _write(sink, task, chunk, failures)
                owned[task.cell] -= 1
                if owned[task.cell] == 0:
                    del owned[task.cell]
                    sink.release(task.cell)
                ran += len(task)
                failed += failures
                bar.update(len(task))
                if failed:
                    bar.set_postfix(failed=len(failed), refresh=False)
                if ran >= min(n, 100) and len(failed) > max_failure_fraction * ran:
                    raise SimulationError(
                        f"stopped early: {len(failed)} of the {ran} simulations run so far failed, more than "
                        f"max_failure_fraction={max_failure_fraction}. {failure_summary(failed, ran)} Fix the simulator "
                        "(the finished chunks are kept in the store, if any), or raise max_failure_fraction."
                    )
            if sink.done_mask().all():
                break
            if not progressed:  # the missing cells are held by other processes: wait for them
                time.sleep(min(1.0, sink.claim_ttl / 10))
    finally:
        bar.close()
        runner.close()
        if heartbeat is not None:
            heartbeat.stopped.set()
            sink.release_all()
