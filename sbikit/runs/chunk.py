r"""One chunk of a simulation run: the unit of work of every executor.

A run is a loop over chunks of consecutive indices. :func:`run_chunk` is a pure
function of the simulator, the prior, the root seed and the indices: it draws the
chunk's parameters (or takes them, drawn up front by the run), runs the simulator
and returns parameters, outputs, failures and the time each simulation took, so
the result of a chunk never depends on the chunks around it, on the process that
runs it, or on the attempt.

Where a simulation's randomness comes from (see :mod:`sbikit.runs.seeds`):

=============================  =====================================  ==============================
simulator style                draws from                             same data for any batch size
=============================  =====================================  ==============================
batched torch                  torch's global functions               yes: each row gets its own stream
unbatched torch or numpy       torch's, numpy's and ``random``'s      yes: seeded per simulation
                               global generators
``rng=True``                   the generator(s) passed as ``rng``     yes: one generator per simulation
batched numpy                  numpy's global generator               no: seeded per batch; warns
=============================  =====================================  ==============================
"""

__all__ = ["Chunk", "draw_prior", "run_chunk", "run_model_chunk", "stack_outputs"]

import contextlib
import numpy as np
import random
import threading
import time
import torch

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from torch import Tensor
from torch.distributions import Distribution

from .randomness import RowStreams
from .seeds import NUMPY, PRIOR, PYTHON, TORCH, mix64, simulation_seeds, stream_keys
from ..data import Failure, as_float_tensor
from ..errors import SimulatorShapeError

# Chunks seed torch's, numpy's and random's global generators (an unbatched simulator draws from
# them): threads of one process (Dask's threaded workers) take turns, so no chunk sees another's seeds.
_GLOBAL_STATE = threading.RLock()


@dataclass
class Chunk:
    r"""The result of simulations ``start`` to ``start + len(theta) - 1``.

    Arguments:
        theta: The parameters, :math:`(n, D)`.
        x: The outputs, :math:`(n, *)` with NaN rows where a simulation failed, or
            None when every simulation of the chunk raised.
        failures: The failed simulations.
        unattributed: Whether torch draws without a batch dimension were made.
        global_draws: Whether a batched simulator drew from numpy's or Python's
            global generator, which cannot be split per row.
        durations: Seconds per simulation, :math:`(n,)` (a batched call's time is
            shared equally by its rows).
        error: The first exception the simulator raised, for a traceback in the
            process that ran it; None elsewhere.
        traceback: That exception's formatted traceback, which travels between processes.
        attempts: Which attempt produced each simulation's result, :math:`(n,)`; set by executors.
        mask: For sets and series (a structured model's chunk), which members or time
            steps are present, :math:`(n, W)`; :math:`x` is then :math:`(n, W, L)`, padded to
            the chunk's widest row.
        local: For mixed effects, each member's local parameters, :math:`(n, W, K)`.
    """

    theta: Tensor
    x: Tensor | None
    failures: list[Failure] = field(default_factory=list)
    unattributed: bool = False
    global_draws: bool = False
    durations: np.ndarray | None = None
    error: BaseException | None = None
    traceback: str = ""
    attempts: np.ndarray | None = None
    mask: Tensor | None = None
    local: Tensor | None = None

    def __len__(self) -> int:
        return len(self.theta)


def batch_seed(keys: np.ndarray, size: int) -> int:
    r"""A seed for draws that belong to a whole batch: its first key and its size."""

    return int(mix64(keys[:1] ^ np.uint64(size))[0] >> np.uint64(1))


def draw_prior(prior: Distribution, seeds: np.ndarray) -> Tensor:
    r"""Draws :math:`\theta_i` from each simulation's prior stream, :math:`(n, D)`.

    The draw is vectorized; a prior whose sampler makes draws without a leading
    batch dimension is drawn again row by row, so that :math:`\theta_i` never
    depends on the batch.
    """

    keys = stream_keys(seeds, PRIOR)
    mode = RowStreams(keys, batch_seed(keys, len(keys)))
    with torch.no_grad(), mode:
        theta = prior.sample((len(keys),))
    if not mode.unattributed:
        return theta
    rows = []
    for i in range(len(keys)):
        with torch.no_grad(), RowStreams(keys[i : i + 1], batch_seed(keys[i : i + 1], 1)):
            rows.append(prior.sample((1,)))
    return torch.cat(rows)


