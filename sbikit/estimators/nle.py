r"""Neural likelihood estimation (NLE): a surrogate of the simulator with a density.

NLE fits a conditional flow :math:`q_\phi(x | \theta)` to pairs
:math:`(\theta_i, x_i) \sim p(\theta) p(x | \theta)` by minimizing

.. math:: \mathcal{L}(\phi) = -\mathbb{E}_{p(\theta, x)} \log q_\phi(x | \theta),

which equals :math:`\mathbb{E}_{p(\theta)} \mathrm{KL}(p(x | \theta) \| q_\phi(x | \theta))`
up to a constant, so the minimizer is the simulator's likelihood for every
:math:`\theta` in the prior's support. The trained :class:`Likelihood` emulates the
simulator (one pass of the flow per batch of draws) and evaluates its density, so
independent observations combine by multiplying likelihoods:

.. math:: p(\theta | x_1, \dots, x_N) \propto p(\theta) \prod_{i=1}^N q_\phi(x_i | \theta),

which :meth:`Likelihood.posterior` samples by MCMC (:class:`sbikit.MCMCPosterior`).

The network's input is :math:`r = (u, t)`: the standardized unconstrained parameters
:math:`u = (T^{-1}(\theta) - \mu_u) / \sigma_u` and the standardized parameters
themselves, :math:`t = (\theta - \mu_\theta) / \sigma_\theta`. Both the flow's context
(through an optional embedding network) and a linear regression read the parameters
in their natural coordinates, one per parameter (:func:`natural_columns`): :math:`t` for
a bounded interval or the real line, and :math:`u` (a logarithm) for a half-line. The
map of an interval onto the real line is only there for MCMC; its tails stretch the
outer 5% of the interval, so a simulator linear in :math:`\theta` is not linear in
:math:`u` there, and a regression or a flow conditioned on :math:`u` must learn that
bend from the few simulations near the bounds. A regression on both fits that bend
as a feature, which the flow, conditioned on :math:`u`, undoes only in part
(``docs/design.md``, "NLE's inputs, and integers in a flow", has the measurements).

The flow models the z-scored, flattened observation :math:`z = (x - \mu_x) / \sigma_x`. As
in NPE, a ridge regression :math:`z \approx B r` and the Cholesky factor :math:`L` of its
residual covariance are computed before training, and the flow models
:math:`L^{-1}(z - B r)` (``adjust=True``, the default): an exact map with a constant
Jacobian, which leaves the flow only the non-linear part of the simulator. The flow
starts as the identity, at that Gaussian.

Each value of :math:`x` has a support, declared or inferred (``NLE(x_support=...)``), and the
flow learns the values mapped onto the real line by it (:mod:`sbikit.estimators.support`), so
that draws never leave the support and the density is zero outside it.

Where every value of the observation is a count (an integer with a lower bound and no upper
one), NLE models it with :class:`sbikit.estimators.counts.CountModel` instead of a flow
(``counts="autoregressive"``, the default): a probability mass function, one count at a time,
that needs neither a map nor dequantization (``docs/design.md`` compares the two on Ricker).

Other columns of integers are discrete, and a density fitted to them piles up on the
integers, where its height is arbitrary. Those columns are dequantized: the flow learns the
density of :math:`x + v`, with
:math:`v \sim \mathcal{U}[0, 1)`, whose integral over the cell :math:`[x, x + 1)` is the
probability of :math:`x`. :meth:`Likelihood.sample` returns :math:`\lfloor x + v \rfloor`
(integers) and :meth:`Likelihood.log_prob` the density at the cell's centre,
:math:`x + 1/2`, for :math:`\log P(x | \theta)`.

Training draws a fresh :math:`v` for every row in every step (:meth:`NLENetwork.loss`);
validation keeps one per row, so that the flow cannot fit the draws themselves. Binary
outcomes remain the hard case: the flow's density is not flat within a cell and leaks
outside {0, 1}, so the density at the centre misjudges :math:`P(x | \theta)` by a factor
that varies with :math:`\theta`.
"""

__all__ = ["NLE", "NLENetwork", "Likelihood", "natural_columns"]

import copy
import functools
import math
import torch
import torch.nn as nn
import warnings

from collections.abc import Callable, Sequence
from torch import Size, Tensor
from torch.distributions import Distribution, TransformedDistribution

