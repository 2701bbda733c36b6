r"""Structured simulators: mixed effects (a group and its members) and state-space models
(a hidden state in time).

A :class:`MixedEffects` model draws, for each simulation :math:`i`,

- global parameters :math:`Y_G \sim p(Y_G)`,
- a number of members :math:`M_i`,
- local parameters :math:`Y_{Lj} \sim p(Y_L | Y_G)` for each member :math:`j`,
- and an observation :math:`x_j \sim p(x | Y_G, Y_{Lj})` per member.

``sbikit.simulate(model, num_simulations, seed=...)`` returns
:class:`sbikit.Simulations` with ``structure="set"``: :math:`\theta` holds the
global parameters, :math:`x` the members padded to the largest count, ``mask``
which members are present, and ``theta_local`` their local parameters.

Every random draw of simulation :math:`i` comes from streams derived from its own
seed, and member :math:`j`'s draws from streams derived from that seed and
:math:`j`, so the same seed gives the same simulations whatever the batch size.
"""

__all__ = ["MixedEffects", "StateSpace", "euler_maruyama"]

import numpy as np
import torch
import warnings

from collections.abc import Callable
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from ._checks import check_count
from .data import Failure, Simulations, as_float_tensor
from .priors import check_prior
from .runs.randomness import RowStreams, warn_unattributed
from .runs.seeds import NUMPY, PRIOR, TORCH, mix64, root_seed, simulation_seeds, stream_keys
from .runs.simulate import _batch_seed, _isolated_global_generators, _summary, draw_prior

_MEMBER = np.uint64(0xD1B54A32D192ED03)  # separates member streams from the simulation's own


class _ContractError(Exception):
    r"""A model's function returned something of the wrong type or shape: a bug to report, not a
    failed simulation to record."""


class _ShapeError(_ContractError, ValueError):
    pass


class _TypeError(_ContractError, TypeError):
    pass


def _float(value: object, name: str) -> Tensor:
    try:
        return as_float_tensor(value, name)
    except TypeError as error:
        raise _TypeError(str(error)) from None


