r"""Posteriors: the common surface of every trained estimator.

A :class:`Posterior` is a plain object that holds its trained weights in one
:class:`torch.nn.Module`, ``posterior.network``, and offers checked ``sample``,
``log_prob``, ``to_arviz`` and ``save``. What a posterior can do differs, and
each class says so in three flags:

- ``amortized``: ``sample(n, x)`` and ``log_prob(theta, x)`` take the observation
  (NPE), or the posterior was built for one observation and they do not (an MCMC
  posterior of NLE: ``sample(n)``, ``log_prob(theta)``);
- ``normalized``: ``log_prob`` is a normalized density, or only up to a constant;
- ``independent_draws``: ``sample`` returns independent draws, or the draws of
  Markov chains, which ``to_arviz`` returns as chains.

:class:`AmortizedPosterior` checks the arguments and shapes once for every
posterior whose ``distribution(x)`` is a normalized distribution;
:class:`MCMCPosterior` samples :math:`p(\theta) \prod_i q(x_i | \theta)` by
MCMC (:mod:`sbikit.mcmc`: independence proposals from an importance fit, or vectorized
HMC) for any likelihood that follows its contract.
"""

__all__ = [
    "AmortizedPosterior", "MCMCPosterior", "PerObservationPosterior", "Posterior", "SupportMappedDistribution",
    "clamp_to_support", "draw", "inside_box",
]

import abc
import dataclasses
import functools
import math
import numpy as np
import scipy.stats
import threading
import time
import torch
import warnings

from concurrent.futures import ThreadPoolExecutor
from torch import Size, Tensor
from torch.distributions import Distribution, Independent, Normal, Transform, TransformedDistribution, constraints
from tqdm.auto import tqdm
from typing import ClassVar
from zuko.distributions import NormalizingFlow

from ._checks import broadcast_batch, check_count, check_theta, check_x
from .errors import OutOfRangeWarning, SamplingError
from .io import Saveable
from .mcmc import HMC, MCMCConfig, StudentMixture, importance_fit, mixture_fit
from .priors import clamp_to_support, in_support
from .proposals import _PSEUDO, spread_points
from .smc import temper


_PILOT_DRAWS = 256  # draws per observation that tell whether a truncated flow's mass inside its box is 1
_INSIDE_DRAWS = 4096  # draws per observation that estimate that mass where it is not
_MIN_ACCEPTANCE = 1e-3  # rejection gives up on an observation whose flow puts less inside its box
_DRAW_BUDGET = 2**22  # numbers per round of rejection or of estimating the mass inside


def _layers(d: Distribution) -> tuple[Distribution, list]:
    r"""The distribution whose draws are the randomness of a sample of ``d``, and the maps that turn
    them into draws of ``d``, innermost first: through torch's transformed distributions and zuko's
    normalizing flows; any other distribution is its own noise."""

    maps = []
    while True:
        if isinstance(d, TransformedDistribution):
            maps.extend(reversed(d.transforms))
            d = d.base_dist
        elif isinstance(d, NormalizingFlow):
            maps.append(d.transform.inv)
            d = d.base
        else:
            return d, maps[::-1]


def draw(d: Distribution, sample_shape: Size = Size(), generator: torch.Generator | None = None) -> Tensor:
    r"""Draws ``d.sample(sample_shape)`` (without gradients), taking the random numbers from
    ``generator`` (a CPU generator) where the innermost distribution (see :func:`_layers`) is a
    normal one, as a flow's base is, and from torch's global generator otherwise or when None.

    Example:
        >>> d = torch.distributions.Normal(torch.zeros(2), 1.0)
        >>> g = lambda: torch.Generator().manual_seed(0)
        >>> torch.equal(draw(d, (3,), g()), draw(d, (3,), g()))
        True
    """

    base, maps = _layers(d)
    inner = base.base_dist if isinstance(base, Independent) else base
    with torch.no_grad():
        if generator is None or not isinstance(inner, Normal):
            u = base.sample(sample_shape)
        else:
            shape = Size(sample_shape) + base.batch_shape + base.event_shape
            noise = torch.randn(shape, generator=generator, dtype=inner.loc.dtype).to(inner.loc.device)
            u = inner.loc + inner.scale * noise
        for layer in maps:
            u = layer(u)
    return u


