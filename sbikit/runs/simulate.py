r"""Running a user's simulator over draws from the prior.

A run is a loop over chunks of consecutive indices. :func:`run_chunk` is a pure
function of the simulator, the prior, the root seed and the indices: it draws the
chunk's parameters, runs the simulator and returns parameters, outputs and
failures, so the result of a chunk never depends on the chunks around it.

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

__all__ = ["Chunk", "run_chunk", "simulate"]

import collections
import contextlib
import numpy as np
import random
import torch
import warnings

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from .randomness import RowStreams, warn_unattributed
from .seeds import NUMPY, PRIOR, PYTHON, TORCH, mix64, root_seed, simulation_seeds, stream_keys
from .._checks import check_count
from ..data import Failure, Simulations, as_float_tensor
from ..priors import check_prior


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
    """

    theta: Tensor
    x: Tensor | None
    failures: list[Failure] = field(default_factory=list)
    unattributed: bool = False
    global_draws: bool = False


def _batch_seed(keys: np.ndarray, size: int) -> int:
    r"""A seed for draws that belong to a whole batch: its first key and its size."""

    return int(mix64(keys[:1] ^ np.uint64(size))[0] >> np.uint64(1))


def draw_prior(prior: Distribution, seeds: np.ndarray) -> Tensor:
    r"""Draws :math:`\theta_i` from each simulation's prior stream, :math:`(n, D)`.

    The draw is vectorized; a prior whose sampler makes draws without a leading
    batch dimension is drawn again row by row, so that :math:`\theta_i` never
    depends on the batch.
    """

    keys = stream_keys(seeds, PRIOR)
    mode = RowStreams(keys, _batch_seed(keys, len(keys)))
    with torch.no_grad(), mode:
        theta = prior.sample((len(keys),))
    if not mode.unattributed:
        return theta
    rows = []
    for i in range(len(keys)):
        with torch.no_grad(), RowStreams(keys[i : i + 1], _batch_seed(keys[i : i + 1], 1)):
            rows.append(prior.sample((1,)))
    return torch.cat(rows)


@contextlib.contextmanager
def _isolated_global_generators() -> Iterator[None]:
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


def _error(index: int, error: Exception) -> Failure:
    return Failure(index, "exception", f"{type(error).__name__}: {error}")


class _Runner:
    r"""Calls the simulator on one chunk and turns its outputs into rows."""

    def __init__(self, simulator: Callable, batched: bool, numpy: bool, rng: bool) -> None:
        self.simulator = simulator
        self.batched = batched
        self.numpy = numpy
        self.rng = rng
        self.global_draws = False

    def _call(self, theta: Tensor | np.ndarray, rng: object) -> object:
        return self.simulator(theta, rng) if self.rng else self.simulator(theta)

    def _arguments(self, theta: Tensor) -> Tensor | np.ndarray:
        return theta.double().numpy() if self.numpy else theta

    def unbatched(self, theta: Tensor, seeds: np.ndarray, start: int) -> tuple[list, list[Failure]]:
        torch_keys, numpy_keys, python_keys = (stream_keys(seeds, s).tolist() for s in (TORCH, NUMPY, PYTHON))
        arguments = list(self._arguments(theta)) if self.numpy else theta.unbind()
        outputs, failures = [], []
        for k in range(len(theta)):
            torch.default_generator.manual_seed(torch_keys[k])
            # numpy's legacy global generator takes 32-bit seeds; rng=True gives 64-bit ones
            np.random.seed(numpy_keys[k] & 0xFFFFFFFF)
            random.seed(python_keys[k])
            rng = _generator(numpy_keys[k] if self.numpy else torch_keys[k], self.numpy) if self.rng else None
            try:
                outputs.append(self._call(arguments[k], rng))
            except Exception as error:  # noqa: BLE001 - recorded as a failed simulation
                outputs.append(None)
                failures.append(_error(start + k, error))
        return _as_rows(outputs, failures, start), failures

    def _invoke(self, theta: Tensor, seeds: np.ndarray) -> tuple[Tensor, bool]:
        torch_keys = stream_keys(seeds, TORCH)
        size = len(seeds)
        np.random.seed(_batch_seed(stream_keys(seeds, NUMPY), size) & 0xFFFFFFFF)
        random.seed(_batch_seed(stream_keys(seeds, PYTHON), size))
        rng = None
        if self.rng:
            keys = stream_keys(seeds, NUMPY if self.numpy else TORCH).tolist()
            rng = [_generator(key, self.numpy) for key in keys]
        mode = RowStreams(torch_keys, _batch_seed(torch_keys, size))
        before = _global_fingerprint()
        with mode:
            out = self._call(self._arguments(theta), rng)
        self.global_draws |= _global_fingerprint() != before
        out = as_float_tensor(out, "the simulator's output")
        if out.ndim == 0 or out.shape[0] != size:
            got = "a scalar" if out.ndim == 0 else f"{out.shape[0]} rows (shape {tuple(out.shape)})"
            raise _RowCountError(
                f"the simulator returned {got} for a batch of {size} parameter sets; a batched "
                "simulator must return one row per row of theta (pass batched=False for a function "
                "of one parameter vector)."
            )
        return (out.unsqueeze(-1) if out.ndim == 1 else out), mode.unattributed

    def batched_call(self, theta: Tensor, seeds: np.ndarray, start: int) -> tuple[Tensor | list, list[Failure], bool]:
        r"""Runs a batch; if it raises, runs its rows one by one so only failing rows are lost."""

        try:
            out, unattributed = self._invoke(theta, seeds)
        except _RowCountError:
            raise
        except Exception:  # noqa: BLE001 - a failing batch is retried row by row
            pass
        else:
            return out, [], unattributed
        rows, failures, unattributed = [], [], False
        for k in range(len(theta)):
            try:
                out, flag = self._invoke(theta[k : k + 1], seeds[k : k + 1])
            except Exception as error:  # noqa: BLE001 - recorded as a failed simulation
                rows.append(None)
                failures.append(_error(start + k, error))
            else:
                rows.append(out[0])
                unattributed |= flag
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
            failures.append(_error(start + k, error))
        else:
            rows.append(out.reshape(1) if out.ndim == 0 else out)
    return rows


