r"""Running a user's simulator over draws from the prior."""

__all__ = ["simulate"]

import torch
import warnings

from collections.abc import Callable
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from .randomness import RowwiseRandomness, warn_unattributed
from .seeds import root_seed, seeded, simulation_seed
from .._checks import check_count
from ..data import Failure, Simulations, as_float_tensor
from ..priors import check_prior


def _draw(prior: Distribution, root: int, indices: range) -> tuple[Tensor, list[Tensor]]:
    r"""Draws :math:`\theta_i` from simulation :math:`i`'s own seed; returns the
    parameters and each row's generator state after the draw."""

    thetas, states = [], []
    with torch.random.fork_rng(devices=[]):
        for i in indices:
            torch.manual_seed(simulation_seed(root, i))
            thetas.append(prior.sample())
            states.append(torch.get_rng_state())
    return torch.stack(thetas), states


class _Runner:
    r"""Calls the simulator on one batch and turns its output into rows."""

    def __init__(self, simulator: Callable, root: int, batched: bool, numpy: bool) -> None:
        self.simulator = simulator
        self.root = root
        self.batched = batched
        self.numpy = numpy
        self.x_shape: torch.Size | None = None
        self.unattributed = False

    def _call(self, theta: Tensor) -> object:
        if self.numpy:
            return self.simulator(theta.double().numpy())
        return self.simulator(theta)

    def _check_shape(self, shape: torch.Size) -> None:
        if self.x_shape is None:
            self.x_shape = shape
        elif shape != self.x_shape:
            raise ValueError(
                f"the simulator returned outputs of shape {tuple(shape)} after earlier outputs of "
                f"shape {tuple(self.x_shape)}; every simulation must return the same shape "
                "(pad variable-size outputs)."
            )

    def batch(self, theta: Tensor, states: list[Tensor], first: int) -> tuple[Tensor, list[Failure]]:
        r"""Returns outputs :math:`(B, *)` (NaN rows where failed) and the failures."""

        if not self.batched:
            rows = [self.row(theta[k], states[k], first + k) for k in range(len(theta))]
            return self._assemble(rows, len(theta), first)
        try:
            out = self._invoke(theta, states, first)
        except Exception:  # noqa: BLE001 - a failing batch is retried row by row
            rows = []
            for k in range(len(theta)):
                try:
                    one = self._invoke(theta[k : k + 1], states[k : k + 1], first + k)
                except Exception as error:  # noqa: BLE001 - recorded as a failed simulation
                    rows.append((None, Failure(first + k, "exception", f"{type(error).__name__}: {error}")))
                else:
                    rows.append((self._rows(one, 1), None))
        else:
            rows = [(self._rows(out, len(theta)), None)]
        return self._assemble(rows, len(theta), first)

    def _invoke(self, theta: Tensor, states: list[Tensor], first: int) -> object:
        mode = RowwiseRandomness([s.clone() for s in states], simulation_seed(self.root, first) ^ len(theta))
        with seeded(simulation_seed(self.root, first)), mode:
            out = self._call(theta)
        self.unattributed |= mode.unattributed
        return out

    def _rows(self, out: object, size: int) -> Tensor:
        out = as_float_tensor(out, "the simulator's output")
        if out.ndim == 0 or out.shape[0] != size:
            got = "a scalar" if out.ndim == 0 else f"{out.shape[0]} rows (shape {tuple(out.shape)})"
            raise ValueError(
                f"the simulator returned {got} for a batch of {size} parameter sets; a batched "
                "simulator must return one row per row of theta (pass batched=False for a function "
                "of one parameter vector)."
            )
        if out.ndim == 1:
            out = out.unsqueeze(-1)
        self._check_shape(out.shape[1:])
        return out

    def row(self, theta: Tensor, state: Tensor, index: int) -> tuple[Tensor | None, Failure | None]:
        try:
            with seeded(simulation_seed(self.root, index)):
                torch.set_rng_state(state)
                out = self._call(theta)
        except Exception as error:  # noqa: BLE001 - recorded as a failed simulation
            return None, Failure(index, "exception", f"{type(error).__name__}: {error}")
        out = as_float_tensor(out, "the simulator's output")
        out = out.reshape(1) if out.ndim == 0 else out
        self._check_shape(out.shape)
        return out.unsqueeze(0), None

    def _assemble(self, rows: list, size: int, first: int) -> tuple[Tensor | None, list[Failure]]:
        failures = [f for _, f in rows if f is not None]
        if self.x_shape is None:
            return None, failures
        out = torch.full((size, *self.x_shape), torch.nan)
        k = 0
        for x, _ in rows:
            if x is not None:
                out[k : k + len(x)] = x
                k += len(x)
            else:
                k += 1
        failed = {f.index for f in failures}
        flat = out.flatten(1)
        for k in range(size):
            if first + k in failed:
                continue
            if torch.isnan(flat[k]).any():
                failures.append(Failure(first + k, "nan", "output contains NaN"))
            elif torch.isinf(flat[k]).any():
                failures.append(Failure(first + k, "inf", "output contains inf"))
        return out, failures