def _member_seeds(seeds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    r"""One seed per member: simulation :math:`i`'s seed mixed with the member's index."""

    owner = np.repeat(seeds, counts)
    index = np.concatenate([np.arange(c, dtype=np.uint64) for c in counts]) if len(counts) else np.zeros(0, np.uint64)
    return mix64(owner ^ mix64((index + np.uint64(1)) * _MEMBER))


def _record_nonfinite(failures: list[Failure], rows, start: int, source: str) -> None:
    r"""Records each row (one tensor per simulation, from index ``start``) that holds NaN or inf
    and has not already failed."""

    failed = {f.index for f in failures}
    for i, values in enumerate(rows):
        if start + i in failed or bool(torch.isfinite(values).all()):
            continue
        kind = "nan" if bool(torch.isnan(values).any()) else "inf"
        failures.append(Failure(start + i, kind, f"{source} returned {kind}"))


def _run_chunks(model, num_simulations: int, seed: int | None, batch_size: int, show_progress, unit: str):
    r"""Runs ``model.run_chunk`` over consecutive chunks with a progress bar; returns the root seed
    and the chunks' results."""

    num_simulations = check_count(num_simulations, "num_simulations")
    batch_size = check_count(batch_size, "batch_size")
    root = root_seed(seed)
    chunks = []
    disable = None if show_progress is None else not show_progress
    with tqdm(total=num_simulations, desc="simulating", unit=unit, disable=disable) as bar:
        for start in range(0, num_simulations, batch_size):
            stop = min(start + batch_size, num_simulations)
            chunks.append(model.run_chunk(root, start, stop))
            bar.update(stop - start)
    return root, chunks


class MixedEffects:
    r"""A group of members with global and local parameters.

    Arguments:
        global_prior: The prior :math:`p(Y_G)` over :math:`(G,)`, with a support.
        local_prior: A function of global parameters :math:`(B, G)` returning the
            distribution :math:`p(Y_L | Y_G)` with batch shape :math:`(B,)` and event
            shape :math:`(K,)`.
        member_simulator: A batched function of global :math:`(B, G)` and local
            :math:`(B, K)` parameters returning members :math:`(B, L)` (or
            :math:`(B,)` for one feature). It draws its noise from torch's global
            functions, which are split into one stream per member.
        num_members: The members per group: an int, an inclusive range
            ``(low, high)`` drawn uniformly, or a function of a seeded
            :class:`numpy.random.Generator` returning an int.
        parameter_names: Names of the global parameters, for plots and arviz.

    Example:
        >>> from torch.distributions import Normal, Independent
        >>> model = MixedEffects(
        ...     global_prior=sbikit.BoxUniform(-torch.ones(1), torch.ones(1)),
        ...     local_prior=lambda g: Independent(Normal(g, 1.0), 1),
        ...     member_simulator=lambda g, l: l + 0.1 * torch.randn_like(l),
        ...     num_members=(2, 5),
        ... )
        >>> data = sbikit.simulate(model, num_simulations=4, seed=0)
        >>> data.x.shape, data.mask.shape, data.theta_local.shape
        (torch.Size([4, 5, 1]), torch.Size([4, 5]), torch.Size([4, 5, 1]))
    """

    structure = "set"

    def __init__(
        self,
        global_prior: Distribution,
        local_prior: Callable[[Tensor], Distribution],
        member_simulator: Callable[[Tensor, Tensor], Tensor],
        num_members: int | tuple[int, int] | Callable[[np.random.Generator], int],
        parameter_names: list[str] | None = None,
    ) -> None:
        self.global_prior = check_prior(global_prior, "global_prior")
        for name, value in (("local_prior", local_prior), ("member_simulator", member_simulator)):
            if not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}.")
        self.local_prior = local_prior
        self.member_simulator = member_simulator
        self.num_members = num_members
        self.max_members = self._check_members(num_members)
        self.parameter_names = parameter_names

    @property
    def prior(self) -> Distribution:
        r"""The prior of the parameters that NPE learns: the global prior."""

        return self.global_prior

    @staticmethod
    def _check_members(num_members: object) -> int | None:
        if callable(num_members):
            return None
        if isinstance(num_members, tuple) and len(num_members) == 2:
            low, high = (check_count(v, "num_members") for v in num_members)
            if low > high:
                raise ValueError(f"num_members = (low, high) needs low <= high, got {num_members!r}.")
            return high
        if isinstance(num_members, (int, np.integer)) and not isinstance(num_members, bool):
            return check_count(num_members, "num_members")
        raise TypeError(
            "num_members must be an int, an inclusive range (low, high) or a function of a numpy "
            f"Generator, got {num_members!r}."
        )

    def _counts(self, seeds: np.ndarray, start: int) -> np.ndarray:
        members = self.num_members
        if isinstance(members, (int, np.integer)):
            return np.full(len(seeds), int(members), dtype=np.int64)
        generators = [np.random.default_rng(int(k)) for k in stream_keys(seeds, NUMPY)]
        if isinstance(members, tuple):
            return np.array([g.integers(members[0], members[1] + 1) for g in generators], dtype=np.int64)
        counts = []
        for i, generator in enumerate(generators):
            value = members(generator)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(
                    f"num_members returned {value!r} for simulation {start + i}; it must return a positive int."
                )
            counts.append(int(value))
        return np.array(counts, dtype=np.int64)

    def _draw(self, function: Callable, keys: np.ndarray, *args: Tensor) -> tuple[Tensor, bool]:
        mode = RowStreams(keys, _batch_seed(keys, len(keys)))
        with torch.no_grad(), mode:
            out = function(*args)
        return out, mode.unattributed

    def _locals(self, g: Tensor, keys: np.ndarray) -> tuple[Tensor, bool]:
        def draw(g: Tensor) -> Tensor:
            distribution = self.local_prior(g)
            if not isinstance(distribution, Distribution):
                raise _TypeError(f"local_prior must return a torch Distribution, got {type(distribution).__name__}.")
            return distribution.sample()

        local, unattributed = self._draw(draw, keys, g)
        local = _float(local, "local_prior's sample")
        if local.ndim != 2 or local.shape[0] != len(g):
            raise _ShapeError(
                f"local_prior(g) for g of shape {tuple(g.shape)} must give samples ({len(g)}, K), "
                f"got {tuple(local.shape)}; wrap a scalar distribution in torch Independent."
            )
        return local, unattributed

    def _members(self, g: Tensor, local: Tensor, keys: np.ndarray) -> tuple[Tensor, bool]:
        x, unattributed = self._draw(self.member_simulator, keys, g, local)
        x = _float(x, "member_simulator's output")
        if x.ndim == 1:
            x = x.unsqueeze(-1)
        if x.ndim != 2 or x.shape[0] != len(g):
            raise _ShapeError(
                f"member_simulator must return members ({len(g)}, L) for {len(g)} members, got {tuple(x.shape)}."
            )
        return x, unattributed

    def run_chunk(self, root: int, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor, np.ndarray, list, bool]:
        r"""Simulates groups ``start`` to ``stop - 1``: global parameters :math:`(n, G)`, members
        :math:`(S, L)` and locals :math:`(S, K)` of all :math:`S` members in order, the counts
        :math:`(n,)`, the failures, and whether some draws could not be split per member."""

        seeds = simulation_seeds(root, np.arange(start, stop))
        theta = draw_prior(self.global_prior, seeds)
        counts = self._counts(seeds, start)
        members = _member_seeds(seeds, counts)
        g = theta.repeat_interleave(torch.from_numpy(counts), dim=0)
        failures, unattributed = [], False
        with _isolated_global_generators():
            try:
                local, u1 = self._locals(g, stream_keys(members, PRIOR))
                x, u2 = self._members(g, local, stream_keys(members, TORCH))
                unattributed = u1 or u2
            except _ContractError:
                raise
            except Exception:  # noqa: BLE001 - one group's error must not sink the others: retry each
                local, x, failures, unattributed = self._one_by_one(g, counts, members, start)
        _record_nonfinite(failures, x.split(counts.tolist()), start, "member_simulator")
        return theta, x, local, counts, failures, unattributed

    def _one_by_one(self, g: Tensor, counts: np.ndarray, members: np.ndarray, start: int):
        offsets = np.concatenate([[0], np.cumsum(counts)])
        locals_, xs, failures, unattributed = [], [], [], False
        for i in range(len(counts)):
            rows = slice(int(offsets[i]), int(offsets[i + 1]))
            try:
                local, u1 = self._locals(g[rows], stream_keys(members[rows], PRIOR))
                x, u2 = self._members(g[rows], local, stream_keys(members[rows], TORCH))
                unattributed |= u1 or u2
            except _ContractError:
                raise
            except Exception as error:  # noqa: BLE001 - recorded, counted and reported
                failures.append(Failure(start + i, "exception", f"{type(error).__name__}: {error}"))
                local, x = None, None
            locals_.append(local)
            xs.append(x)
        shapes = {(t.shape[1], u.shape[1]) for t, u in zip(xs, locals_) if t is not None}
        if not shapes:
            raise RuntimeError(f"all simulations {start} to {start + len(counts) - 1} raised: {failures[0].message}")
        width, k = shapes.pop()
        nan = float("nan")
        x = torch.cat([t if t is not None else torch.full((int(c), width), nan) for t, c in zip(xs, counts)])
        local = torch.cat([u if u is not None else torch.full((int(c), k), nan) for u, c in zip(locals_, counts)])
        return local, x, failures, unattributed

    def simulate(
        self,
        num_simulations: int,
        *,
        seed: int | None = None,
        batch_size: int = 1000,
        show_progress: bool | None = None,
    ) -> Simulations:
        r"""Simulates ``num_simulations`` groups; see :func:`sbikit.simulate`."""

        root, chunks = _run_chunks(self, num_simulations, seed, batch_size, show_progress, "group")
        theta = torch.cat([c[0] for c in chunks])
        counts = np.concatenate([c[3] for c in chunks])
        widths = {(c[1].shape[1], c[2].shape[1]) for c in chunks}
        if len(widths) > 1:
            raise ValueError(f"members have different numbers of features or local parameters: {sorted(widths)}.")
        width = max(int(counts.max()), self.max_members or 0)
        mask = torch.arange(width) < torch.from_numpy(counts).unsqueeze(1)
        x = torch.zeros(len(theta), width, chunks[0][1].shape[1])
        local = torch.zeros(len(theta), width, chunks[0][2].shape[1])
        x[mask] = torch.cat([c[1] for c in chunks])
        local[mask] = torch.cat([c[2] for c in chunks])
        failures = [f for c in chunks for f in c[4]]
        for f in failures:  # a failed group is a NaN row, whatever its members returned
            x[f.index, : counts[f.index]] = torch.nan
        if any(c[5] for c in chunks):
            warn_unattributed()
        if failures:
            warnings.warn(_summary(failures, num_simulations), RuntimeWarning, stacklevel=3)
        return Simulations(
            theta=theta, x=x, seed=root, failures=tuple(failures), mask=mask, structure="set", theta_local=local
        )

    def __repr__(self) -> str:
        return (
            f"MixedEffects(global_prior={self.global_prior!r}, num_members={self.num_members!r}, "
            f"local_prior={getattr(self.local_prior, '__name__', 'function')}, "
            f"member_simulator={getattr(self.member_simulator, '__name__', 'function')})"
        )