@contextlib.contextmanager
def isolated_global_generators() -> Iterator[None]:
    r"""Lets the block seed torch's, numpy's and ``random``'s global generators,
    and restores them after."""

    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def _generator(key: int, numpy: bool):
    if numpy:
        return np.random.Generator(np.random.PCG64(key))
    return torch.Generator().manual_seed(key)


def exception_failure(index: int, error: Exception) -> Failure:
    r"""The record of simulation ``index``, which raised ``error``."""

    return Failure(index, "exception", f"{type(error).__name__}: {error}", type(error).__name__)


class _Runner:
    r"""Calls the simulator on one chunk and turns its outputs into rows."""

    def __init__(self, simulator: Callable, batched: bool, numpy: bool, rng: bool,
                 progress: Callable[[int], None] | None = None) -> None:
        self.simulator = simulator
        self.batched = batched
        self.numpy = numpy
        self.rng = rng
        self.global_draws = False
        self.progress = progress
        self.error: BaseException | None = None
        self.durations: np.ndarray | None = None

    def _failed(self, index: int, error: Exception) -> Failure:
        if self.error is None:
            self.error = error
        return exception_failure(index, error)

    def _call(self, theta: Tensor | np.ndarray, rng: object) -> object:
        return self.simulator(theta, rng) if self.rng else self.simulator(theta)

    def _arguments(self, theta: Tensor) -> Tensor | np.ndarray:
        return theta.double().numpy() if self.numpy else theta

    def unbatched(self, theta: Tensor, seeds: np.ndarray, start: int) -> tuple[list, list[Failure]]:
        r"""Runs the chunk one simulation per call, each with the global generators it draws
        from seeded from its own seed.

        Seeding all three generators costs about 6 µs a simulation, more than a cheap
        simulator's call, so only those that this simulator has been seen to draw from (in
        this process) are seeded. The chunk's first simulation gets all three, and shows
        which it draws from. The others are then set to a fixed state and checked at the
        end of the chunk: if one has moved, a later simulation drew from it unseeded (a
        simulator that draws from a generator for some parameters only), so the generator
        joins the seeded ones and the chunk runs again, once. A simulation that never draws
        from a generator gives the same output whatever that generator's state, so the data
        are bit for bit those of seeding all three for every simulation. A chunk of fewer
        than ``_MIN_CHECKED`` simulations, where the checks would cost more than they save,
        seeds all three for each.
        """

        arguments = list(self._arguments(theta)) if self.numpy else theta.unbind()
        while True:
            rows, failures, missed = self._unbatched_pass(arguments, seeds, start)
            if not missed:
                return rows, failures
            self.error = None

    def _unbatched_pass(self, arguments: list, seeds: np.ndarray, start: int) -> tuple[list, list[Failure], bool]:
        r"""One pass over the chunk; also returns whether a generator left unseeded was drawn from."""

        torch_keys, numpy_keys, python_keys = (stream_keys(seeds, s).tolist() for s in (TORCH, NUMPY, PYTHON))
        key = _simulator_key(self.simulator)
        # a short chunk seeds every generator for every simulation: the checks would cost more than they save
        seeded = _DRAWS_FROM.get(key, frozenset()) if len(arguments) >= _MIN_CHECKED else _GENERATORS
        unseeded, fixed = _GENERATORS - seeded, {}
        outputs, failures = [], []
        self.durations = durations = np.zeros(len(arguments))
        for k in range(len(arguments)):
            if k == 0 or TORCH in seeded:
                torch.default_generator.manual_seed(torch_keys[k])
            if k == 0 or NUMPY in seeded:  # numpy's legacy global generator takes 32-bit seeds; rng=True gives 64-bit
                np.random.seed(numpy_keys[k] & 0xFFFFFFFF)
            if k == 0 or PYTHON in seeded:
                random.seed(python_keys[k])
            if k == 0:
                fixed = {g: _state(g) for g in unseeded}
            rng = _generator(numpy_keys[k] if self.numpy else torch_keys[k], self.numpy) if self.rng else None
            began = time.perf_counter()
            try:
                outputs.append(self._call(arguments[k], rng))
            except Exception as error:  # noqa: BLE001 - recorded as a failed simulation
                outputs.append(None)
                failures.append(self._failed(start + k, error))
            durations[k] = time.perf_counter() - began
            if self.progress is not None:
                self.progress(k + 1)
            if k == 0 and unseeded:  # what the first simulation drew from is seeded for the rest
                drawn = frozenset(g for g in unseeded if _state(g) != fixed[g])
                seeded = _DRAWS_FROM[key] = seeded | drawn
                unseeded = _GENERATORS - seeded
                fixed = _fix_states(unseeded)
        missed = frozenset(g for g in fixed if _state(g) != fixed[g])
        if missed:
            _DRAWS_FROM[key] = seeded | missed
        return _as_rows(outputs, failures, start), failures, bool(missed)

    def _invoke(self, theta: Tensor, seeds: np.ndarray) -> tuple[Tensor, bool]:
        torch_keys = stream_keys(seeds, TORCH)
        size = len(seeds)
        np.random.seed(batch_seed(stream_keys(seeds, NUMPY), size) & 0xFFFFFFFF)
        random.seed(batch_seed(stream_keys(seeds, PYTHON), size))
        rng = None
        if self.rng:
            keys = stream_keys(seeds, NUMPY if self.numpy else TORCH).tolist()
            rng = [_generator(key, self.numpy) for key in keys]
        mode = RowStreams(torch_keys, batch_seed(torch_keys, size))
        before = _global_fingerprint()
        with mode:
            out = self._call(self._arguments(theta), rng)
        self.global_draws |= _global_fingerprint() != before
        out = as_float_tensor(out, "the simulator's output")
        if out.ndim == 0 or out.shape[0] != size:
            got = "a scalar" if out.ndim == 0 else f"{out.shape[0]} rows (shape {tuple(out.shape)})"
            raise SimulatorShapeError(
                f"the simulator returned {got} for a batch of {size} parameter sets; a batched "
                "simulator must return one row per row of theta (pass batched=False for a function "
                "of one parameter vector)."
            )
        return (out.unsqueeze(-1) if out.ndim == 1 else out), mode.unattributed

    def batched_call(self, theta: Tensor, seeds: np.ndarray, start: int) -> tuple[Tensor | list, list[Failure], bool]:
        r"""Runs a batch; if it raises, runs its rows one by one so only failing rows are lost."""

        began = time.perf_counter()
        try:
            out, unattributed = self._invoke(theta, seeds)
        except SimulatorShapeError:
            raise
        except Exception:  # noqa: BLE001 - a failing batch is retried row by row
            pass
        else:
            self.durations = np.full(len(theta), (time.perf_counter() - began) / len(theta))
            if self.progress is not None:
                self.progress(len(theta))
            return out, [], unattributed
        rows, failures, unattributed = [], [], False
        self.durations = durations = np.zeros(len(theta))
        for k in range(len(theta)):
            began = time.perf_counter()
            try:
                out, flag = self._invoke(theta[k : k + 1], seeds[k : k + 1])
            except Exception as error:  # noqa: BLE001 - recorded as a failed simulation
                rows.append(None)
                failures.append(self._failed(start + k, error))
            else:
                rows.append(out[0])
                unattributed |= flag
            durations[k] = time.perf_counter() - began
            if self.progress is not None:
                self.progress(k + 1)
        return rows, failures, unattributed