class _RowCountError(ValueError):
    r"""A batched simulator returned the wrong number of rows: a bug, not a failed simulation."""


def _global_fingerprint() -> tuple:
    r"""Identifies the state of numpy's and Python's global generators."""

    state = np.random.get_state()
    return state[1].tobytes(), state[2], random.getstate()


def _check_shapes(shapes: set) -> torch.Size:
    if len(shapes) > 1:
        raise ValueError(
            f"the simulator returned outputs of shapes {sorted(tuple(s) for s in shapes)}; every "
            "simulation must return the same shape (pad variable-size outputs)."
        )
    return next(iter(shapes))


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
    batched: bool = True,
    numpy: bool = False,
    rng: bool = False,
) -> Chunk:
    r"""Runs simulations ``start`` to ``stop - 1`` of the run with root seed ``root``.

    The global random generators of torch, numpy and ``random`` are left as they were.
    See :func:`simulate` for the arguments.
    """

    seeds = simulation_seeds(root, np.arange(start, stop))
    theta = draw_prior(prior, seeds)
    runner = _Runner(simulator, batched, numpy, rng)
    with _isolated_global_generators():
        if batched:
            rows, failures, unattributed = runner.batched_call(theta, seeds, start)
        else:
            rows, failures = runner.unbatched(theta, seeds, start)
            unattributed = False
    x = _assemble(rows, failures, start)
    return Chunk(theta, x, failures, unattributed, runner.global_draws)


def _summary(failures: list[Failure], total: int) -> str:
    kinds = collections.Counter(f.kind for f in failures)
    text = (
        f"{len(failures)} of {total} simulations failed ({kinds['exception']} raised, "
        f"{kinds['nan']} returned NaN, {kinds['inf']} returned inf); they are recorded in "
        "Simulations.failures and excluded from training."
    )
    messages = collections.Counter(f.message.splitlines()[0] if f.message else f.kind for f in failures)
    common = "; ".join(f"{count} x {message}" for message, count in messages.most_common(3))
    return f"{text} Most common: {common}."


