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

__all__ = ["MixedEffects", "StateSpace", "euler_maruyama", "gillespie"]

import numpy as np
import torch

from collections.abc import Callable
from torch import Tensor
from torch.distributions import Distribution

from ._checks import check_count
from .data import Failure, Simulations, as_float_tensor
from .errors import SimulatorContractError, SimulatorShapeError, SimulatorTypeError
from .priors import check_prior
from .runs.randomness import RowStreams, keyed_words
from .runs.seeds import NUMPY, PRIOR, TORCH, mix64, simulation_seeds, stream_keys
from .runs.chunk import batch_seed, draw_prior, exception_failure, isolated_global_generators

_MEMBER = np.uint64(0xD1B54A32D192ED03)  # separates member streams from the simulation's own


def _float(value: object, name: str) -> Tensor:
    try:
        return as_float_tensor(value, name)
    except TypeError as error:
        raise SimulatorTypeError(str(error)) from None


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
        mode = RowStreams(keys, batch_seed(keys, len(keys)))
        with torch.no_grad(), mode:
            out = function(*args)
        return out, mode.unattributed

    def _locals(self, g: Tensor, keys: np.ndarray) -> tuple[Tensor, bool]:
        def draw(g: Tensor) -> Tensor:
            distribution = self.local_prior(g)
            if not isinstance(distribution, Distribution):
                raise SimulatorTypeError(f"local_prior must return a torch Distribution, got {type(distribution).__name__}.")
            return distribution.sample()

        local, unattributed = self._draw(draw, keys, g)
        local = _float(local, "local_prior's sample")
        if local.ndim != 2 or local.shape[0] != len(g):
            raise SimulatorShapeError(
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
            raise SimulatorShapeError(
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
        with isolated_global_generators():
            try:
                local, u1 = self._locals(g, stream_keys(members, PRIOR))
                x, u2 = self._members(g, local, stream_keys(members, TORCH))
                unattributed = u1 or u2
            except SimulatorContractError:
                raise
            except Exception:  # noqa: BLE001 - one group's error must not sink the others: retry each
                local, x, failures, unattributed = self._one_by_one(g, counts, members, start)
        if x is not None:
            _record_nonfinite(failures, x.split(counts.tolist()), start, "member_simulator")
        return theta, x, local, counts, failures, unattributed

    @property
    def min_width(self) -> int:
        r"""The members axis of simulated data is at least this wide: the largest count
        ``num_members`` allows, if it says (0 for a function)."""

        return self.max_members or 0

    def padded_chunk(self, root: int, start: int, stop: int):
        r"""Simulates groups ``start`` to ``stop - 1``, their members padded to the chunk's largest
        count: global parameters :math:`(n, G)`, members :math:`(n, W, L)` (NaN for every member of a
        failed group), the mask :math:`(n, W)`, the locals :math:`(n, W, K)`, the failures, and
        whether some draws could not be split per member. Members and locals are None if every
        group raised."""

        theta, flat, flat_local, counts, failures, unattributed = self.run_chunk(root, start, stop)
        if flat is None:
            return theta, None, None, None, failures, unattributed
        mask = torch.arange(int(counts.max())) < torch.from_numpy(counts).unsqueeze(1)
        x = flat.new_zeros((len(theta), mask.shape[1], flat.shape[1]))
        local = flat_local.new_zeros((len(theta), mask.shape[1], flat_local.shape[1]))
        x[mask] = flat
        local[mask] = flat_local
        for f in failures:  # a failed group is a NaN row, whatever its members returned
            x[f.index - start, : counts[f.index - start]] = torch.nan
        return theta, x, mask, local, failures, unattributed

    def _one_by_one(self, g: Tensor, counts: np.ndarray, members: np.ndarray, start: int):
        offsets = np.concatenate([[0], np.cumsum(counts)])
        locals_, xs, failures, unattributed = [], [], [], False
        for i in range(len(counts)):
            rows = slice(int(offsets[i]), int(offsets[i + 1]))
            try:
                local, u1 = self._locals(g[rows], stream_keys(members[rows], PRIOR))
                x, u2 = self._members(g[rows], local, stream_keys(members[rows], TORCH))
                unattributed |= u1 or u2
            except SimulatorContractError:
                raise
            except Exception as error:  # noqa: BLE001 - recorded, counted and reported
                failures.append(exception_failure(start + i, error))
                local, x = None, None
            locals_.append(local)
            xs.append(x)
        shapes = {(t.shape[1], u.shape[1]) for t, u in zip(xs, locals_) if t is not None}
        if not shapes:  # every group raised
            return None, None, failures, unattributed
        if len(shapes) > 1:
            raise SimulatorShapeError(f"members have different numbers of features or local parameters: {sorted(shapes)}.")
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
        r"""Simulates ``num_simulations`` groups in this process; see :func:`sbikit.simulate`, which
        also runs them in worker processes or on a Dask cluster, and into a store."""

        from .runs.simulate import simulate

        return simulate(self, num_simulations, seed=seed, batch_size=batch_size, show_progress=show_progress)

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


def gillespie(stoichiometry: object, propensities: Callable, max_reactions: int = 100_000) -> Callable:
    r"""Returns an exact simulator of a stochastic reaction network (Gillespie's direct method),
    vectorized over a batch of series and recording the counts at given times.

    A state of :math:`S` species counts changes by reaction :math:`r`'s row :math:`\nu_r` of the
    stoichiometry when :math:`r` fires, at rate :math:`a_r(S, Y)`. From each state, the next
    reaction comes after an exponential wait of rate :math:`a_0 = \sum_r a_r` and is :math:`r`
    with probability :math:`a_r / a_0`. The count at time :math:`t` is the state after the last
    reaction at or before :math:`t`. Where every rate is zero (an absorbing state), no reaction
    fires again.

    Arguments:
        stoichiometry: :math:`(R, S)`, the change of each species' count by each reaction.
        propensities: ``propensities(state, theta)`` with the counts :math:`(B, S)` and the
            parameters :math:`(B, D)`, returning the rates :math:`(B, R)`, non-negative. It
            must not draw random numbers.
        max_reactions: The most reactions one series may take. A series that needs more (a
            population that explodes) is NaN from there on, which :func:`sbikit.simulate`
            records as a failed simulation.

    Returns:
        ``run(state, theta, times)``, with the counts :math:`(B, S)` at ``times[:, 0]``, the
        parameters :math:`(B, D)` and non-decreasing times :math:`(B, T)` (or :math:`(T,)` for
        all), returning the counts :math:`(B, T, S)` in the state's float dtype. It is a
        building block of a :class:`StateSpace` ``trajectory``, as in the example; as a
        ``transition``, it is ``lambda s, theta, t, dt: run(s, theta, torch.cat([t, t + dt], -1))[:, -1]``.

    A run draws one random 64-bit key per series from torch's global functions (one stream
    per simulation within :func:`sbikit.simulate`); the two uniforms of a series' :math:`k`-th
    reaction are a counter-based hash of its key and :math:`k`. A run thus makes one random
    call however many reactions its batch takes, so a series, and every draw after it, does
    not depend on the other series in the batch. Each iteration takes one reaction of every
    unfinished series: a batch costs as many iterations as its busiest series has reactions.

    Example:
        >>> decay = gillespie([[-1.0]], lambda s, theta: theta * s)    # S -> 0 at rate theta S
        >>> model = sbikit.StateSpace(
        ...     sbikit.BoxUniform(torch.tensor([0.5]), torch.tensor([1.0])),
        ...     times=torch.linspace(0.0, 2.0, 5),
        ...     trajectory=lambda theta, t: decay(torch.full((len(theta), 1), 100.0), theta, t),
        ... )
        >>> data = sbikit.simulate(model, num_simulations=3, seed=0)
        >>> data.x.shape, bool((data.x[:, 1:, 1] <= data.x[:, :-1, 1]).all())
        (torch.Size([3, 5, 2]), True)
    """

    changes = _float(stoichiometry, "stoichiometry").double()
    if changes.ndim != 2 or 0 in changes.shape:
        raise ValueError(
            f"stoichiometry must be a (reactions, species) matrix, got shape {tuple(changes.shape)}; "
            "for one reaction of one species pass [[change]]."
        )
    if not bool(torch.isfinite(changes).all()):
        raise ValueError("stoichiometry must be finite.")
    if not callable(propensities):
        raise TypeError(f"propensities must be callable, got {type(propensities).__name__}.")
    max_reactions = check_count(max_reactions, "max_reactions")
    num_reactions, num_species = changes.shape

    def rates(state: Tensor, theta: Tensor) -> Tensor:
        a = propensities(state, theta)
        if not isinstance(a, Tensor) or a.shape != (len(state), num_reactions):
            shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
            raise SimulatorShapeError(
                f"propensities(state, theta) must return a tensor ({len(state)}, {num_reactions}), one rate per "
                f"series and reaction of the stoichiometry, got {shape}."
            )
        if bool((a < 0).any()):
            raise SimulatorShapeError("propensities(state, theta) returned a negative rate; rates must be >= 0.")
        return a.double()

    def run(state: Tensor, theta: Tensor, times: Tensor) -> Tensor:
        # float64 counts and times stay float64; the rest becomes float32
        if not isinstance(state, Tensor) or not state.is_floating_point():
            state = _float(state, "state")
        if not isinstance(times, Tensor) or not times.is_floating_point():
            times = _float(times, "times")
        times = times.to(state.device)
        if state.ndim != 2 or state.shape[1] != num_species:
            raise SimulatorShapeError(
                f"state must be (B, {num_species}), one count per species of the stoichiometry, "
                f"got {tuple(state.shape)}."
            )
        if times.ndim == 1:
            times = times.expand(len(state), -1)
        if times.ndim != 2 or times.shape[0] != len(state) or times.shape[1] < 1:
            raise SimulatorShapeError(f"times must be (B, T) or (T,) for a state ({len(state)}, S), got {tuple(times.shape)}.")
        if not bool(torch.isfinite(times).all()) or bool((times[:, 1:] < times[:, :-1]).any()):
            raise SimulatorShapeError("times must be finite and non-decreasing along each series.")
        if not isinstance(theta, Tensor) or len(theta) != len(state):
            raise SimulatorShapeError(f"theta must be a tensor with one row per series ({len(state)}).")
        keys = torch.randint(0, 2**53, (len(state),), device=state.device)
        keys = mix64(keys.cpu().numpy().astype(np.uint64))
        with torch.no_grad(), torch._C.DisableTorchFunction():  # the loop draws no torch random numbers
            counts = _direct_method(changes.to(state.device), rates, max_reactions, state, theta, times, keys)
        return counts.to(state.dtype)

    return run


def _direct_method(
    changes: Tensor, rates: Callable, max_reactions: int, state: Tensor, theta: Tensor, times: Tensor, keys: np.ndarray
) -> Tensor:
    r"""The counts :math:`(B, T, S)` at ``times``: one reaction of every unfinished series per
    iteration, each recording its state at the times it passes before that reaction."""

    batch, length = times.shape
    times = times.double()
    x = state.double().clone()
    out = torch.full((batch, length, x.shape[1]), torch.nan, dtype=torch.float64, device=x.device)
    clock = times[:, 0].clone()
    recorded = torch.zeros(batch, dtype=torch.int64, device=x.device)  # times recorded so far
    count = torch.zeros(batch, dtype=torch.int64, device=x.device)
    steps = torch.arange(length, device=x.device)
    k = 0
    while True:
        cumulative = rates(x, theta).cumsum(-1)
        total = cumulative[:, -1]
        draws = _draws(keys, k).to(x.device)
        # the next reaction's time: inf where every rate is zero, and for a NaN (failed) series
        following = torch.nan_to_num(clock + draws[:, 0] / total, nan=torch.inf)
        passed = (recorded < length) & (times.gather(1, recorded.clamp_max(length - 1)[:, None])[:, 0] < following)
        if bool(passed.any()):
            # index_select and index_copy_ rather than advanced indexing, which runs in parallel
            # threads even on small tensors: under CPU contention that costs milliseconds a call
            rows = passed.nonzero()[:, 0]
            due = (steps >= recorded.index_select(0, rows)[:, None]) & (
                times.index_select(0, rows) < following.index_select(0, rows)[:, None]
            )
            states = torch.where(due[..., None], x.index_select(0, rows)[:, None, :], out.index_select(0, rows))
            out.index_copy_(0, rows, states)
            recorded.index_add_(0, rows, due.sum(1))
        fire = recorded < length
        if not bool(fire.any()):
            return out
        over = fire & (count >= max_reactions)
        if bool(over.any()):  # NaN from here on: recorded as a failed simulation
            x = torch.where(over[:, None], torch.nan, x)
            fire = fire & ~over
        # the target lies in (0, total), so the reaction picked has a positive rate (the clamp
        # only keeps the index of a series that does not fire, all of whose rates are zero, valid)
        choice = (cumulative <= (draws[:, 1] * total)[:, None]).sum(-1).clamp_max(len(changes) - 1)
        x = torch.where(fire[:, None], x + changes.index_select(0, choice), x)
        clock = torch.where(fire, following, clock)
        count += fire
        k += 1


def _draws(keys: np.ndarray, k: int) -> Tensor:
    r"""The draws of reaction :math:`k` for each key, :math:`(B, 2)` in float64: a standard
    exponential wait and a uniform on :math:`(0, 1 - 2^{-53}]`, from the SplitMix64 hash of the
    key and the counter, as in :mod:`sbikit.runs.randomness`. Computed in numpy: torch runs
    ``log`` on a thousand values in parallel threads, which under CPU contention costs
    milliseconds a call."""

    words = keyed_words(keys, 2 * k + 1, 2)
    draws = np.empty(words.shape)
    draws[:, 0] = -np.log(((words[:, 0] >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53)
    # 52 bits: u * total < total for every positive total, so no reaction of rate zero is picked
    draws[:, 1] = ((words[:, 1] >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52
    return torch.from_numpy(draws)


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
            raise SimulatorShapeError(f"{name} must be a 1-D tensor of at least one time, got shape {tuple(times.shape)}.")
        if not bool(torch.isfinite(times).all()) or not bool((times[1:] > times[:-1]).all()):
            raise SimulatorShapeError(f"{name} must be finite and strictly increasing, got {times.tolist()[:8]}...")
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
        mode = RowStreams(keys, batch_seed(keys, len(keys)))
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
            raise SimulatorShapeError(
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
        with isolated_global_generators():
            try:
                x, unattributed = self._observe(theta, times, keys)
            except SimulatorContractError:
                raise
            except Exception:  # noqa: BLE001 - one series' error must not sink the others: retry each
                rows = []
                for i in range(len(seeds)):
                    length = int(mask[i].sum())
                    try:
                        row, flag = self._observe(theta[i : i + 1], times[i : i + 1, :length], keys[i : i + 1])
                        unattributed |= flag
                        rows.append(torch.cat([row[0], row[0, -1:].expand(times.shape[1] - length, -1)]))
                    except SimulatorContractError:
                        raise
                    except Exception as error:  # noqa: BLE001 - recorded, counted and reported
                        failures.append(exception_failure(start + i, error))
                        rows.append(None)
                widths = {r.shape[-1] for r in rows if r is not None}
                if not widths:  # every series raised
                    return theta, None, mask, failures, unattributed
                if len(widths) > 1:
                    raise SimulatorShapeError(
                        f"the model returned observations with different numbers of features: {sorted(widths)}."
                    )
                nan = torch.full((times.shape[1], widths.pop()), torch.nan)
                x = torch.stack([r if r is not None else nan for r in rows])
        _record_nonfinite(failures, (row[present] for row, present in zip(x, mask)), start, "the model")
        return theta, x, mask, failures, unattributed

    min_width = 0  # the time axis of simulated data is as long as the longest series

    def padded_chunk(self, root: int, start: int, stop: int):
        r"""Simulates series ``start`` to ``stop - 1``: parameters, observations :math:`(n, T, 1 + X)`
        (NaN at every step of a failed series), the mask, None (no local parameters), the
        failures, and whether some draws could not be split per series. The observations are
        None if every series raised."""

        theta, x, mask, failures, unattributed = self.run_chunk(root, start, stop)
        if x is None:
            return theta, None, None, None, failures, unattributed
        for f in failures:
            x[f.index - start][mask[f.index - start]] = torch.nan
        return theta, x, mask, None, failures, unattributed

    def simulate(
        self,
        num_simulations: int,
        *,
        seed: int | None = None,
        batch_size: int = 1000,
        show_progress: bool | None = None,
    ) -> Simulations:
        r"""Simulates ``num_simulations`` series in this process; see :func:`sbikit.simulate`, which
        also runs them in worker processes or on a Dask cluster, and into a store."""

        from .runs.simulate import simulate

        return simulate(self, num_simulations, seed=seed, batch_size=batch_size, show_progress=show_progress)

    def __repr__(self) -> str:
        grid = f"{len(self.times)} fixed times" if isinstance(self.times, Tensor) else "times drawn per series"
        return f"StateSpace(prior={self.prior!r}, {grid})"
