r"""What every estimator does before training: check the options and the data, standardize."""

__all__ = [
    "MIN_SIMULATIONS", "NLE_INTERVALS", "NPE_INTERVALS", "SMALL_DATA", "SUMMARY_MARGIN", "SummaryRange",
    "TrainingRange", "check_estimator_options", "fitted_rows", "in_memory", "linear_adjustment", "network_features", "standardize", "training_data",
]

import math
import torch
import torch.nn as nn
import warnings

from collections.abc import Callable, Sequence
from torch import Size, Tensor
from torch.distributions import Distribution

from ..data import Simulations
from ..errors import OutOfRangeWarning, SmallDataWarning
from ..priors import check_prior, in_support
from ..train import TrainConfig, held_out

_MIN_SCALE = 1e-8
# How estimators map bounded parameters (priors.from_unconstrained); files record it. NPE's flow sees
# the inner 98% of an interval as it is, and the outer 1% at each edge through exponential tails; NLE
# keeps 5%, since its MCMC runs in this space, where narrower tails make steeper walls at the edges
# (docs/design.md, "Tails of the map of an interval")
NPE_INTERVALS = "linear-0.01"
NLE_INTERVALS = "linear"
MIN_SIMULATIONS = 20  # fewer valid simulations are refused
SMALL_DATA = 200  # fewer get a SmallDataWarning: the defaults were chosen at 1,000 and more (docs/design.md)
MAX_TAIL_SHAPE = 1.0  # the heaviest tail TrainingRange fits: a generalized Pareto shape of 1, no mean
OUT_OF_RANGE = 0.01  # the chance, under the training data's tails, below which a batch beyond the range is flagged
SUMMARY_MARGIN = 1.5  # how far, as a multiple of the farthest training summary's distance, a summary is flagged


def check_estimator_options(
    prior: object, flow: object, training: object, parameter_names: Sequence[str] | None
) -> tuple[Distribution, list[str]]:
    r"""Checks the options every estimator takes; returns the prior and a name per parameter
    (``theta_0``, ... when ``parameter_names`` is None).

    Raises:
        TypeError: If ``flow`` is not callable or ``training`` is not a :class:`TrainConfig`.
        ValueError: If the names are not :math:`D` distinct strings.
    """

    prior = check_prior(prior)
    dim = prior.event_shape[0]
    if flow is not None and not callable(flow):
        raise TypeError(f"flow must be a builder flow(features, context), got {type(flow).__name__}.")
    if training is not None and not isinstance(training, TrainConfig):
        raise TypeError(f"training must be a sbikit.TrainConfig, got {type(training).__name__}.")
    names = list(parameter_names) if parameter_names is not None else [f"theta_{i}" for i in range(dim)]
    if len(names) != dim or len(set(names)) != dim or not all(isinstance(n, str) for n in names):
        raise ValueError(f"parameter_names must be {dim} distinct strings, got {names!r}.")
    return prior, names


def network_features(network: nn.Module, input_shape: Size, name: str, inputs: str = "inputs") -> int:
    r"""Returns the width :math:`F` of a network that maps :math:`(B, *input\_shape)` to
    :math:`(B, F)`, found by a probe; raises a ValueError naming ``name`` and what its
    ``inputs`` are otherwise."""

    with torch.no_grad():
        out = network(torch.zeros(2, *input_shape))
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{name} must map {inputs} (B, {', '.join(map(str, input_shape))}) to features (B, F); "
            f"for B = 2 it returned {shape}."
        )
    return out.shape[1]


def fitted_rows(num_rows: int, config: TrainConfig, streamed: bool) -> Tensor | slice:
    r"""The rows that statistics fitted before training (standardization, the regression
    adjustment) use: in memory, those that training does not hold out for validation
    (:func:`sbikit.train.held_out`); for a streamed store, all of the stream's sample."""

    return slice(None) if streamed else ~held_out(num_rows, config)