def simulate(
    simulator: Callable,
    prior: Distribution | None = None,
    num_simulations: int | None = None,
    *,
    seed: int | None = None,
    batched: bool = True,
    numpy: bool = False,
    rng: bool = False,
    batch_size: int = 1000,
    show_progress: bool | None = None,
) -> Simulations:
    r"""Draws parameters from the prior and runs the simulator on them.

    Simulation :math:`i` takes its parameters and its noise from streams derived
    from its own seed (:func:`sbikit.runs.simulation_seed`), so the same ``seed``
    gives the same simulations whatever ``batch_size``:

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

    Simulations that raise, or return NaN or inf, are recorded in
    :attr:`Simulations.failures`, kept as NaN rows, and excluded by estimators.

    Arguments:
        simulator: A function of parameters :math:`(B, D) \to (B, *)` when
            ``batched``, else of one parameter vector :math:`(D,) \to (*)`; or a
            structured model (:class:`sbikit.MixedEffects`), which holds its prior:
            ``simulate(model, num_simulations, seed=...)``.
        prior: The prior, a distribution over :math:`(D,)` with a support.
        num_simulations: The number of simulations :math:`N`.
        seed: The root seed; fresh entropy if None (recorded in the result).
        batched: Whether ``simulator`` takes a batch of parameter vectors.
        numpy: Whether ``simulator`` takes numpy arrays (float64) instead of tensors.
        rng: Whether ``simulator`` takes a second argument, its random generator(s).
        batch_size: The number of simulations per call (or per progress step).
        show_progress: Whether to show a progress bar; None shows one on a terminal.

    Returns:
        The simulations, with :math:`\theta` :math:`(N, D)` and :math:`x` :math:`(N, *)`.

    Example:
        >>> prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 10, seed=0)
        >>> data.theta.shape, data.x.shape
        (torch.Size([10, 2]), torch.Size([10, 2]))
    """

    if getattr(simulator, "structure", None) is not None and hasattr(simulator, "simulate"):
        # a structured model (sbikit.MixedEffects) holds its prior and draws its own structure
        if isinstance(prior, (int, np.integer)) and not isinstance(prior, bool) and num_simulations is None:
            prior, num_simulations = None, prior  # simulate(model, 5_000)
        if prior is not None:
            raise TypeError(
                f"{type(simulator).__name__} holds its own prior; call sbikit.simulate(model, num_simulations, ...)."
            )
        if not (batched and not numpy and not rng):
            raise TypeError(f"batched, numpy and rng do not apply to a {type(simulator).__name__}.")
        return simulator.simulate(num_simulations, seed=seed, batch_size=batch_size, show_progress=show_progress)
    if not callable(simulator):
        raise TypeError(f"simulator must be callable, got {type(simulator).__name__}.")
    if prior is None:
        raise TypeError("simulate needs a prior: sbikit.simulate(simulator, prior, num_simulations).")
    prior = check_prior(prior)
    num_simulations = check_count(num_simulations, "num_simulations")
    batch_size = check_count(batch_size, "batch_size")
    root = root_seed(seed)
    options = {"batched": bool(batched), "numpy": bool(numpy), "rng": bool(rng)}

    chunks = []
    disable = None if show_progress is None else not show_progress
    with tqdm(total=num_simulations, desc="simulating", unit="sim", disable=disable) as bar:
        for start in range(0, num_simulations, batch_size):
            stop = min(start + batch_size, num_simulations)
            chunks.append(run_chunk(simulator, prior, root, start, stop, **options))
            bar.update(stop - start)

    failures = [f for c in chunks for f in c.failures]
    shapes = {c.x.shape[1:] for c in chunks if c.x is not None}
    if not shapes:
        raise RuntimeError(f"all {num_simulations} simulations raised an exception. {_summary(failures, num_simulations)}")
    x_shape = _check_shapes(shapes)
    x = torch.cat([c.x if c.x is not None else torch.full((len(c.theta), *x_shape), torch.nan) for c in chunks])
    if any(c.unattributed for c in chunks):
        warn_unattributed()
    if any(c.global_draws for c in chunks):
        warnings.warn(
            "the batched simulator drew from numpy's or Python's global random generator, which "
            "sbikit seeds once per batch: these simulations are reproducible for this batch size "
            "only. Pass rng=True and draw from the generators it hands the simulator, or draw "
            "with torch, for simulations that do not depend on the batch size.",
            RuntimeWarning,
            stacklevel=2,
        )
    if failures:
        warnings.warn(_summary(failures, num_simulations), RuntimeWarning, stacklevel=2)
    return Simulations(theta=torch.cat([c.theta for c in chunks]), x=x, seed=root, failures=tuple(failures))