def _as_rows(outputs: list, failures: list[Failure], start: int) -> Tensor | list:
    r"""Converts one output per simulation (None where it raised) to float tensors.

    Outputs of one type and shape are stacked in one conversion; otherwise each is
    converted on its own, and one that is not numeric is recorded as a failure.
    """

    done = [out for out in outputs if out is not None]
    if done and len(done) == len(outputs):
        kind = type(done[0])
        if kind in (np.ndarray, Tensor) and all(type(o) is kind and o.shape == done[0].shape for o in done):
            try:
                stacked = as_float_tensor(np.stack(done) if kind is np.ndarray else torch.stack(done), "the simulator's output")
            except TypeError:
                pass
            else:
                return stacked.unsqueeze(-1) if stacked.ndim == 1 else stacked
    rows = []
    for k, out in enumerate(outputs):
        if out is None:
            rows.append(None)
            continue
        try:
            out = as_float_tensor(out, "the simulator's output")
        except TypeError as error:
            rows.append(None)
            failures.append(exception_failure(start + k, error))
        else:
            rows.append(out.reshape(1) if out.ndim == 0 else out)
    return rows


_GENERATORS = frozenset((TORCH, NUMPY, PYTHON))
_DRAWS_FROM: dict[tuple, frozenset] = {}  # per process: the global generators each simulator drew from
_FIXED_SEED = 0x5EED
_FIXED_STATES: dict[int, object] = {}  # each generator's state after seeding with _FIXED_SEED
# an unbatched chunk of fewer simulations seeds all three generators for each: the checks cost
# about 100 µs a chunk (numpy's state alone takes 23 µs to read), the seedings it saves 5 µs each
_MIN_CHECKED = 32


