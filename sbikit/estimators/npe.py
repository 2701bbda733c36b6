r"""Neural posterior estimation (NPE).

NPE fits a conditional flow :math:`q_\phi(\theta | s_\psi(x))` to pairs
:math:`(\theta_i, x_i) \sim p(\theta) p(x | \theta)` by minimizing

.. math:: \mathcal{L}(\phi, \psi) = -\mathbb{E}_{p(\theta, x)} \log q_\phi(\theta | s_\psi(x)),

which equals :math:`\mathbb{E}_{p(x)} \mathrm{KL}(p(\theta | x) \| q_\phi(\theta | x))`
up to a constant, so the minimizer is the posterior for every :math:`x` at once
(amortized inference). The flow works on :math:`u = (T^{-1}(\theta) - \mu) / \sigma`,
where :math:`T` maps unconstrained space onto the prior's support and
:math:`\mu, \sigma` standardize; the summary network :math:`s_\psi` sees
standardized :math:`x` and is trained jointly with the flow.

Before training, a ridge regression of :math:`u` on the standardized :math:`x`
(for vector observations) gives a linear prediction :math:`B z` and the
Cholesky factor :math:`L` of the residual covariance; the flow then models
:math:`u' = L^{-1} (u - B z)`, which is close to standard normal wherever the
posterior is close to Gaussian (regression adjustment, as in Beaumont et al.,
2002). The map is exact and its Jacobian is constant, so densities stay exact.
Where the posterior's location is far from linear in :math:`x`, the adjustment
can hurt; by default NPE races the two and keeps the better one by validation
loss.
"""

__all__ = ["NPE", "NPENetwork", "NPEPosterior"]

import copy
import functools
import math
import torch
import torch.nn as nn

from collections.abc import Callable, Sequence
from torch import Size, Tensor
from torch.distributions import Distribution, Transform, TransformedDistribution, constraints

from .. import io
from ..data import Simulations
from ..flows import coupling_flow
from ..nn import MLP, ConvSummary, DeepSet, GRUSummary
from ..posterior import AmortizedPosterior, SupportMappedDistribution, draw, inside_box
from ..priors import clamp_to_support, from_unconstrained, prior_fingerprint, support_bounds
from ..runs.stream import streamed
from ..train import TrainConfig, Training
from .base import (
    NPE_INTERVALS, SummaryRange, TrainingRange, check_estimator_options, fitted_rows, linear_adjustment, network_features,
    standardize, training_data,
)


TRUNCATION_DRAWS = 4  # draws per row for the gradient of a truncated flow's log mass inside its box
VALIDATION_DRAWS = 64  # draws per row for that log mass in the validation loss
TRUNCATION_ROWS = 32  # rows of each batch whose draws estimate that gradient, for the whole batch
BOUNDS = ("truncate", "map")
MAX_REGRESSORS = 2048  # wider vector observations get no regression adjustment
ADJUSTMENT_PILOT = 0.1  # the share of the schedule over which adjust="auto" races the two models


def _num_regressors(x_shape: Sequence[int]) -> int:
    r"""The regressors of the adjustment: the features of a vector observation; none for sets,
    series, arrays, or vectors wider than ``MAX_REGRESSORS``."""

    return x_shape[0] if len(x_shape) == 1 and x_shape[0] <= MAX_REGRESSORS else 0