def inside_box(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
    r"""Whether each row of :math:`u` :math:`(*, D)` lies strictly inside the box ``(low, high)``,
    each :math:`(D,)`, :math:`(*)`."""

    return ((u > low) & (u < high)).all(-1)


class SupportMappedDistribution(Distribution):
    r"""A distribution over standardized unconstrained vectors, mapped into the prior's support.

    With :math:`u \sim q(u | x)`, the parameters are :math:`\theta = T(\mu + \sigma u)`
    and :math:`\log p(\theta | x) = \log q(u | x) - \sum \log \sigma - \log |\det J_T|`.
    The map runs in float64 on the CPU and samples are kept strictly inside a
    box-shaped support, so they never leave it, whatever device the flow is on.

    With a ``box``, :math:`q` is truncated to it (where :math:`T` maps a bounded interval
    affinely, see :func:`sbikit.priors.from_unconstrained`): draws are taken by rejection, and
    the density is divided by :math:`Z(x)`, the mass of :math:`q` inside the box, estimated
    once per observation from draws of a generator seeded 0 (see :meth:`log_mass`; so
    ``log_prob`` is deterministic, and normalized up to that estimate's error, a relative
    :math:`\sqrt{(1 - Z) / 1024 Z}` where :math:`Z \geq 1/2`). An observation for which
    :math:`q` puts less than 0.1% of its mass inside gets an :class:`sbikit.OutOfRangeWarning`,
    and the draws rejection could not find are draws of :math:`q` moved onto the support's
    boundary.

    Arguments:
        base: The distribution :math:`q(u | x)`, batch shape :math:`(*)`.
        loc: The standardization mean :math:`\mu`, :math:`(D,)`.
        scale: The standardization scale :math:`\sigma`, :math:`(D,)`.
        transform: The map :math:`T` from unconstrained space to the support.
        prior: The prior, whose support bounds the samples.
        box: The bounds ``(low, high)``, each :math:`(D,)`, of the region of standardized
            :math:`u` that :math:`q` is truncated to (infinite where unbounded), or None.
        subset: For a ``box``, a function from indices of the flattened batch to :math:`q` for
            those observations alone, so that rejection draws only where more are needed.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, base: Distribution, loc: Tensor, scale: Tensor, transform: Transform, prior,
                 box: tuple[Tensor, Tensor] | None = None, subset=None) -> None:
        self.base = base
        self.device = loc.device
        self.loc = loc.detach().cpu().double()
        self.scale = scale.detach().cpu().double()
        self.transform = transform
        self.prior = prior
        if box is not None and not bool(torch.isfinite(torch.cat(box)).any()):
            box = None
        self.box = None if box is None else tuple(b.detach().to(self.device, torch.float32) for b in box)
        self.subset = subset
        self._log_mass: Tensor | None = None
        # a point inside the support stands in for rows outside it, whose density is 0
        self.anchor = transform(torch.zeros(base.event_shape, dtype=torch.float64)).float()
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return self.prior.support

    def sample(self, sample_shape: Size = Size(), generator: torch.Generator | None = None) -> Tensor:
        r"""Draws parameters :math:`(*sample\_shape, *, D)` on the CPU, with the random numbers of
        ``generator`` where given (see :func:`draw`)."""

        sample_shape = Size(sample_shape)
        if self.box is None:
            u = draw(self.base, sample_shape, generator)
        else:
            n = sample_shape.numel()
            u = self._inside(n, generator).reshape(sample_shape + self.batch_shape + self.event_shape)
        u = u.cpu().double()
        return clamp_to_support(self.transform(self.loc + self.scale * u).float(), self.prior)

    def _is_inside(self, u: Tensor) -> Tensor:
        return inside_box(u, *self.box)

    def _inside(self, n: int, generator: torch.Generator | None) -> Tensor:
        r"""``n`` draws of :math:`q` truncated to the box for each observation, :math:`(n, m, D)`
        for the :math:`m` observations of the flattened batch, by rejection."""

        m, dim = max(1, self.batch_shape.numel()), self.event_shape[-1]
        out = torch.empty(n, m, dim, device=self.device)
        filled, tried = torch.zeros(m, dtype=torch.long, device=self.device), torch.zeros(m, device=self.device)
        accepted = torch.zeros(m, device=self.device)  # every draw inside, also those beyond the n kept
        rows, give_up = torch.arange(m, device=self.device), []
        while len(rows):
            rate = ((accepted[rows] + 1) / (tried[rows] + 1)).clamp_min(_MIN_ACCEPTANCE)
            k = int(((n - filled[rows]) / rate).max()) * 11 // 10 + 16
            k = min(k, 4 * int(tried[rows].max()) + 1024)  # rounds grow geometrically, to decide early
            k = max(1, min(k, _DRAW_BUDGET // (len(rows) * dim)))
            if self.subset is None or len(rows) == m:
                u = draw(self.base, (k,), generator).reshape(k, m, dim)[:, rows]
            else:
                u = draw(self.subset(rows), (k,), generator).reshape(k, len(rows), dim)
            inside = self._is_inside(u)
            accepted[rows] += inside.sum(0)
            place = filled[rows] + inside.cumsum(0) - 1  # where each draw inside goes, (k, r)
            keep = inside & (place < n)
            out[place[keep], rows.expand(k, -1)[keep]] = u[keep]
            filled[rows] = (filled[rows] + inside.sum(0)).clamp_max(n)
            tried[rows] += k
            # hopeless: even 3 more draws inside (a 95% bound where none were) would leave the rate too low
            hopeless = (accepted[rows] + 3 < _MIN_ACCEPTANCE * tried[rows]) & (filled[rows] < n)
            for row in rows[hopeless].tolist():  # what rejection cannot find: draws of q, moved onto the box
                give_up.append(row)
                one = self.base if self.subset is None else self.subset(torch.tensor([row], device=self.device))
                rest = n - int(filled[row])
                out[int(filled[row]):, row] = draw(one, (rest,), generator).reshape(rest, -1, dim)[
                    :, row if self.subset is None else 0]
                filled[row] = n
            rows = rows[filled[rows] < n]
        if give_up:
            warnings.warn(
                f"The posterior puts less than {_MIN_ACCEPTANCE:.1%} of its mass inside the prior's support for "
                f"{len(give_up)} of {m} observations (at indices {give_up[:5]} of the batch), which lie far from "
                "what it was trained on; draws it could not find inside were moved onto the support's boundary.",
                OutOfRangeWarning, stacklevel=4,
            )
        return out

    def log_mass(self) -> Tensor:
        r"""The log of :math:`Z(x)`, the mass of :math:`q` inside the box, :math:`(*)`, in float64
        on the CPU (0 without a box). Where all of 256 draws lie inside, :math:`Z` is taken as 1
        (then :math:`Z > 0.988` with 95% confidence); elsewhere it is the share inside of 1,024
        more draws where at least half of the 256 were inside (a relative error below 3%), or of
        4,096 (1.6% at :math:`Z = 1/2`, 4.7% at 0.1)."""

        if self.box is None:
            return torch.zeros(self.batch_shape, dtype=torch.float64)
        if self._log_mass is None:
            m, dim = max(1, self.batch_shape.numel()), self.event_shape[-1]
            generator = torch.Generator().manual_seed(0)
            pilot = self._share_inside(self.base, m, _PILOT_DRAWS, generator)
            mass = torch.ones(m, dtype=torch.float64)
            for rows, draws in (((pilot < 1) & (pilot >= 0.5), _INSIDE_DRAWS // 4), (pilot < 0.5, _INSIDE_DRAWS)):
                rows = rows.nonzero().squeeze(-1)
                if len(rows):
                    base = self.base if self.subset is None else self.subset(rows.to(self.device))
                    share = self._share_inside(base, m if self.subset is None else len(rows), draws, generator)
                    mass[rows] = share[rows] if self.subset is None else share
            self._log_mass = mass.clamp_min(1 / _INSIDE_DRAWS).log().reshape(self.batch_shape)
        return self._log_mass

    def _share_inside(self, base: Distribution, m: int, draws: int, generator: torch.Generator) -> Tensor:
        dim, count, done = self.event_shape[-1], torch.zeros(m, dtype=torch.float64), 0
        step = max(1, min(draws, _DRAW_BUDGET // (m * dim)))
        while done < draws:
            k = min(step, draws - done)
            count += self._is_inside(draw(base, (k,), generator).reshape(k, m, dim)).sum(0).cpu()
            done += k
        return count / draws

    def log_prob(self, theta: Tensor) -> Tensor:
        theta = theta.cpu()
        inside = in_support(self.prior, theta)
        safe = clamp_to_support(torch.where(inside.unsqueeze(-1), theta, self.anchor.to(theta)), self.prior).double()
        unconstrained = self.transform.inv(safe)
        jacobian = self.transform.log_abs_det_jacobian(unconstrained, safe)
        u = (unconstrained - self.loc) / self.scale
        log_q = self.base.log_prob(u.to(device=self.device, dtype=torch.float32)).cpu().double()
        log_p = log_q - self.scale.log().sum() - jacobian - self.log_mass()
        return torch.where(inside, log_p, -math.inf).float()


_SAMPLE_CHUNK = 2**15  # samples per call when sampling many observations
# torch's thread count is process-wide: one threaded sampler at a time sets and restores it
_THREAD_COUNT = threading.Lock()


def _sample_chunks(distributions: list[Distribution], num_samples: int, device: torch.device) -> Tensor:
    r"""Draws ``num_samples`` from each distribution (over chunks of observations) and
    concatenates them along the observations, :math:`(n, m, D)`.

    On a CPU with several threads, the chunks run in parallel Python threads, each
    with one intra-op thread: many of a flow's element-wise operations are too small
    for torch to split, so this uses the cores where torch's own threads idle. Each
    chunk draws from a generator seeded by torch's global generator in this thread,
    chunk by chunk, in order, so the draws are the same whatever the number of threads.
    """

    if not all(isinstance(d, SupportMappedDistribution) for d in distributions):
        return torch.cat([d.sample((num_samples,)) for d in distributions], dim=1)
    seeds = torch.randint(2**62, (len(distributions),)).tolist()
    sample = lambda d, seed: d.sample((num_samples,), torch.Generator().manual_seed(seed))  # noqa: E731
    threads = min(torch.get_num_threads(), len(distributions)) if device.type == "cpu" else 1
    if threads < 2:
        return torch.cat([sample(d, seed) for d, seed in zip(distributions, seeds)], dim=1)
    with _THREAD_COUNT:
        intra_op = torch.get_num_threads()
        torch.set_num_threads(1)  # threads made from here on start with one intra-op thread
        try:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(sample, distributions, seeds))
        finally:
            torch.set_num_threads(intra_op)
    return torch.cat(parts, dim=1)


class Posterior(Saveable):
    r"""What every posterior is: a prior, parameter names, trained weights in ``network``,
    and ``sample``, ``log_prob``, ``to_arviz`` and ``save``.

    A subclass sets ``prior``, ``parameter_names``, ``history`` and ``network``, the
    flags ``amortized``, ``normalized`` and ``independent_draws`` (see the module's
    description), and ``kind``, ``config`` and ``from_config`` for saving (see
    :class:`sbikit.io.Saveable`). Anything with ``sample`` and ``log_prob`` serves
    the diagnostics.
    """

    amortized: ClassVar[bool]
    normalized: ClassVar[bool]
    independent_draws: ClassVar[bool]
    prior: Distribution
    parameter_names: list[str]

    @abc.abstractmethod
    def sample(self, num_samples: int, *args, **kwargs) -> Tensor:
        r"""Draws :math:`(n, D)` samples (:math:`(n, m, D)` for a batch of observations)."""

    @abc.abstractmethod
    def log_prob(self, theta: object, *args, **kwargs) -> Tensor:
        r"""Evaluates the log-density of parameters :math:`(*, D)`."""

    @abc.abstractmethod
    def to_arviz(self, *args, **kwargs):
        r"""Returns an arviz InferenceData of posterior draws."""

    @property
    def theta_dim(self) -> int:
        return self.prior.event_shape[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prior={self.prior!r}, x_shape={tuple(self.x_shape)}, "
            f"parameter_names={self.parameter_names})"
        )


class AmortizedPosterior(Posterior):
    r"""A posterior for any observation, whose density is a normalized distribution.

    A subclass sets ``prior``, ``x_shape``, ``parameter_names``, ``history`` and
    ``network`` (the :class:`torch.nn.Module` holding every trained weight), and
    provides:

    - ``distribution(x)``: :math:`p(\theta | x)` as a normalized
      :class:`~torch.distributions.Distribution` with batch shape :math:`(*)`, for
      checked observations :math:`(*, *x\_shape)` on the network's device;
    - ``kind``, ``config()`` and ``from_config(config, **components)``, for saving.

    Calling the posterior, ``posterior(x)``, returns ``distribution(x)`` for a
    checked ``x``. A subclass may set ``x_range``, anything with ``warn(x)`` (a
    :class:`sbikit.estimators.base.TrainingRange`, or an NPE network, which also checks the
    summaries), and ``sample`` and ``log_prob`` then warn with an
    :class:`sbikit.OutOfRangeWarning` where ``x`` lies beyond the training data.
    """

    amortized = True
    x_range = None
    normalized = True
    independent_draws = True

    @abc.abstractmethod
    def distribution(self, x: Tensor) -> Distribution:
        r"""Returns :math:`p(\theta | x)` for checked observations on the network's device."""

    def _x(self, x: object) -> tuple[Tensor, Size]:
        x, batch = check_x(x, self.x_shape, structure=getattr(self, "structure", None))
        return x.to(self.device), batch

    def __call__(self, x: object) -> Distribution:
        x, _ = self._x(x)
        return self.distribution(x)

    def sample(self, num_samples: int, x: object) -> Tensor:
        r"""Draws samples from :math:`p(\theta | x)`.

        Arguments:
            num_samples: The number of samples :math:`n` per observation.
            x: One observation :math:`(*x\_shape)` or a batch :math:`(m, *x\_shape)`.

        Returns:
            The samples, :math:`(n, D)` for one observation or :math:`(n, m, D)` for
            a batch, on the CPU.

        Warns:
            OutOfRangeWarning: If ``x`` lies beyond the data the posterior was trained on.
        """

        num_samples = check_count(num_samples, "num_samples")
        x, batch = self._x(x)
        if self.x_range is not None:
            self.x_range.warn(x)
        with torch.no_grad():
            if len(batch) != 1 or num_samples * batch[0] <= _SAMPLE_CHUNK:
                return self.distribution(x).sample((num_samples,))
            # many observations: chunks of observations keep the flow's intermediate
            # tensors small enough for the cache (about 2x the throughput on a CPU)
            step = max(1, _SAMPLE_CHUNK // num_samples)
            return _sample_chunks([self.distribution(part) for part in x.split(step)], num_samples, x.device)

    def log_prob(self, theta: object, x: object) -> Tensor:
        r"""Evaluates the normalized density :math:`\log p(\theta | x)`.

        Arguments:
            theta: Parameters :math:`(*, D)`; rows outside the prior's support get
                :math:`-\infty`.
            x: One observation :math:`(*x\_shape)` or a batch :math:`(m, *x\_shape)`,
                broadcast against the batch shape of ``theta``.

        Returns:
            The log-densities, with the broadcast batch shape, on the CPU.
        """

        theta = check_theta(theta, self.theta_dim)
        x, batch = self._x(x)
        if self.x_range is not None:
            self.x_range.warn(x)
        broadcast_batch(theta.shape[:-1], batch)
        with torch.no_grad():
            return self.distribution(x).log_prob(theta)

    def to_arviz(self, x: object, num_samples: int = 1000, num_chains: int = 4):
        r"""Samples :math:`p(\theta | x)` for one observation into an arviz InferenceData.

        The independent draws are split into ``num_chains`` groups that arviz calls
        chains (its :math:`\hat{R}` is then 1 up to noise, and the ESS is about the
        number of draws); the attribute ``draws`` says ``"independent"``. The
        InferenceData has a ``posterior`` group with one variable per parameter and
        an ``observed_data`` group.
        """

        from . import _arviz

        num_samples = check_count(num_samples, "num_samples")
        num_chains = check_count(num_chains, "num_chains")
        if num_samples % num_chains:
            raise ValueError(
                f"num_samples ({num_samples}) must be a multiple of num_chains ({num_chains})."
            )
        x, batch = check_x(x, self.x_shape, structure=getattr(self, "structure", None))
        if batch != Size():
            raise ValueError(f"to_arviz takes one observation of shape {tuple(self.x_shape)}, got {tuple(x.shape)}.")
        samples = self.sample(num_samples, x).reshape(num_chains, -1, self.theta_dim)
        return _arviz.posterior_to_inference_data(
            samples.numpy(), self.parameter_names, x.numpy(), attrs={"inference": self.kind, "draws": "independent"}
        )


_MIN_DRAWS = 64  # HMC draws per chain at least: R-hat of 64 x 64 independent draws stays below 1.01
_ROWS = 2**16  # (parameter, trial) pairs per network call outside the chains' steps
_USABLE_FIT = 0.01  # the share above which independence proposals alone are used (on chains up to 30x longer)
_GOOD_FIT = 0.3  # the Gaussian fit's share below which a mixture is fitted too
_REPEATS = 0.05  # independence chains: the share of returned draws that may repeat the one before
_MAX_SPACING = 10  # and the iterations between returned draws of independence chains at most
_UNCOVERED = 0.05  # a warning when more of tempered SMC's particles lie beyond the proposal's reach
_COVER_COMPONENTS = 4  # the proposal's components added, at most, where it does not reach them
_CANDIDATE_ESS = 32  # prior draws are added while their weights' effective sample size is below this,
_CANDIDATE_ROWS = 2**17  # up to this many (draw, trial) pairs (or MCMCConfig.num_candidates draws)
_CLIMB_STEPS = 40  # gradient steps that move the mixture's first means uphill
_CLIMB_RATE = 0.5  # their first step, in units of the Gaussian fit's scale
_SEARCH_STARTS = 64  # prior draws outside the Gaussian fit that climb, looking for modes it missed
_SEARCH_STEPS = 40  # their gradient steps at most
_SEARCH_RATE = 0.25  # their first step, in units of the prior draws' scale
_SEARCH_TRIALS = 128  # the trials, at most, of the density that they climb first
_LAPLACE_STARTS = 8  # the densest prior draws that climb to the mode of the Laplace approximation
_LAPLACE_WIDEN = 1.5  # its scale, widened by this factor for the first importance draws
_LAPLACE_ROWS = 2**17  # where few prior draws carry the weight and a round of importance sampling
# evaluates more (draw, trial) pairs than this, it starts from the Laplace approximation
_COVERED = 0.999  # the share of the Gaussian fit's mass inside the ellipsoid that checks for other modes
_PARTICLES = 4096  # tempered sequential Monte Carlo's particles at most,
_TEMPER_ROWS = 2**14  # fewer with many trials: (particle, trial) pairs up to this (or 256 particles)
_TEMPER_ESS = 0.8  # each tempering step keeps this share of the particles' effective sample size
_MOVES = 5  # random-walk Metropolis moves of every particle after each tempering step
_MAX_TEMPERING = 200  # tempering steps at most; then the last step goes straight to the posterior
_BATCH_PARTICLES = 512  # PerObservationPosterior's tempered SMC: particles per observation at least,
_BATCH_ROWS = 2**16  # (particle, observation) pairs per network call at most (one observation at least)
_SETTLE = 0.95  # and the share of each observation's particles moved after the last resampling


def _log_prior(prior: Distribution, transform: Transform, u: Tensor) -> Tensor:
    r""":math:`\log p(T(u)) + \log |\det J_T(u)|`, :math:`(*)`, of points :math:`(*, D)`: the prior's
    density in unconstrained space (the map in float64, so the tails do not round onto a bound)."""

    u = u.double()
    theta = transform(u)
    jacobian = transform.log_abs_det_jacobian(u, theta)
    return prior.log_prob(clamp_to_support(theta.float(), prior)) + jacobian.float()


def _ess(log_w: Tensor) -> float:
    r"""The effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2` of log-weights :math:`(K,)`."""

    return float(1.0 / (torch.softmax(log_w.double(), 0) ** 2).sum())


def _spacing(acceptance: float) -> int:
    r"""The iterations :math:`k` between the draws that :meth:`MCMCPosterior.sample` returns from
    independence chains that accept ``acceptance`` of their proposals: the fewest for which a
    draw repeats the one before (all :math:`k` proposals between them rejected,
    :math:`(1 - a)^k`) in at most ``_REPEATS`` of them, and at most ``_MAX_SPACING``."""

    if acceptance >= 1 - _REPEATS:
        return 1
    if acceptance <= 0:
        return _MAX_SPACING
    return min(_MAX_SPACING, math.ceil(math.log(_REPEATS) / math.log1p(-acceptance)))


def _level(dim: int) -> float:
    r"""The squared Mahalanobis radius of a Gaussian's ``_COVERED`` ellipsoid in ``dim`` dimensions."""

    return float(scipy.stats.chi2.ppf(_COVERED, dim))


def _outside(u: Tensor, loc: Tensor, tril: Tensor) -> Tensor:
    r"""Which points :math:`(K, D)` lie outside the ``_COVERED`` ellipsoid of the Gaussian with mean
    ``loc`` and Cholesky factor ``tril``, :math:`(K,)`."""

    white = torch.linalg.solve_triangular(tril.double(), (u.double() - loc.double()).T, upper=False)
    return (white**2).sum(0) > _level(u.shape[-1])


def _spread(u: Tensor) -> Tensor:
    r"""The Cholesky factor :math:`(D, D)` (float64) of the covariance of points :math:`(K, D)`."""

    covariance = torch.cov(u.double().T).reshape(u.shape[-1], u.shape[-1])
    return torch.linalg.cholesky(covariance + 1e-9 * torch.eye(u.shape[-1], dtype=torch.float64))


def _inside(u: Tensor, loc: Tensor, tril: Tensor) -> Tensor:
    return ~_outside(u, loc, tril)


class MCMCPosterior(Posterior):
    r"""The posterior of a surrogate likelihood and one set of i.i.d. trials, sampled by MCMC.

    .. math:: p(\theta | x_1, \dots, x_N) \propto p(\theta) \prod_{i=1}^N q(x_i | \theta)

    The chains run in the prior's unconstrained space :math:`u = T^{-1}(\theta)`, on
    :math:`\sum_i \log q(x_i | T(u)) + \log p(T(u)) + \log |\det J_T(u)|`, so they
    never leave the support. ``num_candidates`` prior draws (more where few carry the
    weight), weighted by their likelihood, start adaptive importance sampling: one Gaussian,
    and where it fits poorly or a point beyond it (a prior draw, or one moved uphill from a
    prior draw) is as dense as its edge, a mixture
    (:func:`sbikit.mcmc.mixture_fit`) fitted to the particles of tempered sequential Monte
    Carlo from the prior (:meth:`_temper`), whose first means beyond the Gaussian climb the
    density by gradient ascent (see :meth:`_start`). Where the better fit is usable, independence
    Metropolis-Hastings with proposals from it runs on few long chains, its proposals
    evaluated in a few large network calls; otherwise :class:`sbikit.mcmc.HMC` moves all
    chains with one network call per leapfrog step. The chains start from the last
    importance draws, resampled by their weights without replacement (distinct points in
    the posterior's neighbourhood), and warm up once, at the first ``sample``; later calls
    continue the same chains. After each ``sample``, arviz's :math:`\hat R` and bulk and
    tail ESS are computed from the chains (``history``), and a ``RuntimeWarning`` says
    when :math:`\hat R` exceeds ``max_rhat`` or the bulk ESS is below ``min_ess``.

    Where tempered SMC ran, its particles check the independence proposal
    (:meth:`_cover`): a particle whose ratio of target to proposal is above that of every
    draw of the proposal lies where the chains rarely go, and no :math:`\hat R` can see
    that, since all chains share the proposal. Where more than 5% of the particles lie so,
    the proposal gains a component per cluster of them, and a ``RuntimeWarning`` says when
    more than 5% still do (``history["uncovered"]``); ``docs/design.md``, "MCMC's start",
    has the measurement on SLCP.

    The likelihood must provide ``prior``, ``parameter_names``, ``x_shape``, ``network``,
    ``transform`` (:func:`sbikit.priors.from_unconstrained`), ``kind`` and ``config()``
    (it is a :class:`sbikit.io.Saveable`), and ``trial_log_likelihood(u, trials)``:
    :math:`(C, D), (N, *x\_shape) \to (C, N)`, differentiable in :math:`u`.

    Arguments:
        likelihood: The surrogate, for example a :class:`sbikit.Likelihood`.
        x_obs: One observation :math:`(*x\_shape)` or :math:`N` trials :math:`(N, *x\_shape)`.
        mcmc: The sampler's settings; :class:`sbikit.MCMCConfig()` by default.
    """

    kind = "MCMC"
    amortized = False
    normalized = False
    independent_draws = False

    def __init__(self, likelihood, x_obs: object, mcmc: MCMCConfig | None = None) -> None:
        if mcmc is not None and not isinstance(mcmc, MCMCConfig):
            raise TypeError(f"mcmc must be a sbikit.MCMCConfig, got {type(mcmc).__name__}.")
        x, batch = check_x(x_obs, likelihood.x_shape, name="x_obs")
        if len(batch) > 1:
            raise ValueError(
                f"x_obs has shape {tuple(x.shape)}; pass one observation {tuple(likelihood.x_shape)} or N "
                f"i.i.d. trials (N, {', '.join(map(str, likelihood.x_shape))})."
            )
        if len(batch) == 1 and batch[0] == 0:
            raise ValueError(f"x_obs has no trials (shape {tuple(x.shape)}); pass at least one observation.")
        self.likelihood = likelihood
        self.prior, self.parameter_names = likelihood.prior, likelihood.parameter_names
        self.x_shape, self.network, self.transform = likelihood.x_shape, likelihood.network, likelihood.transform
        self.x_obs = x
        self.trials = x.reshape(-1, *self.x_shape)
        self.mcmc = mcmc if mcmc is not None else MCMCConfig()
        self.history: dict = {}
        self._sampler: HMC | None = None
        self._spacing = 1  # the iterations between returned draws of independence chains
        self._uncovered = 0.0  # the share of tempered SMC's particles beyond the proposal's reach
        self._chains = None

    def _log_prior(self, u: Tensor) -> Tensor:
        return _log_prior(self.prior, self.transform, u)

    def _log_density(self, u: Tensor, trials: Tensor | None = None) -> Tensor:
        r"""The log posterior density :math:`(C,)` of points :math:`(C, D)`; with ``trials``, a
        subset of the :math:`N` trials, of the :math:`m` of them counted :math:`N / m` times each."""

        if trials is None:
            return self.likelihood.trial_log_likelihood(u, self.trials).sum(-1) + self._log_prior(u)
        weight = len(self.trials) / len(trials)
        return self.likelihood.trial_log_likelihood(u, trials).sum(-1) * weight + self._log_prior(u)

    def _log_likelihood(self, u: Tensor) -> Tensor:
        r""":math:`\sum_i \log q(x_i | T(u))`, :math:`(B,)`, without gradients, in chunks."""

        step = max(1, _ROWS // len(self.trials))
        with torch.no_grad():
            parts = [self.likelihood.trial_log_likelihood(part, self.trials).sum(-1) for part in u.split(step)]
        return torch.cat(parts)

    def _log_target(self, u: Tensor) -> Tensor:
        r"""The log-density :math:`(B,)` of many points :math:`(B, D)`, without gradients, in chunks."""

        return self._log_likelihood(u) + self._log_prior(u)

    def _describe(self, u: Tensor) -> str:
        with torch.no_grad():
            theta = self.transform(u.double()).float()
            trials = self.likelihood.trial_log_likelihood(u[None], self.trials)[0]
            prior = float(self._log_prior(u[None])[0])
        bad = (~torch.isfinite(trials)).nonzero().flatten().tolist()
        where = f"theta = {[round(v, 4) for v in theta.tolist()]}"
        if bad:
            return (f"{where}, where the log-likelihood of trial {bad[0]} of {len(trials)} is {float(trials[bad[0]])} "
                    f"({len(bad)} trial(s) not finite) and the log prior is {prior}")
        return f"{where}, where every trial's log-likelihood is finite and the log prior is {prior}"

    def _candidates(self, count: int) -> tuple[Tensor, Tensor]:
        r"""``count`` prior draws in unconstrained space :math:`(K, D)` and their
        log-likelihoods :math:`(K,)`, :math:`-\infty` where the draw maps to no finite point."""

        with torch.no_grad():
            candidates = clamp_to_support(self.prior.sample((count,)), self.prior)
            u = self.transform.inv(candidates.double()).float()
        log_w = torch.full((len(u),), -math.inf)
        ok = torch.isfinite(u).all(-1)
        log_w[ok] = self._log_likelihood(u[ok])
        finite = torch.isfinite(log_w)
        if int(finite.sum()) == 0 or bool(torch.isnan(log_w).any()):
            first = int((~finite).nonzero()[0])
            raise SamplingError(
                f"{int((~finite).sum())} of {len(u)} prior draws have a likelihood that is not finite; at the "
                f"first, {self._describe(u[first])}. Check x_obs against the simulator's outputs."
            )
        return u, log_w

    def _beyond(
        self, u: Tensor, log_likelihood: Tensor, loc: Tensor, tril: Tensor, search: bool = True
    ) -> tuple[bool, Tensor]:
        r"""Whether the posterior has a mode, or a ridge, that the Gaussian fit (mean ``loc``,
        Cholesky factor ``tril``) does not cover: a point outside its 99.9% ellipsoid with a
        posterior density as high as the fit's on that ellipsoid; and the points :math:`(F, D)`
        that the search below found there (none, :math:`(0, D)`, where a prior draw is one).

        The points looked at are the prior draws :math:`(K, D)` (log-likelihoods :math:`(K,)`)
        outside the ellipsoid and, where none of them is that dense and ``search``,
        ``_SEARCH_STARTS`` of them (the densest half and a random half) moved uphill on the log
        posterior density by gradient ascent (:meth:`_ascend`): ``_SEARCH_STEPS`` steps at most
        on the prior draws' scale, of the density of at most ``_SEARCH_TRIALS`` of the trials,
        then ``_CLIMB_STEPS`` on the fit's scale, of the density of all. A point stops once it
        enters the ellipsoid, as it has reached the mode the fit covers. With many trials the
        modes are narrow: no prior draw lands in a mode the fit missed, but the draws near it
        climb into it."""

        far = _outside(u, loc, tril) & torch.isfinite(log_likelihood)
        if not bool(far.any()):
            return False, u[:0]
        threshold = float(self._log_target(loc[None])[0]) - _level(u.shape[-1]) / 2
        log_target = log_likelihood[far] + self._log_prior(u[far])
        dense = bool((log_target >= threshold).any())
        if dense or not search:
            return dense, u[:0]
        index = far.nonzero().flatten()
        half = _SEARCH_STARTS // 2
        chosen = torch.cat([index[log_target.topk(min(half, len(index))).indices],
                            index[torch.randperm(len(index))[:half]]]).unique()
        finite = torch.isfinite(u).all(-1) & torch.isfinite(log_likelihood)
        scale = _spread(u[finite])
        inside = functools.partial(_inside, loc=loc, tril=tril)
        # first on the prior draws' scale, with at most _SEARCH_TRIALS trials (their modes lie near the
        # posterior's), then on the fit's own scale with all, on which a mode about as wide is reached
        subset = self.trials[torch.randperm(len(self.trials))[:_SEARCH_TRIALS]]
        climbed, log_target = self._ascend(u[chosen], scale, _SEARCH_RATE, _SEARCH_STEPS, settled=inside,
                                           trials=subset if len(subset) < len(self.trials) else None)
        outside = ~inside(climbed)
        climbed, log_target = climbed[outside], log_target[outside]
        if len(climbed):
            climbed, log_target = self._ascend(climbed, tril, _CLIMB_RATE, _CLIMB_STEPS, settled=inside)
        found = climbed[~inside(climbed) & (log_target >= threshold)]
        return len(found) > 0, found

    def _ascend(
        self, u: Tensor, scale: Tensor, rate: float, steps: int, settled=None, trials: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Moves the points :math:`(M, D)` uphill on the log posterior density by ``steps``
        steps of Adam in the coordinates :math:`w = L^{-1} u` (``scale`` is :math:`L`), with a
        first step of ``rate`` decayed to zero by a cosine, all moving points in one network
        call per step. A point stops where ``settled`` (points :math:`(M, D)` to :math:`(M,)`
        booleans) says so, and the ascent ends when all have. With ``trials``, the density is
        that of a subset of the trials (see :meth:`_log_density`). Returns each point where its
        density was highest :math:`(M, D)`, and that log density :math:`(M,)`."""

        scale = scale.double()
        w = torch.linalg.solve_triangular(scale, u.double().T, upper=False).T.float().requires_grad_(True)
        best = u.clone()
        with torch.no_grad():
            best_lp = self._log_target(best) if trials is None else self._log_density(best, trials)
        moving = torch.ones(len(u), dtype=torch.bool) if settled is None else ~settled(best)
        optimizer = torch.optim.Adam([w], lr=rate)
        for step in range(steps):
            if not bool(moving.any()):
                break
            for group in optimizer.param_groups:
                group["lr"] = rate * 0.5 * (1 + math.cos(math.pi * step / steps))
            with torch.enable_grad():
                point = w[moving] @ scale.float().T
                lp = self._log_density(point, trials)
                finite = torch.isfinite(lp)
                (grad,) = torch.autograd.grad(-lp[finite].sum(), w) if bool(finite.any()) else (torch.zeros_like(w),)
            index = moving.nonzero().flatten()
            better = finite & (lp.detach() > best_lp[index])
            best[index[better]], best_lp[index[better]] = point.detach()[better], lp.detach()[better]
            w.grad = torch.where(torch.isfinite(grad), grad, 0.0)
            optimizer.step()
            if settled is not None:
                moving[index[settled(point.detach())]] = False
        return best, best_lp

    def _laplace(self, u: Tensor, log_likelihood: Tensor, count: int) -> tuple[Tensor, Tensor]:
        r"""Draws :math:`(M, D)` (a quarter of ``count``, at least 256) from the Laplace
        approximation of the posterior at the highest point that the ``_LAPLACE_STARTS``
        densest prior draws :math:`(K, D)` (log-likelihoods :math:`(K,)`) climb to
        (:meth:`_ascend`, on the prior draws' scale), its covariance the inverse Hessian of the
        negative log density there, widened by ``_LAPLACE_WIDEN``; with their log weights
        :math:`(M,)`, target over proposal. Where the Hessian there is not negative definite,
        the prior draws and their log-likelihoods as they are.

        With many trials the posterior is far narrower than the prior, and adaptive importance
        sampling from prior draws, which shrinks its Gaussian at most fourfold in variance per
        round, takes all its rounds to get there; from the Laplace approximation it takes one
        or two."""

        finite = torch.isfinite(u).all(-1) & torch.isfinite(log_likelihood)
        log_target = torch.where(finite, log_likelihood + self._log_prior(u), -math.inf)
        starts = u[log_target.topk(min(_LAPLACE_STARTS, int(finite.sum()))).indices]
        climbed, log_density = self._ascend(starts, _spread(u[finite]), _SEARCH_RATE, _SEARCH_STEPS)
        mode = climbed[log_density.argmax()].double()
        with torch.enable_grad():
            hessian = torch.autograd.functional.hessian(lambda v: self._log_density(v[None].float())[0].double(), mode)
        precision = -(hessian + hessian.T) / 2
        info = torch.linalg.cholesky_ex(precision).info
        if not bool(torch.isfinite(precision).all()) or int(info) != 0:
            return u, log_likelihood
        proposal = torch.distributions.MultivariateNormal(mode, precision_matrix=precision / _LAPLACE_WIDEN**2)
        draws = proposal.sample((max(min(count, 256), count // 4),))  # a start: importance sampling goes on
        log_w = self._log_target(draws.float()).double() - proposal.log_prob(draws)
        return draws.float(), torch.where(torch.isfinite(log_w), log_w, -math.inf).float()

    def _climb(self, u: Tensor, loc: Tensor, tril: Tensor) -> Tensor:
        r"""Moves the points :math:`(M, D)` that lie outside the 99.9% ellipsoid of the Gaussian
        fit (mean ``loc``, Cholesky factor ``tril``, :math:`L`) uphill on the log posterior
        density (:meth:`_ascend`, ``_CLIMB_STEPS`` steps of ``_CLIMB_RATE`` in the coordinates
        that the fit whitens), and returns them all, each where its density was highest. Inside
        it, the fit's own draws are dense enough for EM."""

        far = _outside(u, loc, tril)
        if not bool(far.any()):
            return u
        climbed = u.clone()
        climbed[far] = self._ascend(u[far], tril, _CLIMB_RATE, _CLIMB_STEPS)[0]
        return climbed

    def _temper(self) -> Tensor:
        r"""Draws :math:`(P, D)` from the posterior by tempered sequential Monte Carlo from the
        prior (:func:`sbikit.smc.temper`: steps that each keep ``_TEMPER_ESS`` of the effective
        sample size, ``_MOVES`` random-walk moves after each).

        Unlike importance sampling from the prior, which finds a narrow mode only if a prior
        draw lands in it, the tempered densities are broad at first and narrow step by step,
        so the particles follow the modes that hold mass: in proportion to it while moves
        cross between them, and with the shares that resampling left them once the modes
        separate (the importance weights that follow correct those). On four
        separate modes of equal mass (``tests/test_mcmc.py``), the mixture seeded from the
        particles missed none in 20 sampler seeds, where one seeded from prior draws missed a
        mode in 2, without a warning. There are :math:`P = 4096` particles, fewer when
        :math:`P \times N` would exceed ``_TEMPER_ROWS`` = 16,384 (:math:`N` trials), at least 256."""

        count = max(256, min(_PARTICLES, _TEMPER_ROWS // len(self.trials)))
        u, _ = self._candidates(count)
        u = u[torch.isfinite(u).all(-1)]  # prior draws that map to a point
        tempered = temper(lambda v: self._log_likelihood(v[0])[None], lambda v: self._log_prior(v[0])[None], u[None],
                          ess=_TEMPER_ESS, moves=_MOVES, max_steps=_MAX_TEMPERING)
        return tempered.particles[0]

    def _start(self) -> tuple[Tensor, tuple[Tensor, Tensor], StudentMixture]:
        r"""The chains' starting points :math:`(C, D)`, a Gaussian approximation (mean,
        Cholesky factor) of the posterior in unconstrained space and the independence
        proposal: prior draws weighted by their likelihood, refined by adaptive importance
        sampling (a Gaussian, then, where it fits poorly, a mixture), then resampled by their
        weights without replacement (Gumbel top-k).

        Where few prior draws carry the weight (an effective sample size below
        ``_CANDIDATE_ESS``), more are drawn, doubling, up to ``_CANDIDATE_ROWS`` (draw,
        trial) pairs: a mode that no prior draw lands near is never found. Where few still
        do and a round of importance sampling is costly (many trials), it starts instead from
        the Laplace approximation at the mode that the densest prior draws climb to
        (:meth:`_laplace`); the search for other modes still starts from the prior draws. A mixture is
        fitted where the Gaussian's effective sample size share is below ``_GOOD_FIT``,
        and also where a point outside its 99.9% ellipsoid is as dense as the fit on it
        (:meth:`_beyond`: a prior draw, or one moved uphill from a prior draw): a Gaussian
        fitted to one of several separated modes has a high effective sample size, since its
        own draws never reach the others. The mixture is fitted to posterior draws from
        tempered SMC (:meth:`_temper`), which reach modes that no prior draw lands near, and to
        the points that the search uphill found, and it is kept if it is usable, whatever its
        share: it contains the Gaussian as a component, so it covers all the Gaussian covers."""

        count = self.mcmc.num_candidates
        u, log_w = self._candidates(count)
        most = max(count, _CANDIDATE_ROWS // len(self.trials))
        while _ess(log_w) < _CANDIDATE_ESS and len(u) < most:
            more_u, more_log_w = self._candidates(min(len(u), most - len(u)))
            u, log_w = torch.cat([u, more_u]), torch.cat([log_w, more_log_w])

        prior_draws = u, log_w
        if _ess(log_w) < _CANDIDATE_ESS and count * len(self.trials) > _LAPLACE_ROWS:
            u, log_w = self._laplace(u, log_w, count)
        loc, tril, u, log_w, self._fit_ess = importance_fit(self._log_target, u, log_w, num_draws=count)
        proposal = StudentMixture.single(loc, tril)
        may_mix = self.mcmc.mixture_components > 1
        uncovered, found = self._beyond(*prior_draws, loc, tril, search=may_mix and self._fit_ess >= _GOOD_FIT)
        if (self._fit_ess < _GOOD_FIT or uncovered) and may_mix:
            # posterior draws, of equal weight, and a few distinct points found beyond the Gaussian, so
            # that a light mode whose particles resampling lost still seeds a component
            if len(found) > self.mcmc.mixture_components:
                found = spread_points(found, tril, self.mcmc.mixture_components)
            particles = torch.cat([self._temper(), found])
            mixture, v, log_v, ess = mixture_fit(self._log_target, particles, torch.zeros(len(particles)),
                                                 defensive=(loc, tril),
                                                 components=self.mcmc.mixture_components, num_draws=len(u),
                                                 refine=functools.partial(self._climb, loc=loc, tril=tril))
            kept = ess > self._fit_ess or (uncovered and ess >= _USABLE_FIT)
            if kept:
                proposal, u, log_w, self._fit_ess = mixture, v, log_v, ess
            # the mixture's weights are already target over the proposal; the Gaussian's are not
            # over its Student t
            proposal, u, log_w = self._cover(proposal, u, log_w, particles, tril, against=kept)
        gumbel = -torch.log(-torch.log(torch.rand(len(u)).clamp_min(1e-30)))
        return u[(log_w + gumbel).topk(self.mcmc.num_chains).indices], (loc, tril), proposal

    def _cover(self, proposal: StudentMixture, u: Tensor, log_w: Tensor, particles: Tensor,
               tril: Tensor, against: bool = False) -> tuple[StudentMixture, Tensor, Tensor]:
        r"""Checks that the independence proposal reaches where tempered SMC's particles
        :math:`(P, D)` are, and widens it where it does not; returns the proposal with its
        draws :math:`(M, D)` (``u``) and their log weights (``log_w``; ``against`` says
        they are target over this proposal, and need not be computed again), and sets
        ``_uncovered``.

        The particles follow the posterior. One whose ratio of target to proposal exceeds that
        of every draw of the proposal lies where the proposal rarely goes, and independence
        chains under-weight the mass there, though their :math:`\hat R` is fine: all share
        the proposal. Where more than ``_UNCOVERED`` of the particles lie so, the proposal
        gains a Student t component per cluster of them (at most ``_COVER_COMPONENTS``,
        picked by :func:`sbikit.proposals.spread_points`), with the cluster's mean and
        covariance, the latter pulled towards a tenth of the Gaussian fit's (Cholesky factor
        ``tril``), and the cluster's share of the particles as its weight. It is kept if fewer
        particles then lie beyond its reach."""

        target = self._log_target(particles).double()

        def beyond(g: StudentMixture, draws: Tensor, log_w: Tensor | None = None) -> tuple[Tensor, Tensor]:
            # which particles lie beyond the reach of g's draws, and those draws' log weights
            if log_w is None:
                log_w = self._log_target(draws).double() - g.log_prob(draws).double()
            log_w = log_w.double()
            finite = log_w[torch.isfinite(log_w)]
            top = finite.max() if len(finite) else torch.tensor(-math.inf, dtype=torch.float64)
            return target - g.log_prob(particles).double() > top, torch.where(torch.isfinite(log_w), log_w, -math.inf)

        outside, _ = beyond(proposal, u, log_w if against else None)
        share = self._uncovered = float(outside.double().mean())
        if share <= _UNCOVERED or not _COVER_COMPONENTS:
            return proposal, u, log_w
        far = particles[outside]
        centres = spread_points(far, tril, min(_COVER_COMPONENTS, len(far)))
        white = torch.linalg.solve_triangular(tril.double(), (far.double()[:, None] - centres.double()).mT,
                                              upper=False)
        nearest = (white**2).sum(-2).argmin(-1)
        pseudo = _PSEUDO * tril.double() @ tril.double().T
        logits, locs, trils = [proposal.logits.double() + math.log1p(-share)], [proposal.loc], [proposal.scale_tril]
        for k in range(len(centres)):
            members = far[nearest == k].double()
            if not len(members):
                continue
            mean = members.mean(0)
            centred = members - mean
            covariance = (centred.T @ centred + pseudo) / len(members)
            logits.append(torch.tensor([math.log(share * len(members) / len(far))], dtype=torch.float64))
            locs.append(mean[None].float())
            trils.append(torch.linalg.cholesky(covariance)[None].float())
        wider = StudentMixture(torch.cat(logits), torch.cat(locs), torch.cat(trils), proposal.df)
        draws = wider.sample((len(u),))
        outside, weights = beyond(wider, draws)
        if float(outside.double().mean()) < share:
            self._uncovered = float(outside.double().mean())
            self._fit_ess = _ess(weights) / len(draws)
            return wider, draws, weights.float()
        return proposal, u, log_w

    def sample(self, num_samples: int) -> Tensor:
        r"""Draws from the posterior by MCMC.

        The first call starts the chains and warms them up (``MCMCConfig.warmup``);
        each call then runs :math:`S \ge \max(\lceil n / C \rceil, 64)` iterations per chain
        (times ``thin``) and checks convergence (see the class description). Independence
        chains run longer: at least :math:`512 \lceil 1 / s \rceil` iterations, where :math:`s`
        is the importance fit's effective sample size share (:math:`\lceil 1 / s \rceil` at most
        30), and at least :math:`k \lceil n / C \rceil`, with :math:`k`
        from the warm-up's acceptance rate :math:`a` so that :math:`(1 - a)^k \le 0.05`
        (at most 10). A rejection repeats the draw before it, and a classifier two-sample
        test reads repeats as a cluster of their own: on gaussian_linear (10-D) with 10,000
        draws, 42% of the draws were repeats and the C2ST against the exact posterior was
        0.536, against 0.506 for the surrogate's own posterior; with the draws 3 iterations
        apart (and the importance fit no longer widened, :func:`sbikit.proposals.importance_fit`),
        5% and 0.502.

        Arguments:
            num_samples: The number of draws :math:`n`.

        Returns:
            The draws :math:`(n, D)`: :math:`\lceil n / C \rceil` evenly spaced iterations of
            every chain, iteration by iteration across the chains; all :math:`C \times S`
            draws are in :meth:`to_arviz`.
        """

        num_samples = check_count(num_samples, "num_samples")
        config = self.mcmc
        started = time.perf_counter()
        fresh = self._sampler is None
        if fresh:
            start, approximation, proposal = self._start()
            # a close approximation: independence proposals alone, evaluated in a few large calls, on
            # fewer, longer chains (their draws repeat after a rejection, which short chains'
            # R-hat reads as disagreement)
            self._independent = config.independence and self._fit_ess >= _USABLE_FIT
            if self._independent:
                start = start[: max(4, config.num_chains // 8)]
            self._sampler = HMC(self._log_density, start, config, self._describe, approximation, proposal,
                                bulk=self._log_target)
        chains_count = len(self._sampler.z)
        # independence chains: longer, the lower the importance fit's ESS share (its autocorrelation grows so)
        least = _MIN_DRAWS * 8 * min(30, math.ceil(1 / self._fit_ess)) if self._independent else _MIN_DRAWS
        draws = max(math.ceil(num_samples / chains_count), least)
        disable = None if config.show_progress is None else not config.show_progress
        with tqdm(total=(config.warmup if fresh else 0) + draws * config.thin, unit="step", disable=disable,
                  desc="MCMC warm-up" if fresh else "MCMC") as bar:
            if fresh:
                if self._independent:
                    warm = self._sampler.sample_independent(config.warmup, bar)
                    self._spacing = _spacing(float(warm.accept.mean()))
                else:
                    self._sampler.warmup(bar)
                bar.set_description("MCMC")
            if self._independent:
                # a rejection repeats a draw, and repeats among the returned draws are read as
                # their own cluster by a classifier (C2ST) and by anything else that counts them
                spaced = max(draws, math.ceil(num_samples / chains_count) * self._spacing)
                bar.total += (spaced - draws) * config.thin
                draws = spaced
                chains = self._sampler.sample_independent(draws, bar)
            else:
                chains = self._sampler.sample(draws, bar)
        theta = clamp_to_support(self.transform(chains.draws.double()).float(), self.prior)  # (C, S, D)
        self._chains = (theta, chains)
        self._check(theta, chains, time.perf_counter() - started)
        # evenly spaced iterations of every chain, not the first ones: the chains may run
        # far longer than n / C draws, and neighbouring draws are correlated
        per_chain = math.ceil(num_samples / len(theta))
        keep = torch.linspace(0, theta.shape[1] - 1, per_chain).round().long()
        return theta[:, keep].transpose(0, 1).reshape(-1, self.theta_dim)[:num_samples]

    def _check(self, theta: Tensor, chains, seconds: float) -> None:
        from . import _arviz

        stats = _arviz.convergence(theta.numpy())
        sampler, config = self._sampler, self.mcmc
        self.history = {
            "sampler": "independence" if self._independent else "hmc",
            "proposal_components": len(sampler.proposal.logits) if sampler.proposal is not None else 0,
            "num_chains": theta.shape[0], "draws_per_chain": theta.shape[1], "warmup": config.warmup,
            "thin": config.thin, "spacing": self._spacing if self._independent else 1,
            "step_size": sampler.step_size,
            "leapfrog_steps": sampler._leapfrog_steps(sampler.step_size),
            "acceptance": float(chains.accept.mean()), "divergences": int(chains.divergent.sum()),
            "r_hat": stats["r_hat"].tolist(), "ess_bulk": stats["ess_bulk"].tolist(),
            "ess_tail": stats["ess_tail"].tolist(), "uncovered": self._uncovered, "seconds": seconds,
        }
        if self._independent and self._uncovered > _UNCOVERED:
            warnings.warn(
                f"{self._uncovered:.0%} of the draws of tempered SMC lie where the independence proposal goes "
                "less often than to any of its own draws: the chains under-weight that part of the posterior "
                "(a mode or a tail that the proposal's mixture misses). Compare with "
                "MCMCConfig(independence=False) (HMC, whose chains also move locally), or raise "
                "MCMCConfig(mixture_components=...).",
                RuntimeWarning,
                stacklevel=3,
            )
        r_hat, ess = stats["r_hat"], stats["ess_bulk"]
        worst = int(np.nanargmax(np.where(np.isnan(r_hat), np.inf, r_hat)))
        if not r_hat[worst] <= config.max_rhat:
            warnings.warn(
                f"the MCMC chains disagree: R-hat is {r_hat[worst]:.3f} for {self.parameter_names[worst]} "
                f"(above {config.max_rhat}); separate modes, or chains still moving. Draw more "
                "(posterior.sample(n) continues the chains), or raise MCMCConfig(warmup=...).",
                RuntimeWarning,
                stacklevel=3,
            )
        low = int(np.nanargmin(np.where(np.isnan(ess), -np.inf, ess)))
        if not ess[low] >= config.min_ess:
            warnings.warn(
                f"the bulk effective sample size is {ess[low]:.0f} for {self.parameter_names[low]}, below "
                f"MCMCConfig.min_ess = {config.min_ess}; draw more samples.",
                RuntimeWarning,
                stacklevel=3,
            )

    def log_prob(self, theta: object) -> Tensor:
        r"""Evaluates the **unnormalized** log posterior :math:`\log p(\theta) + \sum_i \log q(x_i | \theta)`.

        The normalizing constant :math:`\log p(x_1, \dots, x_N)` is unknown, so values
        differ from the normalized log-density by the same constant everywhere: use them
        to compare parameters, not as densities.

        Arguments:
            theta: Parameters :math:`(*, D)`; rows outside the prior's support get :math:`-\infty`.

        Returns:
            The log-densities :math:`(*)`, on the CPU.
        """

        theta = check_theta(theta, self.theta_dim)
        flat = theta.reshape(-1, self.theta_dim)
        inside = in_support(self.prior, flat)
        anchor = self.transform(torch.zeros(self.theta_dim, dtype=torch.float64)).float()
        safe = clamp_to_support(torch.where(inside.unsqueeze(-1), flat, anchor), self.prior)
        u = self.transform.inv(safe.double()).float()
        log_p = self._log_likelihood(u) + self.prior.log_prob(safe)
        return torch.where(inside, log_p, -math.inf).reshape(theta.shape[:-1])

    def to_arviz(self, num_samples: int | None = None):
        r"""Returns the chains of the last ``sample`` call as an arviz InferenceData.

        The ``posterior`` group holds the :math:`C` chains of :math:`S` draws as they
        ran, ``sample_stats`` each draw's ``lp`` (the log-density in unconstrained
        space), ``acceptance_rate`` and ``diverging``, and ``observed_data`` the trials.
        With ``num_samples``, or before any ``sample``, it first draws ``num_samples``
        (1,000 by default).
        """

        from . import _arviz

        if num_samples is not None or self._chains is None:
            self.sample(1000 if num_samples is None else num_samples)
        theta, chains = self._chains
        stats = {"lp": chains.log_density.numpy(), "acceptance_rate": chains.accept.numpy(),
                 "diverging": chains.divergent.numpy()}
        attrs = {"inference": f"{self.likelihood.kind} + MCMC", "sampler": self.history["sampler"], "draws": "mcmc",
                 "step_size": self.history["step_size"], "warmup": self.mcmc.warmup}
        return _arviz.posterior_to_inference_data(theta.numpy(), self.parameter_names, self.x_obs.numpy(),
                                                  attrs=attrs, sample_stats=stats)

    def config(self) -> dict:
        return {"likelihood": {"kind": self.likelihood.kind, **self.likelihood.config()},
                "x_obs": self.x_obs.tolist(), "mcmc": self.mcmc.to_dict()}

    @classmethod
    def from_config(cls, config: dict, **components) -> "MCMCPosterior":
        from .io import check_components

        spec = config["likelihood"]
        likelihood_class = Saveable.kinds[spec["kind"]]
        check_components(likelihood_class, spec["kind"], components)
        likelihood = likelihood_class.from_config(spec, **components)
        return cls(likelihood, torch.tensor(config["x_obs"]), MCMCConfig(**config["mcmc"]))


class PerObservationPosterior(Posterior):
    r"""The posterior of any observation under a likelihood, sampled anew for each one.

    It meets the diagnostics' contract (``sample(n, x=xs)`` :math:`\to (n, m, D)`,
    ``log_prob(theta, x=xs)``), so that :func:`sbikit.diagnostics.sbc`, ``coverage``, ``tarp``,
    ``recovery`` and ``check`` calibrate an NLE as they do an NPE. Each observation is one
    trial. ``log_prob`` is unnormalized, with a constant that differs between observations but
    not within one (which is all that ranks need). :meth:`sbikit.Likelihood.posterior` without an
    observation returns one.

    ``sample`` draws for all :math:`m` observations at once:

    - ``batched=True`` (the default): tempered sequential Monte Carlo from the prior
      (:func:`sbikit.smc.temper`), :math:`P = \max(n, 512)` particles per observation, every
      observation's particles in one network call per move (at most :math:`2^{16}` particles
      per call, so observations go in groups of :math:`\lfloor 2^{16} / P \rfloor`). After the last
      tempering step, moves at :math:`\beta = 1` go on until 95% of each observation's particles
      have moved since the last resampling (at most 100 moves), and :math:`n` of the :math:`P`
      particles, picked at random, are its draws. A ``RuntimeWarning`` says how many
      observations fell short of that. ``history`` holds each observation's tempering steps,
      acceptance rate and share moved.
    - ``batched=False``: one :class:`MCMCPosterior` per observation (its start search, its
      chains and its convergence checks), :math:`m` runs in sequence. Their warnings are
      gathered into one per kind, with the number of observations that raised it.

    ``docs/design.md`` ("Calibrating NLE") compares the two, in draws' accuracy and in time.

    Arguments:
        likelihood: The surrogate, with ``posterior(x_obs, mcmc)``, ``log_prob(x, theta)``,
            ``check_counts``, ``check_support``, ``transform``, ``x_shape`` and ``prior``.
        mcmc: The settings of the MCMC runs of ``batched=False`` and of :meth:`to_arviz` (their
            own progress bars are off; one bar counts the observations); :class:`sbikit.MCMCConfig()`
            by default.
        batched: Sample all observations together by tempered SMC, or each by its own MCMC run.

    Example:
        >>> posterior = likelihood.posterior()  # doctest: +SKIP
        >>> posterior.sample(100, x=test.x).shape  # doctest: +SKIP
        torch.Size([100, 200, 3])
    """

    kind = "MCMC per observation"
    amortized = True
    normalized = False
    independent_draws = False

    def __init__(self, likelihood, mcmc: MCMCConfig | None = None, batched: bool = True) -> None:
        if mcmc is not None and not isinstance(mcmc, MCMCConfig):
            raise TypeError(f"mcmc must be a sbikit.MCMCConfig, got {type(mcmc).__name__}.")
        if not isinstance(batched, bool):
            raise TypeError(f"batched must be True or False, got {batched!r}.")
        self.likelihood, self.mcmc, self.batched = likelihood, mcmc if mcmc is not None else MCMCConfig(), batched
        self.prior, self.parameter_names = likelihood.prior, likelihood.parameter_names
        self.x_shape, self.network = likelihood.x_shape, likelihood.network
        self.history: dict = {}

    def _each(self, x: object, work, what: str) -> list:
        r"""Runs ``work(posterior, j)`` for the posterior of each observation :math:`j` of ``x``
        :math:`(m, *x\_shape)`, and warns once per kind of warning the samplers raised."""

        quiet = dataclasses.replace(self.mcmc, show_progress=False)
        results, raised = [], {}
        for j, obs in enumerate(tqdm(x, desc=what, unit="observation", disable=self._quiet(len(x)))):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results.append(work(self.likelihood.posterior(obs, quiet), j))
            for w in caught:
                raised.setdefault(w.category, [0, str(w.message)])[0] += 1
        for category, (count, message) in raised.items():
            warnings.warn(f"{count} of {len(x)} observations warned, the first: {message}", category, stacklevel=3)
        return results

    def _quiet(self, count: int) -> bool | None:
        show = self.mcmc.show_progress
        return True if count < 2 or show is False else None if show is None else False

    def _tempered(self, num_samples: int, x: Tensor) -> Tensor:
        r"""Draws :math:`(n, m, D)` for observations :math:`(m, *x\_shape)` by tempered SMC, in groups."""

        lik, prior, transform, dim = self.likelihood, self.prior, self.likelihood.transform, self.theta_dim
        lik.check_counts(x, "x")
        lik.check_support(x, "x")
        count = max(num_samples, _BATCH_PARTICLES)
        started, draws = time.perf_counter(), []
        history = {"sampler": "tempered SMC", "particles": count, "steps": [], "acceptance": [], "moved": []}
        with tqdm(total=len(x), desc="sampling", unit="observation", disable=self._quiet(len(x))) as bar:
            for first in range(0, len(x), max(1, _BATCH_ROWS // count)):
                group = x[first : first + max(1, _BATCH_ROWS // count)]
                k = len(group)

                def log_likelihood(u: Tensor) -> Tensor:  # (k, P, D) -> (k, P)
                    theta = clamp_to_support(transform(u.double()).float(), prior)
                    return lik.log_prob(group, theta.transpose(0, 1)).transpose(0, 1)

                with torch.no_grad():
                    theta = clamp_to_support(prior.sample((k, count)), prior)
                    u = transform.inv(theta.double()).float()
                    empty = ~torch.isfinite(log_likelihood(u)).any(-1)
                if bool(empty.any()):
                    raise SamplingError(
                        f"none of {count} prior draws gives observation {first + int(empty.nonzero()[0])} a finite "
                        "likelihood; check it against the simulator's outputs."
                    )
                with torch.no_grad():
                    out = temper(log_likelihood, functools.partial(_log_prior, prior, transform), u, ess=_TEMPER_ESS,
                                 moves=_MOVES, max_steps=_MAX_TEMPERING, settle=_SETTLE)
                pick = torch.rand(k, count).argsort(-1)[:, :num_samples]
                chosen = out.particles.gather(1, pick[..., None].expand(k, num_samples, dim))
                draws.append(clamp_to_support(transform(chosen.double()).float(), prior))
                history["steps"] += [out.steps] * k
                history["acceptance"] += out.acceptance.tolist()
                history["moved"] += out.moved.tolist()
                bar.update(k)
        history["seconds"] = time.perf_counter() - started
        self.history = history
        short = sum(share < _SETTLE for share in history["moved"])
        if short:
            warnings.warn(
                f"for {short} of {len(x)} observations, fewer than {_SETTLE:.0%} of the particles moved after the "
                f"last resampling (the least {min(history['moved']):.0%}), so draws repeat; compare with "
                "batched=False (an MCMC run per observation).",
                RuntimeWarning,
                stacklevel=3,
            )
        return torch.cat(draws).transpose(0, 1)

    def sample(self, num_samples: int, x: object) -> Tensor:
        r"""Draws :math:`(n, D)` from the posterior of one observation :math:`(*x\_shape)`, or
        :math:`(n, m, D)` for :math:`m` observations :math:`(m, *x\_shape)`: by tempered SMC
        for all at once, or with ``batched=False`` one MCMC run each."""

        num_samples = check_count(num_samples, "num_samples")
        x, batch = check_x(x, self.x_shape)
        if len(batch) > 1:
            raise ValueError(f"x has shape {tuple(x.shape)}; pass one observation {tuple(self.x_shape)} or a "
                             f"batch (m, {', '.join(map(str, self.x_shape))}).")
        flat = x.reshape(-1, *self.x_shape)
        if self.batched:
            draws = self._tempered(num_samples, flat)
            return draws[:, 0] if not batch else draws
        draws = self._each(flat, lambda post, j: post.sample(num_samples), "sampling")
        return draws[0] if not batch else torch.stack(draws, 1)

    def log_prob(self, theta: object, x: object) -> Tensor:
        r"""The unnormalized :math:`\log p(\theta) + \log q(x | \theta)` of parameters :math:`(*, D)`
        against observations :math:`(*x\_shape)` or :math:`(m, *x\_shape)`, broadcast as in
        :meth:`AmortizedPosterior.log_prob`."""

        theta = check_theta(theta, self.theta_dim)
        x, batch = check_x(x, self.x_shape)
        theta = theta.expand(*broadcast_batch(theta.shape[:-1], batch), self.theta_dim)
        if not batch:
            return self._each(x.unsqueeze(0), lambda post, j: post.log_prob(theta), "log_prob")[0]
        return torch.stack(self._each(x, lambda post, j: post.log_prob(theta[..., j, :]), "log_prob"), -1)

    def to_arviz(self, x: object, num_samples: int | None = None):
        r"""The chains of one observation's MCMC run, as :meth:`MCMCPosterior.to_arviz`."""

        return self.likelihood.posterior(x, self.mcmc).to_arviz(num_samples)

    def config(self) -> dict:
        return {"likelihood": {"kind": self.likelihood.kind, **self.likelihood.config()}, "mcmc": self.mcmc.to_dict(),
                "batched": self.batched}

    @classmethod
    def from_config(cls, config: dict, **components) -> "PerObservationPosterior":
        from .io import check_components

        spec = config["likelihood"]
        likelihood_class = Saveable.kinds[spec["kind"]]
        check_components(likelihood_class, spec["kind"], components)
        return cls(likelihood_class.from_config(spec, **components), MCMCConfig(**config["mcmc"]),
                   config.get("batched", True))