def _simulator_key(simulator: Callable) -> tuple:
    r"""Names a simulator across the copies that workers unpickle. Two simulators that share
    a name share what is seeded for them, which only seeds more than one of them needs."""

    function = getattr(simulator, "func", simulator)  # a functools.partial names its function
    return (getattr(function, "__module__", None), getattr(function, "__qualname__", type(function).__qualname__))


def _fix_states(generators: frozenset) -> dict:
    r"""Seeds each of ``generators`` with a fixed seed; returns their states."""

    if TORCH in generators:
        torch.default_generator.manual_seed(_FIXED_SEED)
    if NUMPY in generators:
        np.random.seed(_FIXED_SEED)
    if PYTHON in generators:
        random.seed(_FIXED_SEED)
    for g in generators:  # the same every time: read once
        if g not in _FIXED_STATES:
            _FIXED_STATES[g] = _state(g)
    return {g: _FIXED_STATES[g] for g in generators}


def _state(generator: int) -> object:
    r"""A comparable snapshot of one global generator's state."""

    if generator == TORCH:
        return torch.get_rng_state().numpy().tobytes()
    if generator == NUMPY:
        state = np.random.get_state()
        return state[1].tobytes(), state[2], state[3], state[4]
    return random.getstate()


def _global_fingerprint() -> tuple:
    r"""Identifies the state of numpy's and Python's global generators."""

    return _state(NUMPY), _state(PYTHON)


def _check_shapes(shapes: set) -> torch.Size:
    if len(shapes) > 1:
        raise ValueError(
            f"the simulator returned outputs of shapes {sorted(tuple(s) for s in shapes)}; every "
            "simulation must return the same shape (pad variable-size outputs)."
        )
    return next(iter(shapes))


def _widen(value: Tensor, width: int, fill: float | bool) -> Tensor:
    r"""Pads ``value`` along its second axis to ``width`` entries of ``fill``."""

    extra = width - value.shape[1]
    if extra == 0:
        return value
    return torch.cat([value, torch.full((value.shape[0], extra, *value.shape[2:]), fill, dtype=value.dtype)], 1)