class LowerAffineTransform(Transform):
    r"""The map :math:`u' \mapsto u = m + L u'` with a lower-triangular :math:`L`, :math:`(*, D)`.

    Arguments:
        loc: The shift :math:`m`, broadcastable to :math:`(*, D)`.
        tril: The lower-triangular :math:`L`, :math:`(D, D)`, with a positive diagonal.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: Tensor | float, tril: Tensor) -> None:
        super().__init__()
        self.loc = loc
        self.tril = tril
        self.log_det = tril.diagonal().log().sum()

    def _call(self, z: Tensor) -> Tensor:
        return self.loc + z @ self.tril.T

    def _inverse(self, u: Tensor) -> Tensor:
        diff = torch.as_tensor(u - self.loc)
        return torch.linalg.solve_triangular(self.tril, diff.unsqueeze(-1), upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, z: Tensor, u: Tensor) -> Tensor:
        return self.log_det.expand(z.shape[:-1])


SUMMARIES = ("mlp", "set", "series")  # what summary= may name instead of a network
LONG_VECTOR = 20  # plain vectors of this many values or more race an MLP against a convolution by default


def _default_summary(x_shape: Size, structure: str | None = None, kind: str | None = None) -> nn.Module:
    r"""The summary network for observations of shape ``x_shape``: for sets and series the default
    network for that structure; where ``kind`` names one for plain observations (a vector
    :math:`(T,)` is then :math:`T` members or steps of one feature), a DeepSet for a set and a 1-D
    convolutional network for a series on a fixed grid; otherwise an MLP."""

    kind = kind or structure
    features = x_shape[-1] if structure or len(x_shape) > 1 else 1
    if kind == "set":
        return DeepSet(features)
    if kind == "series" and structure is None:
        # as accurate as the GRU on Ricker's counts in a fifth of the time (docs/design.md)
        return ConvSummary(features)
    if kind == "series":
        # 128 hidden units, not 64 (docs/design.md, "Long vectors and series given as plain tensors")
        return GRUSummary(features, hidden_features=128, pooling="last_and_mean")
    return MLP(list(x_shape), out_features=32, hidden_features=(128, 128))


def _summary_features(summary: nn.Module, x_shape: Size) -> int:
    return network_features(summary, x_shape, "summary", "observations")


class NPENetwork(nn.Module):
    r"""The trained part of NPE: standardization, a summary network and a conditional flow.

    ``forward(x)`` returns :math:`q(u | x)` over standardized unconstrained
    parameters :math:`u`, with batch shape :math:`(*)` for observations
    :math:`(*, *x\_shape)`. Observations are standardized per feature (their last
    axis), pooled over the other axes, so that members of a set stay exchangeable.

    Arguments:
        features: The number of parameters :math:`D`.
        x_shape: The shape of one observation.
        summary: The summary network :math:`(B, *x\_shape) \to (B, F)`; for sets and
            series it is called as ``summary(x, mask=mask)``.
        flow: The flow builder ``flow(features, context)``.
        structure: ``"set"``, ``"series"`` or None (see :class:`sbikit.Simulations`).
            Structured observations :math:`(*, M, L)` may have any number of members
            or steps :math:`M`; ``x_shape`` is then the shape trained on.
    """

    def __init__(
        self,
        features: int,
        x_shape: Sequence[int],
        summary: nn.Module,
        flow: Callable,
        structure: str | None = None,
    ) -> None:
        super().__init__()
        self.x_shape = Size(x_shape)
        self.structure = structure
        self.summary = summary
        context = _summary_features(summary, self.x_shape)
        self.flow = flow(features, context)
        self.register_buffer("theta_loc", torch.zeros(features))
        self.register_buffer("theta_scale", torch.ones(features))
        self.register_buffer("x_loc", torch.zeros(self.x_shape[-1:]))
        self.register_buffer("x_scale", torch.ones(self.x_shape[-1:]))
        self.x_range = TrainingRange(self.x_shape[-1])
        self.summary_range = SummaryRange(context)
        # u = B z + L u': the regression adjustment (B has no columns for structured x)
        self.register_buffer("theta_coef", torch.zeros(features, _num_regressors(self.x_shape)))
        self.register_buffer("theta_tril", torch.eye(features))
        # the box of u that q is truncated to (see NPE's bounds="truncate"); unbounded: not truncated
        self.register_buffer("box_low", torch.full((features,), -math.inf))
        self.register_buffer("box_high", torch.full((features,), math.inf))
        self.generator: torch.Generator | None = None  # the draws of the loss's truncation term

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Summarizes observations :math:`(*, *x\_shape) \to (*, F)`; for sets and series,
        ``mask`` :math:`(*, M)` says which members or steps are present (all, if None)."""

        return self._summarize((x - self.x_loc) / self.x_scale, mask)

    def _summarize(self, z: Tensor, mask: Tensor | None) -> Tensor:
        if self.structure is None:
            batch = z.shape[: z.ndim - len(self.x_shape)]
            return self.summary(z.reshape(-1, *self.x_shape)).reshape(*batch, -1)
        batch = z.shape[:-2]
        if mask is None:
            mask = torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)
        z = torch.where(mask.unsqueeze(-1), z, 0.0).reshape(-1, *z.shape[-2:])
        return self.summary(z, mask=mask.reshape(-1, z.shape[-2])).reshape(*batch, -1)

    def warn(self, x: Tensor, what: str = "x", stacklevel: int = 4) -> bool:
        r"""Warns with an :class:`sbikit.OutOfRangeWarning` where observations :math:`(*, *x\_shape)` lie
        beyond the training data: a feature beyond its range (:class:`TrainingRange`), or else their
        summaries far from the training summaries (:class:`SummaryRange`). Returns whether it warned."""

        if self.x_range.warn(x, what, stacklevel):
            return True
        if not bool(torch.isfinite(self.summary_range.radius)):  # sets, series, older files: no summary pass
            return False
        with torch.no_grad():
            return self.summary_range.warn(self.embed(x), what, stacklevel)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Distribution:
        z = (x - self.x_loc) / self.x_scale  # standardized once, for the summary and the adjustment
        q = self.flow(self._summarize(z, mask))
        shift = z @ self.theta_coef.T if self.theta_coef.shape[1] else 0.0
        return TransformedDistribution(q, [LowerAffineTransform(shift, self.theta_tril)], validate_args=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # files from format 2 predate the regression adjustment (no adjustment is B = 0, L = I), and
        # files before format 7 the truncation (no box)
        for name in ("theta_coef", "theta_tril", "box_low", "box_high"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def truncated(self) -> bool:
        r"""Whether :math:`q` is truncated to a box of :math:`u` (``box_low``, ``box_high``)."""

        return bool(torch.isfinite(self.box_low).any() or torch.isfinite(self.box_high).any())

    def loss(self, u: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Returns :math:`-\log q(u | x)`, :math:`(B,)`, for standardized :math:`u`.

        Truncated to a box, the density is :math:`q(u | x) / Z(x)` with :math:`Z(x)` the mass
        of :math:`q` inside the box. In evaluation mode the loss is then
        :math:`-\log q(u | x) + \log \hat Z(x)`, with :math:`\hat Z` from 64 draws per row
        (``VALIDATION_DRAWS``). In training mode it adds a term whose gradient is an estimate
        of :math:`\nabla \log Z(x) = \mathbb{E}_{q \text{ truncated}}[\nabla \log q(u' | x)]`
        from 4 draws :math:`u'_j` per row (``TRUNCATION_DRAWS``):
        :math:`\sum_j w_j \log q(u'_j | x)` with :math:`w_j = (1_j / \hat Z - 1) / 4`, where
        :math:`1_j` says whether :math:`u'_j` is inside and :math:`\hat Z` is their mean. The
        weights sum to 0, so a row whose draws all lie inside adds nothing. In a batch of more than
        128 rows only the first 32 draw (``TRUNCATION_ROWS``; a batch's rows are i.i.d., so they
        are a random subset), their terms weighted by the batch's size over 32, which keeps the
        estimate unbiased. The draws come from ``generator`` (a
        :class:`torch.Generator`, which :class:`sbikit.train.Training` sets), or from one
        seeded 0.
        """

        q = self(x, mask)
        nll = -q.log_prob(u)
        if not self.truncated:
            return nll
        generator = self.generator if self.generator is not None else torch.Generator().manual_seed(0)
        if not self.training:
            inside = inside_box(draw(q, (VALIDATION_DRAWS,), generator), self.box_low, self.box_high)
            return nll + inside.to(nll.dtype).mean(0).clamp_min(1 / VALIDATION_DRAWS).log()
        # a batch's rows are i.i.d. simulations (and shuffled): the first TRUNCATION_ROWS stand for all
        rows = len(nll) if len(nll) <= 4 * TRUNCATION_ROWS else TRUNCATION_ROWS  # small: one flow for all
        q_rows = q if rows == len(nll) else self(x[:rows], None if mask is None else mask[:rows])
        draws = draw(q_rows, (TRUNCATION_DRAWS,), generator).detach()
        inside = inside_box(draws, self.box_low, self.box_high).to(nll.dtype)
        if bool(inside.all()):
            return nll
        weights = inside / inside.mean(0).clamp_min(1 / TRUNCATION_DRAWS) - 1  # 0 where all are inside
        term = (weights * q_rows.log_prob(draws)).mean(0) * (len(nll) / rows)
        return nll + torch.cat([term, torch.zeros_like(nll[rows:])])

    def batch_loss(self, u: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor | float:
        r"""The summary network's term over the whole batch, ``summary.penalty(features)`` (for
        example :class:`sbikit.diagnostics.MMDSummary`'s), or 0 for a summary without one."""

        penalty = getattr(self.summary, "penalty", None)
        return 0.0 if penalty is None else penalty(self.embed(x, mask))


class NPEPosterior(AmortizedPosterior):
    r"""A posterior trained by :class:`NPE`.

    ``distribution(x)`` is the flow's :math:`q(u | x)` mapped into the prior's
    support; ``network`` holds the summary network, the flow and the
    standardization.

    Arguments:
        prior: The prior the network was trained under.
        network: The :class:`NPENetwork`.
        parameter_names: A name per parameter.
        specs: How to rebuild the components by name (see :mod:`sbikit.io`), and
            ``specs["intervals"]``, how bounded parameters were mapped to
            unconstrained space (see :func:`sbikit.priors.from_unconstrained`).
    """

    kind = "NPE"

    def __init__(self, prior: Distribution, network: NPENetwork, parameter_names: Sequence[str], specs: dict) -> None:
        self.prior = prior
        self.network = network
        self.x_range = network  # its warn() checks the range of x, then the summaries' distance
        self.x_shape = network.x_shape
        self.structure = network.structure
        self.transform = from_unconstrained(prior, specs["intervals"])
        self.parameter_names = list(parameter_names)
        self.specs = specs
        self.history: dict = {}

    def distribution(self, x: Tensor) -> Distribution:
        net = self.network
        q = net(x)
        if not net.truncated:
            return SupportMappedDistribution(q, net.theta_loc, net.theta_scale, self.transform, self.prior)
        rows = x.reshape(q.batch_shape.numel(), *x.shape[len(q.batch_shape):])
        return SupportMappedDistribution(q, net.theta_loc, net.theta_scale, self.transform, self.prior,
                                         box=(net.box_low, net.box_high), subset=lambda i: net(rows[i.to(x.device)]))

    def summarize(self, x: object) -> Tensor:
        r"""Returns what the flow learns from observations :math:`(*, *x\_shape) \to (*, F)`, on
        the CPU: the summary network's features, and the regression adjustment's linear
        prediction :math:`B z` when there is one (the diagnostics test misspecification there)."""

        x, _ = self._x(x)
        net = self.network
        with torch.no_grad():
            features = [net.embed(x)]
            if net.theta_coef.shape[1]:
                features.append(((x - net.x_loc) / net.x_scale) @ net.theta_coef.T)
        return torch.cat(features, -1).cpu()

    def unconstrain(self, theta: Tensor) -> Tensor:
        r"""Maps parameters :math:`(*, D)` to the flow's standardized space."""

        u = self.transform.inv(clamp_to_support(theta.cpu(), self.prior).double())
        loc, scale = self.network.theta_loc.cpu().double(), self.network.theta_scale.cpu().double()
        return ((u - loc) / scale).float()

    def config(self) -> dict:
        return {
            "x_shape": list(self.x_shape),
            "structure": self.structure,
            "parameter_names": self.parameter_names,
            **self.specs,
            "history": self.history,
        }

    @classmethod
    def from_config(
        cls,
        config: dict,
        prior: Distribution | None = None,
        summary: nn.Module | None = None,
        flow: Callable | None = None,
    ) -> "NPEPosterior":
        specs = {k: config[k] for k in ("prior", "summary", "flow", "training")}
        specs["prior_check"] = config.get("prior_check")
        specs["intervals"] = config.get("intervals", "sigmoid")  # format 2 mapped intervals by the logistic
        prior = io.rebuild_prior(prior, specs)
        summary = io.rebuild("summary", summary, specs["summary"])
        builder = flow if flow is not None else functools.partial(io.rebuild, "flow", None, specs["flow"])
        features = from_unconstrained(prior, specs["intervals"]).inverse_shape(prior.event_shape)[-1]
        network = NPENetwork(features, config["x_shape"], summary, builder, config.get("structure"))
        posterior = cls(prior, network, config["parameter_names"], specs)
        posterior.history = config.get("history", {})
        return posterior


class NPE:
    r"""Neural posterior estimation: learns :math:`p(\theta | x)` from simulations.

    Arguments:
        prior: The prior, a distribution over :math:`(D,)` with a support.
        summary: A summary network :math:`(B, *x\_shape) \to (B, F)`, trained
            jointly with the flow, or the name of a default one: ``"mlp"`` (an
            :class:`sbikit.nn.MLP`, the default for arrays and short vectors), ``"series"`` or
            ``"set"`` (the default for :class:`sbikit.Simulations` of that structure: a
            :class:`sbikit.nn.GRUSummary` or a :class:`sbikit.nn.DeepSet`). Named for plain
            observations, they read a vector :math:`(T,)` as :math:`T` steps or members of one
            feature, or an array :math:`(T, L)` as :math:`T` of :math:`L` features, pooled in
            the standardization; a series on such a fixed grid gets a
            :class:`sbikit.nn.ConvSummary`. For a vector of 20 values or more (``LONG_VECTOR``),
            None trains both ``"mlp"`` and ``"series"`` in full on the same split and keeps the
            one with the lower validation loss: a long vector is often a series, a spectrum or a
            histogram, whose order a convolution uses, and where its order means nothing the MLP
            wins. ``history["summary"]`` says which was kept, and ``history["summary_race"]``
            gives both losses; it costs both trainings.
        flow: A flow builder ``flow(features, context)``. Defaults to
            :func:`sbikit.flows.coupling_flow` (spline coupling).
        training: The training settings. Defaults to :class:`TrainConfig()`.
        parameter_names: A name per parameter, for ``to_arviz`` and plots.
        adjust: Whether the flow models the residual of a linear regression of the
            parameters on vector observations (see the module's description),
            rather than the standardized parameters themselves. ``"auto"`` (the
            default) races the two on the same split: both run the first tenth of
            their schedule (or until one stops early), and only the one with the
            lower validation loss so far trains on (``history["adjusted"]`` says which, and
            ``history["adjustment_pilot"]`` the losses it was chosen by). The race
            costs at most 1.1 trainings, in exchange for the adjustment's large gain where
            the posterior's location is close to linear in :math:`x`, without its
            loss where it is far from linear.
        bounds: How the flow respects parameters bounded on both sides (a box prior).
            ``"truncate"`` (the default) maps each interval affinely and truncates the flow to
            the box: the flow is trained by the truncated density's likelihood (see
            :meth:`NPENetwork.loss`), draws are taken by rejection, and ``log_prob`` is
            normalized by a Monte Carlo estimate of the mass inside. A posterior cut off by the
            box then needs no cliff in the flow. ``"map"`` maps each interval onto the line
            (:class:`sbikit.priors.LinearTailsTransform`, tails on 1% of it at each edge), with
            an exact density and one draw per sample, and trains faster where many posteriors
            reach a bound, but a posterior at a bound comes out too wide and miscalibrated there
            (``docs/design.md`` has both measured). Parameters bounded on one side (``exp``) or
            none are mapped either way.

    Example:
        >>> prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 200, seed=0)
        >>> posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=2)).fit(data)
        >>> posterior.sample(5, x=torch.zeros(2)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        prior: Distribution,
        *,
        summary: nn.Module | str | None = None,
        flow: Callable | None = None,
        training: TrainConfig | None = None,
        parameter_names: Sequence[str] | None = None,
        adjust: bool | str = "auto",
        bounds: str = "truncate",
    ) -> None:
        self.prior, names = check_estimator_options(prior, flow, training, parameter_names)
        if isinstance(summary, str) and summary not in SUMMARIES:
            raise ValueError(f"summary must be a torch.nn.Module or one of {SUMMARIES}, got {summary!r}.")
        if summary is not None and not isinstance(summary, (nn.Module, str)):
            raise TypeError(f"summary must be a torch.nn.Module or one of {SUMMARIES}, got {type(summary).__name__}.")
        self.summary = summary
        self.flow = flow if flow is not None else coupling_flow
        self.training = training if training is not None else TrainConfig()
        self.parameter_names = names
        if adjust not in (True, False, "auto"):
            raise ValueError(f"adjust must be True, False or 'auto', got {adjust!r}.")
        self.adjust = adjust
        if bounds not in BOUNDS:
            raise ValueError(f"bounds must be one of {BOUNDS}, got {bounds!r}.")
        self.intervals = "truncated" if bounds == "truncate" else NPE_INTERVALS

    def fit(self, data: Simulations) -> NPEPosterior:
        r"""Trains a posterior on ``data``; rows with non-finite values are excluded."""

        stream = streamed(data)  # a store larger than memory: trained on in chunks read from disk
        data = training_data(self.prior, data if stream is None else stream.sample())
        if self.summary == "mlp" and data.structure is not None:
            raise ValueError(f"summary='mlp' reads vectors of a fixed shape, not a {data.structure} of any size.")
        summaries = [self.summary]
        if self.summary is None and data.structure is None and len(data.x_shape) == 1 and data.x_shape[0] >= LONG_VECTOR:
            summaries = ["mlp", "series"]  # a long vector: both train in full, the lower validation loss is kept
        fitted = [self._fit_summary(data, summary, stream, len(summaries) > 1) for summary in summaries]
        posterior, run = min(fitted, key=lambda pair: pair[1].best)
        if len(fitted) > 1:
            posterior.history["summary"] = summaries[fitted.index((posterior, run))]
            posterior.history["summary_race"] = {s: r.best for s, (_, r) in zip(summaries, fitted)}
        if data.structure is None:  # not sets or series: a shorter one than any trained on is in scope,
            net = posterior.network  # yet its summary lies far from theirs
            with torch.no_grad():
                parts = [net.embed(x.to(net.x_loc.device)) for x in data.x.split(4096)]
            net.summary_range.fit(torch.cat(parts))
        return posterior

    def _fit_summary(self, data: Simulations, summary: nn.Module | str | None, stream, named: bool
                     ) -> tuple[NPEPosterior, Training]:
        r"""Trains a posterior with ``summary`` (racing the adjustment, where ``adjust="auto"``) and
        returns it with its finished run; ``named`` puts the summary's name in the runs' names."""

        choices = [self.adjust] if self.adjust != "auto" else [True, False]
        if _num_regressors(data.x_shape) == 0 or summary == "set":
            choices = [False]  # no regressors, or none that keep members exchangeable: nothing to adjust
        runs = {}
        for adjust in choices:
            labels = ([summary] if named else []) + ([] if len(choices) == 1 else [f"{'' if adjust else 'un'}adjusted"])
            name = f"training ({', '.join(labels)})" if labels else "training"
            runs[adjust] = self._start(data, adjust, name, stream, summary)
        chosen = choices[0]
        if len(runs) > 1:
            # a race on the same split: both run the first epochs of their schedule in step, until
            # one stops early or the pilot ends; only the one with the lower validation loss so far
            # trains on
            pilot = max(1, math.ceil(ADJUSTMENT_PILOT * runs[True][1].max_epochs))
            for epochs in range(1, pilot + 1):
                for _, run in runs.values():
                    run.advance(max(0, epochs - run.history["epochs"]))  # none for a run resumed past it
                if any(run.done for _, run in runs.values()):
                    break
            scores = {adjust: run.best for adjust, (_, run) in runs.items()}
            chosen = min(scores, key=scores.get)
            runs[not chosen][1].abandon("the other candidate's was lower")
        posterior, run = runs[chosen]
        run.advance()
        posterior.history = run.finish()
        posterior.history["adjusted"] = chosen
        if len(runs) > 1:
            posterior.history["adjustment_pilot"] = {
                "epochs": epochs, "adjusted": scores[True], "unadjusted": scores[False],
            }
        return posterior, run

    def _start(self, data: Simulations, adjust: bool, name: str, stream=None,
               summary: nn.Module | str | None = None) -> tuple[NPEPosterior, Training]:
        r"""Builds a posterior for ``data`` with ``summary`` and its training run, not yet advanced (on
        ``stream``, a :class:`sbikit.runs.stream.StoreStream`, if given; ``data`` is then a sample of it)."""

        config = self.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            structure = data.structure
            named = summary
            if isinstance(named, nn.Module):
                summary = copy.deepcopy(named)
            else:
                summary = _default_summary(data.x_shape, structure, named)
            features = from_unconstrained(self.prior, self.intervals).inverse_shape(self.prior.event_shape)[-1]
            network = NPENetwork(features, data.x_shape, summary, self.flow, structure)
            specs = {
                "prior": io.prior_spec(self.prior),
                "prior_check": prior_fingerprint(self.prior),
                "summary": io.module_spec(summary),
                "flow": io.builder_spec(self.flow),
                "training": config.to_dict(),
                "intervals": self.intervals,
            }
            posterior = NPEPosterior(self.prior, network, self.parameter_names, specs)
            keep = fitted_rows(len(data), config, stream is not None)
            fitted = data[keep]
            fitted_u = posterior.transform.inv(clamp_to_support(fitted.theta, self.prior).double())
            x_values = fitted.x if structure is None else fitted.x[fitted.mask]
            if structure is None and named in ("set", "series"):  # one standardization for all steps
                x_values = x_values.reshape(-1, data.x_shape[-1] if len(data.x_shape) > 1 else 1)
            for (loc, scale), values in (
                ((network.theta_loc, network.theta_scale), fitted_u),
                ((network.x_loc, network.x_scale), x_values),
            ):
                mean, std = standardize(values)
                loc.copy_(mean)
                scale.copy_(std)
            network.x_range.fit(data.x, data.mask)
            bounds = support_bounds(self.prior)
            if self.intervals == "truncated" and bounds is not None:  # the interval's image is [-1/2, 1/2]
                interval = torch.isfinite(bounds[0]) & torch.isfinite(bounds[1])
                for box, side in ((network.box_low, -0.5), (network.box_high, 0.5)):
                    box.copy_(torch.where(interval, (side - network.theta_loc) / network.theta_scale, box))
            u = posterior.unconstrain(data.theta)
            if not bool(torch.isfinite(u).all()):
                raise ValueError("some theta lie on the boundary of the prior's support, where they cannot be mapped.")
            if adjust:
                z = ((fitted.x - network.x_loc) / network.x_scale).reshape(len(fitted), -1)
                coef, tril = linear_adjustment(u[keep], z[:, : network.theta_coef.shape[1]])
                network.theta_coef.copy_(coef)
                network.theta_tril.copy_(tril)
            tensors = (u, data.x) if structure is None else (u, data.x, data.mask)
            if stream is not None:
                tensors = copy.copy(stream)
                tensors.transform = lambda theta, *rest: (posterior.unconstrain(theta), *rest)  # x, and a mask
            kind = "vectors" if structure is None and named not in ("set", "series") else "structured"
            return posterior, Training(network, tensors, config, name, kind)