def euler_maruyama(drift: Callable, diffusion: Callable) -> Callable:
    r"""Returns the transition of the SDE :math:`dS = a(S, Y, t)\,dt + b(S, Y, t)\,dW` by one
    Euler–Maruyama step: :math:`S' = S + a\,\Delta t + b \sqrt{\Delta t}\,\varepsilon`.

    Arguments:
        drift: :math:`a`, a function of the state :math:`(B, S)`, the parameters :math:`(B, D)`
            and the time :math:`(B, 1)`, returning :math:`(B, S)`.
        diffusion: :math:`b`, the same arguments, returning :math:`(B, S)` (a diagonal noise).
    """

    def transition(state: Tensor, theta: Tensor, t: Tensor, dt: Tensor) -> Tensor:
        noise = torch.randn_like(state)
        return state + drift(state, theta, t) * dt + diffusion(state, theta, t) * dt.sqrt() * noise

    return transition


class StateSpace:
    r"""A hidden state :math:`S_t` that evolves in time and is observed with noise.

    For each simulation, :math:`S_0 \sim p(S_0 | Y)`; at each later time of the grid,
    :math:`S_k \sim p(S_k | S_{k-1}, Y, \Delta t_k)`; at every time,
    :math:`X_k \sim p(X_k | S_k, Y)`. Alternatively ``trajectory`` draws whole series.

    ``sbikit.simulate(model, n, seed=...)`` returns :class:`sbikit.Simulations` with
    ``structure="series"``: :math:`x` is :math:`(N, T, 1 + X)`, each step holding its
    time and then its observation, padded to the longest series, with ``mask`` marking
    the observed steps. A real observation is the same :math:`(T', 1 + X)` array for
    one series of any length :math:`T'`.

    Arguments:
        prior: The prior of the parameters :math:`Y`, over :math:`(D,)`.
        times: The observation times: an increasing 1-D tensor (the same grid for
            every simulation), or a function of a seeded :class:`numpy.random.Generator`
            returning one (irregular grids, varying lengths).
        initial: :math:`(B, D) \to (B, S)`, a draw of the initial state.
        transition: ``transition(state, theta, t, dt)`` with :math:`(B, S)`, :math:`(B, D)`,
            and the previous time and the step :math:`(B, 1)`, returning the next state;
            see :func:`euler_maruyama`.
        observation: ``observation(state, theta, t)`` returning :math:`(B, X)` (or :math:`(B,)`).
        trajectory: Instead of the three above, ``trajectory(theta, times)`` with times
            :math:`(B, T)` returning observations :math:`(B, T, X)` (or :math:`(B, T)`).
        parameter_names: Names of the parameters.

    Every function draws its noise from torch's global functions, which are split into
    one stream per simulation, so the same seed gives the same series whatever the
    batch size. Steps after the end of a shorter series are computed with
    :math:`\Delta t = 0` and discarded.
    """

    structure = "series"

    def __init__(
        self,
        prior: Distribution,
        times: Tensor | Callable[[np.random.Generator], object],
        initial: Callable | None = None,
        transition: Callable | None = None,
        observation: Callable | None = None,
        trajectory: Callable | None = None,
        parameter_names: list[str] | None = None,
    ) -> None:
        self.prior = check_prior(prior)
        stepwise = (initial, transition, observation)
        if trajectory is None and any(f is None for f in stepwise):
            raise TypeError("StateSpace needs initial, transition and observation, or a trajectory function.")
        if trajectory is not None and any(f is not None for f in stepwise):
            raise TypeError("pass either trajectory or initial, transition and observation, not both.")
        for name, f in (("initial", initial), ("transition", transition), ("observation", observation),
                        ("trajectory", trajectory)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}.")
        self.initial, self.transition, self.observation, self.trajectory = initial, transition, observation, trajectory
        self.times = times if callable(times) else self._check_times(times, "times")
        self.parameter_names = parameter_names

    @staticmethod
    def _check_times(times: object, name: str) -> Tensor:
        times = _float(times, name).double() if not isinstance(times, Tensor) else times.detach().double()
        if times.ndim != 1 or len(times) < 1:
            raise _ShapeError(f"{name} must be a 1-D tensor of at least one time, got shape {tuple(times.shape)}.")
        if not bool(torch.isfinite(times).all()) or not bool((times[1:] > times[:-1]).all()):
            raise _ShapeError(f"{name} must be finite and strictly increasing, got {times.tolist()[:8]}...")
        return times

    def _grids(self, seeds: np.ndarray, start: int) -> tuple[Tensor, Tensor]:
        r"""Times :math:`(n, T)`, padded with the last time, and the mask :math:`(n, T)`."""

        if isinstance(self.times, Tensor):
            grid = self.times.expand(len(seeds), -1)
            return grid.clone(), torch.ones(grid.shape, dtype=torch.bool)
        grids = []
        for i, key in enumerate(stream_keys(seeds, NUMPY)):
            times = self.times(np.random.default_rng(int(key)))
            grids.append(self._check_times(times, f"times(rng) of simulation {start + i}"))
        length = max(len(g) for g in grids)
        mask = torch.arange(length) < torch.tensor([len(g) for g in grids]).unsqueeze(1)
        padded = torch.stack([torch.cat([g, g[-1:].expand(length - len(g))]) for g in grids])
        return padded, mask

    def _observe(self, theta: Tensor, times: Tensor, keys: np.ndarray) -> tuple[Tensor, bool]:
        mode = RowStreams(keys, _batch_seed(keys, len(keys)))
        times = times.to(theta.dtype)
        with torch.no_grad(), mode:
            if self.trajectory is not None:
                x = _float(self.trajectory(theta, times), "trajectory's output")
                if x.ndim == 2:
                    x = x.unsqueeze(-1)
            else:
                state = _float(self.initial(theta), "initial's output")
                steps = []
                for k in range(times.shape[1]):
                    if k:
                        t, dt = times[:, k - 1 : k], times[:, k : k + 1] - times[:, k - 1 : k]
                        state = _float(self.transition(state, theta, t, dt), "transition's output")
                    y = _float(self.observation(state, theta, times[:, k : k + 1]), "observation's output")
                    steps.append(y.unsqueeze(-1) if y.ndim == 1 else y)
                x = torch.stack(steps, dim=1)
        if x.ndim != 3 or x.shape[:2] != times.shape:
            raise _ShapeError(
                f"the model returned observations of shape {tuple(x.shape)} for times {tuple(times.shape)}; "
                f"expected ({times.shape[0]}, {times.shape[1]}, X)."
            )
        return torch.cat([times.unsqueeze(-1).to(x.dtype), x], dim=-1), mode.unattributed

    def run_chunk(self, root: int, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor, list, bool]:
        r"""Simulates series ``start`` to ``stop - 1``: parameters, observations :math:`(n, T, 1 + X)`
        (NaN rows where a simulation failed), the mask, the failures, and whether some draws
        could not be split per series."""

        seeds = simulation_seeds(root, np.arange(start, stop))
        theta = draw_prior(self.prior, seeds)
        times, mask = self._grids(seeds, start)
        keys = stream_keys(seeds, TORCH)
        failures, unattributed = [], False
        with _isolated_global_generators():
            try:
                x, unattributed = self._observe(theta, times, keys)
            except _ContractError:
                raise
            except Exception:  # noqa: BLE001 - one series' error must not sink the others: retry each
                rows = []
                for i in range(len(seeds)):
                    length = int(mask[i].sum())
                    try:
                        row, flag = self._observe(theta[i : i + 1], times[i : i + 1, :length], keys[i : i + 1])
                        unattributed |= flag
                        rows.append(torch.cat([row[0], row[0, -1:].expand(times.shape[1] - length, -1)]))
                    except _ContractError:
                        raise
                    except Exception as error:  # noqa: BLE001 - recorded, counted and reported
                        failures.append(Failure(start + i, "exception", f"{type(error).__name__}: {error}"))
                        rows.append(None)
                width = next((r.shape[-1] for r in rows if r is not None), None)
                if width is None:
                    raise RuntimeError(f"all simulations {start} to {stop - 1} raised: {failures[0].message}")
                nan = torch.full((times.shape[1], width), torch.nan)
                x = torch.stack([r if r is not None else nan for r in rows])
        _record_nonfinite(failures, (row[present] for row, present in zip(x, mask)), start, "the model")
        return theta, x, mask, failures, unattributed

    def simulate(
        self,
        num_simulations: int,
        *,
        seed: int | None = None,
        batch_size: int = 1000,
        show_progress: bool | None = None,
    ) -> Simulations:
        r"""Simulates ``num_simulations`` series; see :func:`sbikit.simulate`."""

        root, chunks = _run_chunks(self, num_simulations, seed, batch_size, show_progress, "series")
        widths = {c[1].shape[-1] for c in chunks}
        if len(widths) > 1:
            raise ValueError(f"observations have different numbers of features across batches: {sorted(widths)}.")
        length = max(c[1].shape[1] for c in chunks)

        def pad(value: Tensor, fill: float | bool) -> Tensor:
            extra = length - value.shape[1]
            return torch.cat([value, torch.full((value.shape[0], extra, *value.shape[2:]), fill, dtype=value.dtype)], 1)

        x = torch.cat([pad(c[1], 0.0) for c in chunks])
        mask = torch.cat([pad(c[2], False) for c in chunks])
        failures = [f for c in chunks for f in c[3]]
        for f in failures:
            x[f.index][mask[f.index]] = torch.nan
        if any(c[4] for c in chunks):
            warn_unattributed()
        if failures:
            warnings.warn(_summary(failures, num_simulations), RuntimeWarning, stacklevel=3)
        theta = torch.cat([c[0] for c in chunks])
        return Simulations(theta=theta, x=x, seed=root, failures=tuple(failures), mask=mask, structure="series")

    def __repr__(self) -> str:
        grid = f"{len(self.times)} fixed times" if isinstance(self.times, Tensor) else "times drawn per series"
        return f"StateSpace(prior={self.prior!r}, {grid})"