from .. import io
from .._checks import broadcast_batch, check_count, check_theta, check_x
from ..data import Simulations
from ..errors import OutOfRangeWarning
from ..flows import coupling_flow, start_at_identity, start_couplings_without_context, train_location_only
from ..mcmc import MCMCConfig
from ..posterior import MCMCPosterior, PerObservationPosterior
from ..priors import clamp_to_support, from_unconstrained, in_support, prior_fingerprint, support_bounds
from ..runs.stream import member_rows, streamed, too_large
from ..train import TrainConfig, fit
from .base import (
    NLE_INTERVALS, TrainingRange, check_estimator_options, fitted_rows, linear_adjustment, network_features,
    standardize, training_data,
)
from .counts import CountModel
from . import support
from .npe import LowerAffineTransform
from .support import dequantize, from_free, outside, to_free

MAX_MEMBER_ROWS = 200_000  # member rows of mixed-effects data trained on, drawn at random beyond this
COUNT_MODEL = {"hidden": 64, "components": 4, "embedding": 8}  # sbikit.estimators.counts.CountModel's settings
MAX_ADJUSTED = 2048  # wider observations get no regression adjustment (its L is (X, X))
_CHUNK = 2**16  # (parameter, observation) pairs per network call in log_prob


class NLENetwork(nn.Module):
    r"""The trained part of NLE: standardization, an optional embedding and a conditional flow.

    ``forward(r)`` returns :math:`q(z | r)` over z-scored, flattened observations
    :math:`z` :math:`(*, X)`, with batch shape :math:`(*)`, for :math:`r = (u, t)`
    :math:`(*, D_u + D)`: the standardized unconstrained parameters :math:`u` and the
    standardized parameters themselves, :math:`t`. The flow is conditioned on the
    :math:`D_u` columns of :math:`r` named by the buffer ``context_index`` (through
    the embedding, if any); :class:`NLE` sets them to :func:`natural_columns`, and
    files from before it, which lack the buffer, load conditioned on :math:`u`, as
    they were trained. The flow starts as the identity
    (:func:`sbikit.flows.start_at_identity`): at the adjustment's Gaussian. Its
    couplings start blind to the parameters
    (:func:`sbikit.flows.start_couplings_without_context`): the element-wise layers
    carry the parameters' effect on location and scale from the first step, and the
    couplings learn a dependence on them only as far as the data asks (``docs/design.md``,
    "NLE's inputs, and integers in a flow", has the measurements).

    Arguments:
        features: The number of unconstrained parameters :math:`D_u`.
        x_shape: The shape of one observation; the flow models its :math:`X` elements.
        embedding: A network :math:`(B, D_u) \to (B, F)` for the parameters, or None.
        flow: The flow builder ``flow(features, context)``.
        theta_dim: The number of parameters :math:`D` (by default :math:`D_u`).
    """

    def __init__(self, features: int, x_shape: Sequence[int], embedding: nn.Module | None, flow: Callable,
                 theta_dim: int | None = None, counts: dict | None = None) -> None:
        super().__init__()
        self.x_shape = Size(x_shape)
        size = self.x_shape.numel()
        self.features = features
        theta_dim = features if theta_dim is None else theta_dim
        self.embedding = embedding
        context = features if embedding is None else network_features(embedding, Size([features]), "embedding")
        if counts is None:
            self.flow = start_couplings_without_context(start_at_identity(flow(size, context)))
            self.counts = None
        else:
            self.flow = None
            self.counts = CountModel(size, context, **counts)
        self.register_buffer("theta_loc", torch.zeros(features))
        self.register_buffer("theta_scale", torch.ones(features))
        self.register_buffer("bound_loc", torch.zeros(theta_dim))
        self.register_buffer("bound_scale", torch.ones(theta_dim))
        self.register_buffer("x_loc", torch.zeros(size))
        self.register_buffer("x_scale", torch.ones(size))
        # z = B r + L z': the regression adjustment on r = (u, t)
        self.register_buffer("x_coef", torch.zeros(size, features + theta_dim))
        self.register_buffer("x_tril", torch.eye(size))
        self.register_buffer("context_index", torch.arange(features))  # the columns of r the flow sees
        self.register_buffer("x_discrete", torch.zeros(size))  # 1 for the columns of counts, dequantized
        # each column's continuous range (sbikit.estimators.support), and whether the user declared it
        self.register_buffer("x_low", torch.full((size,), -math.inf))
        self.register_buffer("x_high", torch.full((size,), math.inf))
        self.register_buffer("x_declared", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("x_knee", torch.ones(size))
        self.x_range = TrainingRange(size)

    def context(self, r: Tensor) -> Tensor:
        r"""The context :math:`(*, F)` of the flow or the count model, for inputs :math:`r` :math:`(*, D_u + D)`."""

        c = r[..., self.context_index]
        if self.embedding is None:
            return c
        return self.embedding(c.reshape(-1, c.shape[-1])).reshape(*c.shape[:-1], -1)

    def forward(self, r: Tensor) -> Distribution:
        shift = LowerAffineTransform(r @ self.x_coef.T, self.x_tril)
        return TransformedDistribution(self.flow(self.context(r)), [shift], validate_args=False)

    def log_px(self, r: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log q(x | r)` for flat observations :math:`(*, X)` inside the support, broadcast
        against :math:`r`: from the count model, or the flow's density with counts at the centre of
        their cell."""

        if self.counts is None:
            return self.log_q(r, x + 0.5 * self.x_discrete)
        shape = torch.broadcast_shapes(r.shape[:-1], x.shape[:-1])
        r, x = r.expand(*shape, r.shape[-1]), x.expand(*shape, x.shape[-1])
        counts = (x - self.x_low).clamp_min(0).reshape(-1, x.shape[-1])
        return self.counts.log_prob(counts, self.context(r).reshape(len(counts), -1)).reshape(shape)

    def sample_x(self, r: Tensor, num_samples: int) -> Tensor:
        r"""Draws flat observations :math:`(n, *, X)` inside the support, for inputs :math:`r` :math:`(*, D_u + D)`."""

        if self.counts is None:
            w = self.x_loc + self.x_scale * self(r).sample((num_samples,))
            return from_free(w, self.x_discrete, self.x_low, self.x_high, self.x_knee)
        context = self.context(r)
        flat = context.reshape(1, -1, context.shape[-1]).expand(num_samples, -1, -1).reshape(-1, context.shape[-1])
        return (self.counts.sample(flat) + self.x_low).reshape(num_samples, *r.shape[:-1], -1)

    def loss(self, r: Tensor, x: Tensor) -> Tensor:
        r"""Returns :math:`-\log q(y | r)`, :math:`(B,)`, for flattened, dequantized observations
        :math:`y` :math:`(B, X)`, mapped onto the real line column by column
        (:func:`~sbikit.estimators.support.to_free`) and standardized.

        In training mode, the columns of counts get fresh dequantization noise: the cell
        :math:`\lfloor y \rfloor` plus a new :math:`v \sim \mathcal{U}[0, 1)`, drawn from
        torch's global CPU generator (which :meth:`NLE.fit` seeds and checkpoints save).
        In evaluation mode (validation) ``y`` is taken as it is.
        """

        if self.counts is not None:
            return -self.log_px(r, x)
        if self.training and bool(self.x_discrete.any()):
            x = dequantize(x.floor(), torch.rand(x.shape, dtype=x.dtype).to(x.device), self.x_discrete)
        return -self.log_q(r, x)

    def log_q(self, r: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log q(y | r)` in the units of :math:`y` :math:`(*, X)`, broadcast against :math:`r`;
        :math:`-\infty` where :math:`y` is outside the support's continuous range."""

        w, log_det = to_free(y, self.x_low, self.x_high, self.x_knee)
        log_q = self(r).log_prob((w - self.x_loc) / self.x_scale) - self.x_scale.log().sum() + log_det
        return torch.nan_to_num(log_q, nan=-math.inf)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # files from before the regression on t have coefficients for u only
        coef = state_dict.get(prefix + "x_coef")
        if coef is not None and coef.shape[1] == self.features < self.x_coef.shape[1]:
            state_dict[prefix + "x_coef"] = torch.cat((coef, coef.new_zeros(len(coef), self.x_coef.shape[1] - coef.shape[1])), 1)
            for name in ("bound_loc", "bound_scale"):
                state_dict.setdefault(prefix + name, getattr(self, name).clone())
        # files from before natural coordinates conditioned the flow on u
        state_dict.setdefault(prefix + "context_index", torch.arange(self.features))
        # files from before discrete columns were dequantized treated every column as continuous, and
        # files of format 4 had no bounds
        fills = (("x_discrete", 0), ("x_low", -math.inf), ("x_high", math.inf), ("x_declared", False), ("x_knee", 1))
        for name, fill in fills:
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), fill))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Likelihood(io.Saveable):
    r"""A surrogate likelihood :math:`q(x | \theta)` trained by :class:`NLE`: an emulator
    (``sample``), a density (``log_prob``) and posteriors of i.i.d. trials (``posterior``).

    It is built as :class:`sbikit.NPEPosterior` is, from the prior, the trained
    :class:`NLENetwork`, the parameter names and the specs that rebuild it by name.
    """

    kind = "NLE"

    def __init__(self, prior: Distribution, network: NLENetwork, parameter_names: Sequence[str], specs: dict) -> None:
        self.prior = prior
        self.network = network
        self.x_shape = network.x_shape
        self.transform = from_unconstrained(prior, specs["intervals"])
        self.parameter_names = list(parameter_names)
        self.specs = specs
        self.history: dict = {}

    @property
    def theta_dim(self) -> int:
        return self.prior.event_shape[0]

    def _theta(self, theta: object) -> Tensor:
        r"""Checks parameters :math:`(*, D)` and returns the network's input for them (see :meth:`standardize`)."""

        theta = check_theta(theta, self.theta_dim)
        outside = ~in_support(self.prior, theta)
        if bool(outside.any()):
            row = tuple(outside.nonzero()[0].tolist())
            raise ValueError(
                f"theta{list(row)} = {theta[row].tolist()} lies outside the prior's support, where the "
                "surrogate was never trained; pass parameters inside the prior's support."
            )
        return self.standardize(self.unconstrained(theta).float())

    def unconstrained(self, theta: Tensor) -> Tensor:
        r""":math:`T^{-1}(\theta)` in float64 for parameters :math:`(*, D)` in the support; one on a
        bound of a box is read one step inside it (:func:`sbikit.priors.clamp_to_support`)."""

        return self.transform.inv(clamp_to_support(theta, self.prior).double())

    def standardize(self, u: Tensor) -> Tensor:
        r"""Maps unconstrained parameters :math:`(*, D_u)` to the network's input
        :math:`r = (u, t)`, both standardized (differentiable in ``u``)."""

        net = self.network
        theta = self.transform(u.double()).to(net.theta_loc)  # on u's device: the prior's, not the network's
        u = u.to(net.theta_loc)
        return torch.cat(((u - net.theta_loc) / net.theta_scale, (theta - net.bound_loc) / net.bound_scale), -1)

    def sample(self, num_samples: int, theta: object) -> Tensor:
        r"""Emulates the simulator: draws :math:`x \sim q(x | \theta)` in one pass of the flow.

        Arguments:
            num_samples: The number of draws :math:`n` per parameter.
            theta: One parameter :math:`(D,)` or a batch :math:`(m, D)` (any batch shape
                :math:`(*, D)`), inside the prior's support.

        Returns:
            The draws, :math:`(n, *x\_shape)` for one parameter, :math:`(n, m, *x\_shape)`
            for a batch, on the CPU; always inside the support (:attr:`x_support`): integers in
            the columns of counts (see the module's description).
        """

        num_samples = check_count(num_samples, "num_samples")
        u = self._theta(theta)
        net = self.network
        with torch.no_grad():
            x = net.sample_x(u, num_samples)  # in the support; counts are integers
        return x.reshape(*x.shape[:-1], *self.x_shape).cpu()

    def log_prob(self, x: object, theta: object) -> Tensor:
        r"""Evaluates the surrogate log-likelihood :math:`\log q(x | \theta)`, normalized over :math:`x`;
        in columns of counts, a log-probability (the density at the centre of :math:`x`'s cell).

        Arguments:
            x: Observations :math:`(*, *x\_shape)`.
            theta: Parameters :math:`(*, D)` inside the prior's support; the batch shapes
                of ``x`` and ``theta`` broadcast, as in :meth:`sbikit.Posterior.log_prob`:
                one observation against many parameters, many observations against one
                parameter, or :math:`(n, m)` pairs.

        Returns:
            The log-densities, with the broadcast batch shape, on the CPU.
        """

        x, batch = check_x(x, self.x_shape)
        self.check_counts(x)
        u = self._theta(theta)
        shape = broadcast_batch(u.shape[:-1], batch)
        u = u.expand(*shape, u.shape[-1]).reshape(-1, u.shape[-1])
        x = x.reshape(*batch, -1).expand(*shape, self.x_shape.numel()).reshape(len(u), -1)
        with torch.no_grad():
            parts = [self._log_q(a, b) for a, b in zip(u.split(_CHUNK), x.split(_CHUNK))]
        return torch.cat(parts).reshape(shape).cpu()

    def check_counts(self, x: Tensor, name: str = "x") -> None:
        r"""Raises a ValueError if observations :math:`(*, *x\_shape)` have a value other than an
        integer in a column that the surrogate learned as counts."""

        discrete = self.network.x_discrete.cpu().bool()
        if bool(discrete.any()):
            flat = x.reshape(-1, self.x_shape.numel())[:, discrete]
            bad = flat != flat.round()
            if bool(bad.any()):
                row, column = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"{name} has the value {float(flat[row, column])!r} in column "
                    f"{int(discrete.nonzero()[column])} (of the flattened observation), which the surrogate "
                    "learned as counts from training data that were all integers there; pass integers."
                )

    def _log_q(self, u: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log q(x | u)` for standardized parameters and flattened observations with
        broadcastable batch shapes, in the units of :math:`x`; counts at the centre of their cell,
        and :math:`-\infty` outside the support."""

        net = self.network
        x = x.to(net.x_loc)
        log_q = net.log_px(u, x)
        off = outside(x, net.x_discrete, net.x_low, net.x_high).any(-1)
        return torch.where(off, -math.inf, log_q)

    @property
    def x_support(self) -> list[str]:
        r"""Each column's support (of the flattened observation) in words, declared with
        ``NLE(x_support=...)`` or inferred from the training data."""

        net = self.network
        return support.describe(net.x_discrete.cpu(), net.x_low.cpu(), net.x_high.cpu())

    def check_support(self, x: Tensor, name: str = "x_obs") -> None:
        r"""Checks observations :math:`(*, *x\_shape)` against the support and the training range.

        Raises:
            ValueError: If a value lies outside a declared support.

        Warns:
            OutOfRangeWarning: If a value lies outside a support inferred from the training data,
                or beyond the training data's range (:class:`~sbikit.estimators.base.TrainingRange`).
        """

        net = self.network
        flat = x.reshape(-1, self.x_shape.numel()).to(net.x_low)
        off = outside(flat, net.x_discrete, net.x_low, net.x_high)
        if not bool(off.any()):
            net.x_range.warn(flat, name, stacklevel=3)
        for declared in (True, False):
            bad = off & (net.x_declared == declared)
            if bool(bad.any()):
                row, column = (int(i) for i in bad.nonzero()[0])
                words = (f"{name} has the value {float(flat[row, column])!r} in column {column} (of the flattened "
                         f"observation), outside its support, {self.x_support[column]}")
                if declared:
                    raise ValueError(f"{words}, declared with x_support; pass observations inside it.")
                warnings.warn(f"{words}, inferred from the training data, where every value was inside it; "
                              "the surrogate gives it probability 0. Declare the support with NLE(x_support=...) "
                              "if it is wider.", OutOfRangeWarning, stacklevel=3)

    def trial_log_likelihood(self, u: Tensor, trials: Tensor) -> Tensor:
        r"""The log-likelihood of each trial at each parameter, differentiable in ``u``.

        This is the contract :class:`sbikit.MCMCPosterior` samples with.

        Arguments:
            u: Unconstrained parameters :math:`(C, D)` (before standardization), on the CPU.
            trials: Checked observations :math:`(N, *x\_shape)`.

        Returns:
            :math:`\log q(x_i | T(u_c))`, :math:`(C, N)`, on the CPU.
        """

        c, n = len(u), len(trials)
        r = self.standardize(u)
        v = r.unsqueeze(-2).expand(c, n, r.shape[-1])
        x = trials.reshape(1, n, -1).expand(c, n, self.x_shape.numel())
        return self._log_q(v, x).cpu()

    def posterior(
        self, x_obs: object = None, mcmc: MCMCConfig | None = None, batched: bool = True
    ) -> MCMCPosterior | PerObservationPosterior:
        r"""The posterior :math:`p(\theta | x_1, \dots, x_N) \propto p(\theta) \prod_i q(x_i | \theta)`,
        sampled by MCMC: independence proposals from an importance fit (a Gaussian or a
        Student-t mixture), or vectorized HMC where no fit is close (see :mod:`sbikit.mcmc`).

        Arguments:
            x_obs: One observation :math:`(*x\_shape)` or :math:`N` independent trials
                :math:`(N, *x\_shape)` of the same parameters (for mixed-effects data, the
                :math:`N` members of one group, :math:`(N, L)`); None for the posterior of any
                one observation, which the diagnostics calibrate
                (``dx.sbc(likelihood.posterior(), test)``).
            mcmc: The sampler's settings; :class:`sbikit.MCMCConfig()` by default.
            batched: Without ``x_obs``: whether the posterior samples many observations together,
                by tempered SMC, or each by its own MCMC run (see :class:`sbikit.PerObservationPosterior`).

        Returns:
            An :class:`sbikit.MCMCPosterior`, whose chains run when it is first sampled; without
            ``x_obs``, a :class:`sbikit.PerObservationPosterior`.

        Raises:
            ValueError: If ``x_obs`` has no trials, the wrong shape, or a value outside a
                declared support (``NLE(x_support=...)``).

        Warns:
            OutOfRangeWarning: If a value lies outside a support inferred from the training data,
                or beyond the training data's range.
        """

        if x_obs is None:
            return PerObservationPosterior(self, mcmc, batched)
        posterior = MCMCPosterior(self, x_obs, mcmc)
        self.check_counts(posterior.trials, "x_obs")
        self.check_support(posterior.trials, "x_obs")
        return posterior

    def config(self) -> dict:
        return {"x_shape": list(self.x_shape), "parameter_names": self.parameter_names, **self.specs,
                "history": self.history}

    @classmethod
    def from_config(
        cls,
        config: dict,
        prior: Distribution | None = None,
        embedding: nn.Module | None = None,
        flow: Callable | None = None,
    ) -> "Likelihood":
        names = ("prior", "prior_check", "has_embedding", "embedding", "flow", "training", "intervals")
        specs = {k: config[k] for k in names}
        specs["counts"] = config.get("counts")  # files of format 8 and before have no count model
        prior = io.rebuild_prior(prior, specs)
        if specs["has_embedding"]:
            embedding = io.rebuild("embedding", embedding, specs["embedding"])
        elif embedding is not None:
            raise ValueError("this likelihood was trained without an embedding network; load it without one.")
        builder = flow if flow is not None else functools.partial(io.rebuild, "flow", None, specs["flow"])
        features = from_unconstrained(prior, specs["intervals"]).inverse_shape(prior.event_shape)[-1]
        network = NLENetwork(features, config["x_shape"], embedding, builder, prior.event_shape[0],
                             specs["counts"])
        likelihood = cls(prior, network, config["parameter_names"], specs)
        likelihood.history = config.get("history", {})
        return likelihood

    def __repr__(self) -> str:
        return (
            f"Likelihood(prior={self.prior!r}, x_shape={tuple(self.x_shape)}, "
            f"parameter_names={self.parameter_names}, x_support={_runs(self.x_support)})"
        )


class NLE:
    r"""Neural likelihood estimation: learns a surrogate :math:`q(x | \theta)` of the simulator.

    Arguments:
        prior: The prior, a distribution over :math:`(D,)` with a support; the
            surrogate is trained on, and valid for, parameters in its support.
        embedding: An optional network :math:`(B, D) \to (B, F)` through which the
            (standardized, unconstrained) parameters reach the flow, trained jointly.
        flow: A flow builder ``flow(features, context)`` for the observations.
            Defaults to :func:`sbikit.flows.coupling_flow` (spline coupling).
        training: The training settings. Defaults to :class:`TrainConfig()`.
        parameter_names: A name per parameter, for ``to_arviz`` and plots.
        adjust: Whether the flow models the residual of a linear regression of the
            observations on the parameters (see the module's description).
        max_member_rows: For mixed-effects data, the most member rows trained on.
        location_first: Whether the flow's leading element-wise layer (its conditional
            location and scale) is trained alone before the whole flow (see :meth:`fit`).
        x_support: The support of the observations' values (flattened), as
            :mod:`torch.distributions.constraints`: one for every value, a sequence of one per
            value, or a dict ``{column: constraint}``; for example ``constraints.nonnegative_integer``,
            ``constraints.integer_interval(0, 10)``, ``constraints.positive`` or
            ``constraints.interval(0, 1)``. A value not declared is inferred from the training
            data: integers >= 0 in every simulation are counts (``nonnegative_integer``), other
            integers are integers, anything else is real (``Likelihood.x_support`` says which).
            The surrogate puts all its mass inside the support: draws never leave it, and its
            density is zero outside it.
        counts: How an observation whose every value is a count (integers with a lower bound
            and no upper one, declared or inferred) is modelled: ``"autoregressive"`` (the
            default), one count at a time by :class:`sbikit.estimators.counts.CountModel`, a
            probability mass function (no ``flow``, ``adjust`` or ``location_first`` then); or
            ``"dequantized"``, by the flow, as any other integers.

    Observations of any fixed shape are flattened for the flow. For sets of members
    (``sbikit.simulate(MixedEffects(...))``), each member is a trial: the surrogate
    learns one member's likelihood given the global parameters, and a group of
    :math:`M` members is :math:`M` i.i.d. trials in :meth:`Likelihood.posterior`.

    Example:
        >>> prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 200, seed=0)
        >>> likelihood = sbikit.NLE(prior, training=sbikit.TrainConfig(max_epochs=2)).fit(data)
        >>> likelihood.sample(5, theta=torch.zeros(3, 2)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self,
        prior: Distribution,
        *,
        embedding: nn.Module | None = None,
        flow: Callable | None = None,
        training: TrainConfig | None = None,
        parameter_names: Sequence[str] | None = None,
        adjust: bool = True,
        max_member_rows: int = MAX_MEMBER_ROWS,
        location_first: bool = True,
        x_support: object = None,
        counts: str = "autoregressive",
    ) -> None:
        self.prior, self.parameter_names = check_estimator_options(prior, flow, training, parameter_names)
        if embedding is not None and not isinstance(embedding, nn.Module):
            raise TypeError(f"embedding must be a torch.nn.Module, got {type(embedding).__name__}.")
        for name, value in (("adjust", adjust), ("location_first", location_first)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}.")
        self.embedding = embedding
        self.flow = flow if flow is not None else coupling_flow
        self.training = training if training is not None else TrainConfig()
        self.adjust = adjust
        self.location_first = location_first
        self.max_member_rows = check_count(max_member_rows, "max_member_rows")
        if x_support is not None:  # checked now, against its own length; against the data's in fit
            size = max(x_support) + 1 if isinstance(x_support, dict) and x_support else 1
            support.parse_support(x_support, len(x_support) if isinstance(x_support, (list, tuple)) else size)
        self.x_support = x_support
        if counts not in ("autoregressive", "dequantized"):
            raise ValueError(f"counts must be 'autoregressive' or 'dequantized', got {counts!r}.")
        self.counts = counts
        self.count_model = dict(COUNT_MODEL)

    def fit(self, data: Simulations) -> Likelihood:
        r"""Trains the surrogate on ``data``; rows with non-finite values are excluded. A store
        (:func:`sbikit.open_store`) too large for memory is streamed from disk, as in NPE.

        With ``location_first`` (the default), training has two stages on the same
        split. First only the embedding, if any, and the flow's leading element-wise
        layer train (:func:`sbikit.flows.train_location_only`), for a quarter of the
        epochs (:meth:`sbikit.TrainConfig.resolve`): with the couplings still the
        identity, a regression of the observations' location and scale on the
        parameters. Then the whole flow trains from there; ``history`` is this second
        stage's, with the first's under ``history["location_stage"]``. Trained together
        from the start, the couplings, which read both the observations and the
        parameters, fit the noise of the training rows before the location is learned
        (``docs/design.md``, "NLE's inputs, and integers in a flow", has the measurements,
        including the corners and small budgets where the first stage costs). A flow
        without a leading element-wise layer (zuko's MAF) has one stage;
        ``location_first=False`` gives one stage for any flow.
        """

        if getattr(data, "structure", None) == "series":
            raise TypeError(
                "NLE models observations of a fixed shape, or the members of sets as i.i.d. trials; "
                "for time series use sbikit.NPE."
            )
        members = getattr(data, "structure", None) == "set"
        stream = None
        if members:  # each member is a trial: at most max_member_rows of them, read into memory
            theta, x, _ = member_rows(data if too_large(data) else training_data(self.prior, data),
                                      self.max_member_rows, self.training.seed)
            data = Simulations(theta=theta, x=x)
        else:
            stream = streamed(data)
        data = training_data(self.prior, data if stream is None else stream.sample())
        likelihood, tensors = self._build(data, fitted_rows(len(data), self.training, stream is not None))
        if stream is not None:  # standardized and adjusted on a sample; trained on every row, read in chunks
            tensors = copy.copy(stream)
            tensors.transform = functools.partial(_training_rows, likelihood)
        network, stage = likelihood.network, None
        # the dequantization noise of training (NLENetwork.loss) comes from the global CPU
        # generator: seeded here, so that training is reproducible, and left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.training.seed)
            if self.location_first and network.flow is not None:
                with train_location_only(network.flow) as any_to_train:
                    if any_to_train:
                        stage = fit(network, tensors, self.training, "location", "location")
            kind = "likelihood" if network.counts is None else "counts"
            likelihood.history = fit(network, tensors, self.training, "training", kind)
        if stage is not None:
            likelihood.history["location_stage"] = stage
        likelihood.history["adjusted"] = self.adjust and math.prod(data.x_shape) <= MAX_ADJUSTED
        likelihood.history["members_as_trials"] = members
        likelihood.history["discrete_columns"] = int(network.x_discrete.sum())
        likelihood.history["count_model"] = network.counts is not None
        likelihood.history["x_support"] = likelihood.x_support
        return likelihood

    def _build(self, data: Simulations, rows: Tensor | slice) -> tuple[Likelihood, tuple[Tensor, Tensor]]:
        r"""Builds an untrained likelihood for ``data``, with its standardization and adjustment
        fitted on ``rows`` (:func:`~sbikit.estimators.base.fitted_rows`), and the training tensors."""

        config = self.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            embedding = copy.deepcopy(self.embedding)
            features = from_unconstrained(self.prior, NLE_INTERVALS).inverse_shape(self.prior.event_shape)[-1]
            x = data.x.reshape(len(data), -1)
            declared = support.parse_support(self.x_support, x.shape[1])
            support.infer_support(x, *declared)
            discrete, low, high, _ = declared
            as_counts = self.counts == "autoregressive" and support.all_counts(discrete, low, high)
            counts = dict(self.count_model) if as_counts else None
            network = NLENetwork(features, data.x_shape, embedding, self.flow, self.prior.event_shape[0], counts)
            specs = {
                "prior": io.prior_spec(self.prior),
                "prior_check": prior_fingerprint(self.prior),
                "has_embedding": embedding is not None,
                "embedding": None if embedding is None else io.module_spec(embedding),
                "flow": io.builder_spec(self.flow),
                "counts": counts,
                "training": config.to_dict(),
                "intervals": NLE_INTERVALS,
            }
            likelihood = Likelihood(self.prior, network, self.parameter_names, specs)
            u = likelihood.unconstrained(data.theta)
            if not bool(torch.isfinite(u).all()):
                raise ValueError("some theta lie on the boundary of the prior's support, where they cannot be mapped.")
            for buffer, value in zip((network.x_discrete, network.x_low, network.x_high, network.x_declared), declared):
                buffer.copy_(value)
            network.x_range.fit(x)
            for (loc, scale), values in (((network.theta_loc, network.theta_scale), u),
                                         ((network.bound_loc, network.bound_scale), data.theta)):
                mean, std = standardize(values[rows])
                loc.copy_(mean)
                scale.copy_(std)
            context, regressors = natural_columns(self.prior, features)
            network.context_index.copy_(context)
            r = likelihood.standardize(u.float())  # the training rows: as _training_rows, from u and y at hand
            if network.counts is not None:
                network.counts.fit_scales(x[rows] - low)
                return likelihood, (r, x)
            y = _dequantized(network, data.theta, x)
            network.x_knee.copy_(support.knees(y[rows], network.x_low, network.x_high))
            w = to_free(y, network.x_low, network.x_high, network.x_knee)[0]
            mean, std = standardize(w[rows])
            network.x_loc.copy_(mean)
            network.x_scale.copy_(std)
            if self.adjust and y.shape[1] <= MAX_ADJUSTED:
                coef, tril = linear_adjustment((w[rows] - network.x_loc) / network.x_scale, r[rows][:, regressors])
                network.x_coef[:, regressors] = coef
                network.x_tril.copy_(tril)
        return likelihood, (r, y)


def natural_columns(prior: Distribution, features: int) -> tuple[Tensor, Tensor]:
    r"""The columns of the network's input :math:`r = (u, t)` that hold each parameter in its
    natural coordinates: the flow's context, and the adjustment's regressors.

    A parameter on a bounded interval or the real line is read as :math:`t` (the
    parameter itself, standardized; on the real line :math:`u` is the same), and one
    on a half-line as :math:`u` (a logarithm of its distance to the bound), which the
    regression also gets :math:`t` for. A support that is not a box of intervals
    (one whose unconstrained space has another dimension, such as a simplex) keeps
    :math:`u` for the context and both for the regression.

    Arguments:
        prior: The prior over :math:`(D,)`.
        features: The number of unconstrained parameters :math:`D_u`.

    Returns:
        The context's :math:`D_u` column indices and the regressors' column indices.

    Example:
        >>> prior = sbikit.BoxUniform(torch.zeros(2), torch.ones(2))
        >>> natural_columns(prior, 2)  # r = (u_0, u_1, t_0, t_1)
        (tensor([2, 3]), tensor([2, 3]))
    """

    dim = prior.event_shape[0]
    bounds = support_bounds(prior)
    if bounds is None or features != dim:
        return torch.arange(features), torch.arange(features + dim)
    lower, upper = bounds
    half_line = torch.isfinite(lower) != torch.isfinite(upper)
    index = torch.arange(dim)
    context = torch.where(half_line, index, features + index)
    return context, torch.cat((index[half_line], features + index))


def _dequantized(network: NLENetwork, theta: Tensor, x: Tensor) -> Tensor:
    r"""Adds :math:`v \sim \mathcal{U}[0, 1)` to the discrete columns of flat observations
    :math:`(B, X)`. The draws are seeded by the parameters of the rows read together (all of
    them in memory, or a chunk of a store), not by the global random state, so that the same
    rows read again get the same :math:`v` and training stays reproducible."""

    if network.counts is not None or not bool(network.x_discrete.any()):
        return x
    key = int((theta.double().abs().sum() * 2**20).round()) % 2**62
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(key), dtype=x.dtype)
    return dequantize(x, noise, network.x_discrete.to(x))


def _training_rows(likelihood: Likelihood, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    r"""The network's training rows: the standardized parameters :math:`r` and the flat
    :math:`x`, dequantized in its discrete columns."""

    r = likelihood.standardize(likelihood.unconstrained(theta).float())
    return r, _dequantized(likelihood.network, theta, x.reshape(len(x), -1))


def _runs(words: list[str]) -> str:
    r"""Consecutive equal entries as one: ``['real', 'real', 'integers >= 0']`` reads
    ``"2 x real, integers >= 0"``."""

    parts, start = [], 0
    for end in range(1, len(words) + 1):
        if end == len(words) or words[end] != words[start]:
            parts.append(words[start] if end - start == 1 else f"{end - start} x {words[start]}")
            start = end
    return ", ".join(parts)