def simulate(
    simulator: Callable,
    prior: Distribution,
    num_simulations: int,
    *,
    seed: int | None = None,
    batched: bool = True,
    numpy: bool = False,
    batch_size: int = 1000,
    show_progress: bool | None = None,
) -> Simulations:
    r"""Draws parameters from the prior and runs the simulator on them.

    Simulation :math:`i` takes its parameters and noise from its own seed
    (:func:`sbikit.runs.simulation_seed`), so the same ``seed`` gives the same
    simulations whatever ``batch_size``. For batched torch simulators, torch's
    random functions are evaluated row by row with each row's stream; numpy's
    global generator is seeded per call, so batched numpy simulators are
    reproducible for a fixed batch size only.

    Simulations that raise, or return NaN or inf, are recorded in
    :attr:`Simulations.failures`, kept as NaN rows, and excluded by estimators.

    Arguments:
        simulator: A function of parameters :math:`(B, D) \to (B, *)` when
            ``batched``, else of one parameter vector :math:`(D,) \to (*)`.
        prior: The prior, a distribution over :math:`(D,)` with a support.
        num_simulations: The number of simulations :math:`N`.
        seed: The root seed; fresh entropy if None (recorded in the result).
        batched: Whether ``simulator`` takes a batch of parameter vectors.
        numpy: Whether ``simulator`` takes numpy arrays (float64) instead of tensors.
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

    if not callable(simulator):
        raise TypeError(f"simulator must be callable, got {type(simulator).__name__}.")
    prior = check_prior(prior)
    num_simulations = check_count(num_simulations, "num_simulations")
    batch_size = check_count(batch_size, "batch_size")
    root = root_seed(seed)
    runner = _Runner(simulator, root, batched=bool(batched), numpy=bool(numpy))

    thetas, outputs, failures = [], [], []
    disable = None if show_progress is None else not show_progress
    with tqdm(total=num_simulations, desc="simulating", unit="sim", disable=disable) as bar:
        for first in range(0, num_simulations, batch_size):
            indices = range(first, min(first + batch_size, num_simulations))
            theta, states = _draw(prior, root, indices)
            out, failed = runner.batch(theta, states, first)
            thetas.append(theta)
            outputs.append(out)
            failures.extend(failed)
            bar.update(len(indices))

    if runner.x_shape is None:
        raise RuntimeError(
            f"all {num_simulations} simulations raised an exception; the first: {failures[0].message}"
        )
    x = torch.cat([
        o if o is not None else torch.full((len(t), *runner.x_shape), torch.nan)
        for o, t in zip(outputs, thetas)
    ])
    failures.sort(key=lambda f: f.index)
    if runner.unattributed:
        warn_unattributed()
    if failures:
        kinds = {k: sum(f.kind == k for f in failures) for k in ("exception", "nan", "inf")}
        warnings.warn(
            f"{len(failures)} of {num_simulations} simulations failed ({kinds['exception']} raised, "
            f"{kinds['nan']} returned NaN, {kinds['inf']} returned inf); they are recorded in "
            "Simulations.failures and excluded from training.",
            RuntimeWarning,
            stacklevel=2,
        )
    return Simulations(theta=torch.cat(thetas), x=x, seed=root, failures=tuple(failures))