def in_memory(data: object) -> object:
    r"""A store's simulations (:func:`sbikit.open_store`) read into memory; anything else as it is."""

    if not isinstance(data, Simulations) and callable(getattr(data, "simulations", None)):
        return data.simulations()
    return data


def training_data(prior: Distribution, data: object) -> Simulations:
    r"""Checks simulations against the prior and returns the rows that can be trained on.

    Raises:
        TypeError: If ``data`` is not :class:`sbikit.Simulations`.
        ValueError: If the parameters have the wrong dimension or lie outside the
            prior's support, or fewer than ``MIN_SIMULATIONS`` (20) simulations are valid.

    Warns:
        SmallDataWarning: If fewer than ``SMALL_DATA`` (200) simulations are valid.
    """

    data = in_memory(data)
    if not isinstance(data, Simulations):
        raise TypeError(
            f"data must be sbikit.Simulations or a store (sbikit.open_store), got {type(data).__name__}; wrap tensors as "
            "sbikit.Simulations(theta=theta, x=x)."
        )
    dim = prior.event_shape[0]
    if data.theta.shape[1] != dim:
        raise ValueError(
            f"data.theta has shape {tuple(data.theta.shape)} but the prior has {dim} dimensions; "
            f"pass theta of shape (N, {dim})."
        )
    valid = len(data) - data.num_invalid
    if valid < MIN_SIMULATIONS:
        raise ValueError(
            f"need at least {MIN_SIMULATIONS} valid simulations to train, got {valid} of {len(data)}"
            + (f" ({data.num_invalid} have NaN or inf values; see data.failures)" if data.num_invalid else "")
            + "; simulate more."
        )
    if data.num_invalid:
        warnings.warn(
            f"excluding {data.num_invalid} of {len(data)} simulations with NaN or inf values from training.",
            RuntimeWarning,
            stacklevel=3,
        )
        data = data.dropna()
    outside = ~in_support(prior, data.theta)
    if outside.any():
        row = int(outside.nonzero()[0])
        raise ValueError(
            f"{int(outside.sum())} rows of theta lie outside the prior's support (row {row}: "
            f"{data.theta[row].tolist()}); train on parameters drawn from this prior."
        )
    if valid < SMALL_DATA:
        warnings.warn(
            f"training on {valid} valid simulations; below {SMALL_DATA} a neural estimator is rarely calibrated. "
            "Simulate more, and check the result with sbikit.diagnostics.check.",
            SmallDataWarning,
            stacklevel=3,
        )
    return data


def standardize(values: Tensor, feature_dims: int = 1) -> tuple[Tensor, Tensor]:
    r"""Returns the mean and standard deviation of each feature, over all other axes.

    The features are the last ``feature_dims`` axes of ``values`` :math:`(N, *)`;
    for sets :math:`(N, M, L)` and sequences :math:`(N, T, L)` with
    ``feature_dims=1``, the statistics are per feature :math:`L`, pooled over
    members or times, so that a permutation of the members changes nothing.
    Constant features get a scale of 1.

    Example:
        >>> loc, scale = standardize(torch.tensor([[[0.0], [2.0]], [[4.0], [6.0]]]))
        >>> loc.tolist(), round(scale.item(), 3)
        ([3.0], 2.582)
    """

    flat = values.double().reshape(-1, *values.shape[values.ndim - feature_dims :])
    loc = flat.mean(0)
    scale = flat.std(0) if len(flat) > 1 else torch.ones_like(loc)
    scale = torch.where(scale > _MIN_SCALE, scale, torch.ones_like(scale))
    return loc.float(), scale.float()