def stack_outputs(parts: list[tuple[int, Tensor | None, Tensor | None, Tensor | None]], width: int = 0,
                  ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    r"""Stacks consecutive pieces of a run, ``(rows, x, mask, local)`` each, into :math:`x`, the
    mask and the local parameters of all their rows.

    A piece without outputs (every simulation in it failed, or has not run) gives NaN
    rows. Pieces of a structured model (with a mask) are padded along the member or
    time axis to the widest piece, and to at least ``width``: with zeros in :math:`x`
    and the local parameters, and False in the mask, so that a piece without outputs
    has no member present. Unstructured outputs must share their shape.

    Returns:
        :math:`x`, or None if no piece has outputs; the mask and the local parameters,
        or None where the pieces have none.

    Raises:
        ValueError: If the pieces' outputs differ in shape (beyond the padded axis).
    """

    present = [(x, mask, local) for _, x, mask, local in parts if x is not None]
    if not present:
        return None, None, None
    if all(mask is None for _, mask, _ in present):
        shape = _check_shapes({x.shape[1:] for x, _, _ in present})
        x = torch.cat([x if x is not None else torch.full((n, *shape), torch.nan) for n, x, _, _ in parts])
        return x, None, None
    width = max([width] + [x.shape[1] for x, _, _ in present])
    features = _check_shapes({x.shape[2:] for x, _, _ in present})
    x = torch.cat([_widen(x, width, 0.0) if x is not None else torch.full((n, width, *features), torch.nan)
                   for n, x, _, _ in parts])
    mask = torch.cat([_widen(m, width, False) if x is not None else torch.zeros((n, width), dtype=torch.bool)
                      for n, x, m, _ in parts])
    local = None
    if any(local is not None for _, _, local in present):
        k = _check_shapes({local.shape[2:] for _, _, local in present if local is not None})
        local = torch.cat([_widen(u, width, 0.0) if u is not None else torch.full((n, width, *k), torch.nan)
                           for n, _, _, u in parts])
    return x, mask, local


def _assemble(rows: Tensor | list, failures: list[Failure], start: int) -> Tensor | None:
    r"""Stacks the rows (a list with None for failures, or a whole batch), with NaN
    rows for failures, and records non-finite outputs."""

    if isinstance(rows, Tensor):
        x = rows
    else:
        shapes = {row.shape for row in rows if row is not None}
        if not shapes:
            return None
        nan = torch.full(_check_shapes(shapes), torch.nan)
        x = torch.stack([nan if row is None else row for row in rows])
    finite = torch.isfinite(x.flatten(1))
    failed = {f.index for f in failures}
    for k in (~finite.all(1)).nonzero().flatten().tolist():
        if start + k not in failed:
            kind = "nan" if bool(torch.isnan(x[k]).any()) else "inf"
            failures.append(Failure(start + k, kind, f"output contains {'NaN' if kind == 'nan' else 'inf'}"))
    failures.sort(key=lambda f: f.index)
    return x


def run_chunk(
    simulator: Callable,
    prior: Distribution,
    root: int,
    start: int,
    stop: int,
    *,
    theta: Tensor | None = None,
    batched: bool = True,
    numpy: bool = False,
    rng: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Chunk:
    r"""Runs simulations ``start`` to ``stop - 1`` of the run with root seed ``root``.

    The global random generators of torch, numpy and ``random`` are left as they were.
    See :func:`sbikit.simulate` for the arguments.

    Arguments:
        theta: The chunk's parameters, :math:`(stop - start, D)`, as drawn up front by
            the run; None draws them here (the same values).
        progress: Called with the number of simulations done so far in the chunk,
            after each simulator call (a worker's heartbeat, for timeouts).

    Example:
        >>> prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> chunk = run_chunk(lambda t: 2 * t, prior, root=0, start=5, stop=8)
        >>> torch.equal(chunk.x, 2 * chunk.theta), chunk.durations.shape
        (True, (3,))
    """

    seeds = simulation_seeds(root, np.arange(start, stop))
    if theta is None:
        theta = draw_prior(prior, seeds)
    runner = _Runner(simulator, batched, numpy, rng, progress)
    with _GLOBAL_STATE, isolated_global_generators():
        if batched:
            rows, failures, unattributed = runner.batched_call(theta, seeds, start)
        else:
            rows, failures = runner.unbatched(theta, seeds, start)
            unattributed = False
    x = _assemble(rows, failures, start)
    return Chunk(theta, x, failures, unattributed, runner.global_draws, runner.durations, runner.error)


def run_model_chunk(
    model: object,
    prior: Distribution,
    root: int,
    start: int,
    stop: int,
    *,
    theta: Tensor | None = None,
    batched: bool = True,
    numpy: bool = False,
    rng: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Chunk:
    r"""Runs simulations ``start`` to ``stop - 1`` of a structured model
    (:class:`sbikit.MixedEffects`, :class:`sbikit.StateSpace`), as :func:`run_chunk` does a
    simulator's: the chunk's sets or series come padded to its widest row, with
    ``Chunk.mask``, and for mixed effects the members' local parameters in ``Chunk.local``.

    ``prior`` is the model's (executors read it from the chunk function's arguments),
    and ``batched``, ``numpy`` and ``rng`` do not apply. The model draws the chunk's
    parameters itself, from the same seeds and so with the same values as ``theta``.
    """

    began = time.perf_counter()
    with _GLOBAL_STATE:
        drawn, x, mask, local, failures, unattributed = model.padded_chunk(root, start, stop)
    n = stop - start
    if progress is not None:
        progress(n)
    durations = np.full(n, (time.perf_counter() - began) / n)
    return Chunk(drawn if theta is None else theta, x, failures, unattributed, durations=durations, mask=mask,
                 local=local)