def linear_adjustment(u: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    r"""Regresses centered targets on centered regressors; returns the coefficients and
    the Cholesky factor of the residual covariance.

    A ridge regression :math:`u \approx B z` whose penalty is chosen by generalized
    cross-validation over a grid (so that many or collinear regressors do not
    overfit), then :math:`L L^\top = \mathrm{Cov}(u - B z)`. With no regressors,
    :math:`B` has no columns and :math:`L L^\top = \mathrm{Cov}(u)`.

    Arguments:
        u: The targets :math:`(N, D)`, with mean zero.
        z: The regressors :math:`(N, P)`, with mean zero.

    Returns:
        :math:`B`, :math:`(D, P)`, and :math:`L`, :math:`(D, D)`, in float32.

    Example:
        >>> z = torch.randn(1000, 1)
        >>> u = torch.cat([z, 0.5 * torch.randn(1000, 1)], dim=1)
        >>> coef, tril = linear_adjustment(u - u.mean(0), z - z.mean(0))
        >>> coef.shape, tril.shape
        (torch.Size([2, 1]), torch.Size([2, 2]))
    """

    u, z = u.double(), z.double()
    n, dim = u.shape
    coef = torch.zeros(dim, z.shape[1], dtype=torch.float64)
    dof = float(n - 1)
    if z.shape[1] and n > 2:
        left, singular, right = torch.linalg.svd(z, full_matrices=False)
        projected = left.T @ u
        best = math.inf
        for ratio in torch.logspace(-6, 2, 17, dtype=torch.float64):
            shrink = singular**2 / (singular**2 + ratio * n)
            df = float(shrink.sum())
            if df >= n - 1:
                continue
            rss = float(((u - left @ (shrink[:, None] * projected)) ** 2).sum())
            gcv = rss / (1.0 - df / n) ** 2
            if gcv < best:
                best, dof = gcv, n - df
                coef = (right.T @ ((singular / (singular**2 + ratio * n))[:, None] * projected)).T
    residual = u - z @ coef.T
    cov = residual.T @ residual / max(dof, 1.0)
    cov = cov + 1e-6 * cov.diagonal().mean().clamp_min(_MIN_SCALE) * torch.eye(dim, dtype=cov.dtype)
    tril, info = torch.linalg.cholesky_ex(cov)
    if info:  # not positive definite in float64: keep the variances only
        tril = cov.diagonal().sqrt().diag()
    return coef.float(), tril.float()


class TrainingRange(nn.Module):
    r"""The range of the observations an estimator was trained on, to flag those beyond it.

    It keeps, per feature (the last axis, pooled over members or time steps as
    :func:`standardize` does), the smallest and largest training value, the standard deviation,
    and a generalized Pareto fit to each tail: above the :math:`k`-th most extreme of :math:`N`
    values (:math:`k = \lceil N^{2/3}\rceil`, at least 5), a new value exceeds the threshold by
    more than :math:`u` with probability :math:`(k/N)(1 + \xi u/\sigma)^{-1/\xi}`, fitted by
    probability-weighted moments, with the shape :math:`\xi` in :math:`[0, 1]` and at least the
    median of that side's shapes over the features (one feature's fit is noisy, and heavy tails
    come in families). A batch of :math:`m` rows is flagged where a row lies beyond the
    range so far that under the training distribution a value as extreme, in any of the
    :math:`2L` tails, would turn up in a batch of :math:`m` with probability below
    ``OUT_OF_RANGE`` (1%). So a diagnostic's 500 test simulations from the model are rarely
    flagged, while one observation just beyond every one of 10,000 simulations is. (A group with
    more members, or a series with more steps, than any training row is flagged by
    :func:`sbikit._checks.check_x`.) Its buffers travel in the estimator's ``state_dict``; a file
    saved without them loads with an unbounded range, which flags nothing, and one saved without
    the tails (format 7 and below) with exponential tails of a tenth of an sd from the range's
    ends, about the half-sd margin those files were flagged at.
    ``python benchmarks/out_of_range.py`` measures the false alarms (docs/design.md).

    Arguments:
        features: The number of features :math:`L` (the last axis of an observation).

    Example:
        >>> r = TrainingRange(1)
        >>> r.fit(torch.randn(10_000, 1, generator=torch.Generator().manual_seed(0)))
        >>> [f"{float(c):.0e}" for c in r.chance(torch.tensor([[0.0], [4.5], [9.0]]))]  # inside, beyond, far
        ['1e+00', '2e-04', '6e-09']
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("low", torch.full((features,), -math.inf))
        self.register_buffer("high", torch.full((features,), math.inf))
        self.register_buffer("scale", torch.ones(features))
        self.register_buffer("threshold", torch.stack([self.low, self.high]))  # (2, L): the k-th lowest, highest
        self.register_buffer("tail", torch.ones(2, features))  # (2, L): each tail's scale sigma
        self.register_buffer("shape", torch.zeros(2, features))  # (2, L): each tail's shape xi
        self.register_buffer("share", torch.tensor(1.0))  # k / N

    def fit(self, x: Tensor, mask: Tensor | None = None) -> None:
        r"""Records the range of training observations :math:`(N, *x\_shape)` (with ``mask``
        :math:`(N, M)` for sets and series)."""

        values = (x if mask is None else x[mask]).reshape(-1, self.low.shape[0]).to(self.low)
        n = len(values)
        k = min(max(5, math.ceil(n ** (2 / 3))), n - 1)
        self.low.copy_(values.min(0).values)
        self.high.copy_(values.max(0).values)
        self.scale.copy_(standardize(values)[1])
        top = values.topk(k + 1, dim=0).values  # (k + 1, L), descending
        bottom = -(-values).topk(k + 1, dim=0).values  # ascending
        self.threshold.copy_(torch.stack([bottom[k], top[k]]))
        excess = torch.stack([bottom[k] - bottom[:k], top[:k] - top[k]]).flip(1).double()  # (2, k, L), ascending
        # the generalized Pareto fit of Hosking & Wallis (1987), by probability-weighted moments
        a0 = excess.mean(1)
        weights = 1 - (torch.arange(1, k + 1, dtype=excess.dtype) - 0.35) / k
        a1 = (weights[:, None] * excess).mean(1)
        denominator = (a0 - 2 * a1).clamp_min(1e-12 * a0.clamp_min(1e-30))
        own = (2 - a0 / denominator).clamp(0.0, MAX_TAIL_SHAPE)
        scale = (2 * a0 * a1 / denominator).where(own > 0, a0)  # shape 0: the exponential, scale the mean excess
        shape = torch.maximum(own, own.median(1, keepdim=True).values)  # a tail at least as heavy as most
        floor = 1e-6 * self.scale.clamp_min(_MIN_SCALE)
        self.tail.copy_(scale.float().clamp_min(floor))
        self.shape.copy_(shape.float())
        self.share.fill_(k / n)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, fill in (("low", -math.inf), ("high", math.inf), ("scale", 1.0)):  # files from before the range
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), fill))
        low, high, scale = (state_dict[prefix + name] for name in ("low", "high", "scale"))
        state_dict.setdefault(prefix + "threshold", torch.stack([low, high]))  # format 7 and below: no tails
        state_dict.setdefault(prefix + "tail", torch.stack([scale, scale]) / 10)
        state_dict.setdefault(prefix + "shape", torch.zeros_like(self.shape))
        state_dict.setdefault(prefix + "share", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def chance(self, x: Tensor) -> Tensor:
        r"""For each row of observations :math:`(*, L)`, :math:`(*)`: the probability, under the
        training distribution's fitted tails, that a new row has a value as far beyond the range
        in some feature (1 for a row inside the range)."""

        values = x.to(self.low)
        excess = torch.stack([self.threshold[0] - values, values - self.threshold[1]])  # (2, *, L)
        beyond = torch.maximum(self.low - values, values - self.high) > 0
        scale, shape = (torch.stack([t[i].expand_as(values) for i in range(2)]) for t in (self.tail, self.shape))
        reduced = excess.clamp_min(0) / scale
        tail = torch.where(shape > 0, torch.log1p(shape * reduced) / shape.clamp_min(1e-12), reduced)
        chance = self.share * torch.exp(-tail)
        chance = torch.where(beyond, chance.min(0).values, torch.ones_like(values))
        return (2 * values.shape[-1] * chance.amin(-1)).clamp_max(1.0)

    def warn(self, x: Tensor, what: str = "x", stacklevel: int = 3) -> bool:
        r"""Warns with an :class:`sbikit.OutOfRangeWarning` if, among observations :math:`(*, L)`, a
        row lies beyond the training range by more than chance allows in a batch of their size
        (see the class), naming the feature and how far; returns whether it warned."""

        values = x.reshape(-1, self.low.shape[0]).to(self.low)
        if not values.numel():
            return False
        chance = self.chance(values)
        flagged = chance * len(values) < OUT_OF_RANGE
        if not bool(flagged.any()):
            return False
        row = int(chance.argmin())
        beyond = torch.maximum(self.low - values[row], values[row] - self.high) / self.scale
        column = int(beyond.argmax())
        warnings.warn(
            f"{what} has feature {column} = {float(values[row, column]):.4g}, {float(beyond[column]):.2g} "
            f"training sds beyond the range the estimator was trained on ([{float(self.low[column]):.4g}, "
            f"{float(self.high[column]):.4g}]; {int(flagged.sum())} of {len(values)} rows are beyond it by "
            "more than chance allows): its answer there is an extrapolation. Check the observation, or "
            "simulate from a wider prior.",
            OutOfRangeWarning,
            stacklevel=stacklevel,
        )
        return True


class SummaryRange(nn.Module):
    r"""How far observations lie from the training data in the space of a summary network's
    features, to flag those that are inside every feature's range yet unlike any simulation.

    It keeps the mean and the whitening of the training summaries :math:`(N, F)` (the inverse
    square root of their covariance, its eigenvalues floored at :math:`10^{-4}` of the largest),
    and the largest of the training rows' Mahalanobis distances to the mean (the radius). A file
    saved without its buffers loads with an infinite radius, which flags nothing.

    Arguments:
        features: The number of summary features :math:`F`.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("whiten", torch.eye(features))
        self.register_buffer("radius", torch.tensor(math.inf))

    def distance(self, s: Tensor) -> Tensor:
        r"""The Mahalanobis distances of summaries :math:`(*, F)` to the training mean, :math:`(*)`."""

        return ((s.to(self.loc) - self.loc) @ self.whiten).norm(dim=-1)

    def fit(self, s: Tensor) -> None:
        r"""Records the training summaries :math:`(N, F)`."""

        s = s.to(self.loc).double()
        values, vectors = torch.linalg.eigh(torch.atleast_2d(torch.cov(s.T)))
        values = values.clamp_min(1e-4 * float(values.max().clamp_min(1e-30)))
        self.loc.copy_(s.mean(0))
        self.whiten.copy_(vectors / values.sqrt())
        distances = self.distance(s.float())
        self.radius.copy_(distances.max())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("loc", "whiten"):  # files from before it
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        state_dict.setdefault(prefix + "radius", torch.tensor(math.inf))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def warn(self, s: Tensor, what: str = "x", stacklevel: int = 3) -> bool:
        r"""Warns with an :class:`sbikit.OutOfRangeWarning` if a summary :math:`(*, F)` lies farther than
        ``SUMMARY_MARGIN`` times the farthest training row; returns whether it warned."""

        distances = self.distance(s).reshape(-1)
        limit = float(SUMMARY_MARGIN * self.radius)
        if distances.numel() and float(distances.max()) > limit:
            warnings.warn(
                f"{what} lies at a Mahalanobis distance of {float(distances.max()):.3g} from the training data "
                f"in the space of the summaries the estimator learned, where the farthest training simulation "
                f"lies at {float(self.radius):.3g} ({int((distances > limit).sum())} of {len(distances)} rows "
                "are beyond it): its values are each within the training range, but together unlike any "
                "simulation, and the answer there is an extrapolation. Check the observation and the model.",
                OutOfRangeWarning,
                stacklevel=stacklevel,
            )
            return True
        return False
