r"""Priors, and the map between a prior's support and unconstrained space.

Any :class:`torch.distributions.Distribution` with a ``support`` and event shape
:math:`(D,)` can serve as a prior. Estimators learn in the unconstrained space
:math:`u = T^{-1}(\theta)`, where :math:`T` maps :math:`\mathbb{R}^D` onto the
support (:func:`from_unconstrained`), so that every sample mapped back through
:math:`T` lies in the support and densities carry the Jacobian :math:`|\det J_T|`.
"""

__all__ = [
    "BoxUniform",
    "ProductPrior",
    "LinearTailsTransform",
    "SupportOnly",
    "check_prior",
    "check_same_prior",
    "clamp_to_support",
    "from_unconstrained",
    "in_support",
    "prior_fingerprint",
    "support_bounds",
]

import math
import torch

from torch import Tensor
from torch.distributions import (
    AffineTransform,
    ComposeTransform,
    Distribution,
    Independent,
    Transform,
    Uniform,
    biject_to,
    constraints,
)
from torch.distributions.transforms import CatTransform, IndependentTransform

# How intervals are mapped: "sigmoid" (files of format <= 2), "linear" (LinearTailsTransform with tails
# on 5% of the interval at each edge, files of format 3), "linear-<eps>" (tails on that share), or
# "truncated" (affinely onto [-1/2, 1/2], not onto the line: a density there must be truncated to it).
SUPPORT_MAPS = ("linear", "sigmoid", "linear-<eps>", "truncated")
_LINEAR_EPS = 0.05  # the tails of "linear"


def _tails(intervals: object) -> float | str | None:
    r"""The share of the interval in each tail for a ``"linear"`` or ``"linear-<eps>"`` map; None for
    ``"sigmoid"``; ``"truncated"`` for that map.

    Raises:
        ValueError: If ``intervals`` names no map.
    """

    if intervals in ("sigmoid", "truncated"):
        return None if intervals == "sigmoid" else intervals
    if intervals == "linear":
        return _LINEAR_EPS
    if isinstance(intervals, str) and intervals.startswith("linear-"):
        try:
            eps = float(intervals[len("linear-"):])
        except ValueError:
            eps = math.nan
        if 0 < eps < 0.5:
            return eps
    raise ValueError(f"intervals must be one of {SUPPORT_MAPS} with 0 < eps < 0.5, got {intervals!r}.")


class BoxUniform(Independent):
    r"""Uniform prior over the box :math:`[low, high]`.

    Arguments:
        low: The lower bounds, with shape :math:`(D,)`.
        high: The upper bounds, with shape :math:`(D,)`.

    Example:
        >>> prior = BoxUniform(low=-torch.ones(2), high=torch.ones(2))
        >>> prior.sample((4,)).shape
        torch.Size([4, 2])
    """

    def __init__(self, low: Tensor, high: Tensor) -> None:
        low = torch.as_tensor(low, dtype=torch.get_default_dtype())
        high = torch.as_tensor(high, dtype=torch.get_default_dtype())
        if low.ndim != 1 or low.shape != high.shape:
            raise ValueError(
                f"BoxUniform needs 1-D 'low' and 'high' of the same shape (D,), "
                f"got {tuple(low.shape)} and {tuple(high.shape)}."
            )
        if not bool((low < high).all()):
            raise ValueError("BoxUniform needs low < high in every dimension.")
        super().__init__(Uniform(low, high), 1)

    @property
    def low(self) -> Tensor:
        return self.base_dist.low

    @property
    def high(self) -> Tensor:
        return self.base_dist.high

    def __repr__(self) -> str:
        return f"BoxUniform(low={self.low.tolist()}, high={self.high.tolist()})"


class ProductPrior(Distribution):
    r"""Independent product of 1-D priors, each with its own support.

    Arguments:
        marginals: Distributions with scalar event shape and batch shape :math:`()`
            or :math:`(k,)`; their values are concatenated in order.

    Example:
        >>> from torch.distributions import LogNormal, Normal, Uniform
        >>> prior = ProductPrior([LogNormal(0.0, 1.0), Uniform(0.0, 1.0), Normal(0.0, 2.0)])
        >>> theta = prior.sample((5,))
        >>> theta.shape, prior.log_prob(theta).shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, marginals: list[Distribution]) -> None:
        marginals = list(marginals)
        if not marginals:
            raise ValueError("ProductPrior needs at least one marginal distribution.")
        lengths = []
        for i, m in enumerate(marginals):
            if not isinstance(m, Distribution):
                raise TypeError(f"marginals[{i}] must be a torch Distribution, got {type(m).__name__}.")
            if m.event_shape != torch.Size() or len(m.batch_shape) > 1:
                raise ValueError(
                    f"marginals[{i}] must be 1-D: event shape () and batch shape () or (k,), "
                    f"got event shape {tuple(m.event_shape)} and batch shape {tuple(m.batch_shape)}."
                )
            check_prior(m, name=f"marginals[{i}]", scalar=True)
            lengths.append(m.batch_shape[0] if m.batch_shape else 1)
        self.marginals = marginals
        self.lengths = lengths
        support = constraints.cat([m.support for m in marginals], dim=-1, lengths=lengths)
        self._support = constraints.independent(support, 1)
        super().__init__(event_shape=torch.Size([sum(lengths)]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return self._support

    def _split(self, value: Tensor) -> list[Tensor]:
        parts = value.split(self.lengths, dim=-1)
        return [p if m.batch_shape else p.squeeze(-1) for p, m in zip(parts, self.marginals)]

    def _join(self, parts: list[Tensor]) -> Tensor:
        return torch.cat(
            [p if m.batch_shape else p.unsqueeze(-1) for p, m in zip(parts, self.marginals)], dim=-1
        )

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self._join([m.sample(sample_shape) for m in self.marginals])

    def log_prob(self, value: Tensor) -> Tensor:
        terms = [m.log_prob(p) for m, p in zip(self.marginals, self._split(value))]
        return sum(t if m.batch_shape == () else t.sum(-1) for t, m in zip(terms, self.marginals))

    @property
    def mean(self) -> Tensor:
        return self._join([m.mean for m in self.marginals])

    @property
    def variance(self) -> Tensor:
        return self._join([m.variance for m in self.marginals])

    def __repr__(self) -> str:
        return f"ProductPrior({self.marginals})"


class SupportOnly(Distribution):
    r"""Parameters known only by their support and dimension, with no fixed prior.

    The local parameters of a mixed-effects model have a prior that depends on the
    global ones, :math:`p(Y_L | Y_G)`; an estimator of :math:`p(Y_L | Y_G, x)` needs
    only their support, to map it to unconstrained space. ``log_prob`` is 0 inside
    the support and :math:`-\infty` outside (an improper flat density, used for
    support checks only); there is nothing to sample.

    Arguments:
        support: The support, a torch constraint (element-wise, or of vectors).
        dim: The number of parameters :math:`K`.

    Example:
        >>> locals_ = SupportOnly(constraints.positive, 2)
        >>> locals_.log_prob(torch.tensor([[1.0, 2.0], [-1.0, 2.0]]))
        tensor([0., -inf])
    """

    arg_constraints = {}

    def __init__(self, support: constraints.Constraint, dim: int) -> None:
        if not isinstance(support, constraints.Constraint):
            raise TypeError(f"support must be a torch constraint, got {type(support).__name__}.")
        self._support = support
        super().__init__(torch.Size(), torch.Size([int(dim)]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return self._support

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        raise NotImplementedError(
            "SupportOnly describes parameters without a fixed prior; there is nothing to sample."
        )

    def log_prob(self, value: Tensor) -> Tensor:
        return torch.where(in_support(self, value), 0.0, -torch.inf)

    def __repr__(self) -> str:
        return f"SupportOnly({self._support}, dim={self.event_shape[0]})"


def check_prior(prior: object, name: str = "prior", scalar: bool = False) -> Distribution:
    r"""Checks that ``prior`` is a distribution over vectors with a known support.

    Raises:
        TypeError: If ``prior`` is not a :class:`torch.distributions.Distribution`.
        ValueError: If it has no ``support``, or its event shape is not :math:`(D,)`.
    """

    if not isinstance(prior, Distribution):
        raise TypeError(f"{name} must be a torch.distributions.Distribution, got {type(prior).__name__}.")
    try:
        support = prior.support
    except NotImplementedError:
        support = None
    if not isinstance(support, constraints.Constraint):
        raise ValueError(
            f"{name} ({type(prior).__name__}) has no 'support'; sbikit maps the support to "
            "unconstrained space, so define a 'support' property returning a torch constraint."
        )
    if not scalar:
        if len(prior.event_shape) != 1 or prior.batch_shape != torch.Size():
            raise ValueError(
                f"{name} must have event shape (D,) and batch shape (), got event shape "
                f"{tuple(prior.event_shape)} and batch shape {tuple(prior.batch_shape)}; "
                "wrap scalar distributions in BoxUniform, ProductPrior or torch Independent."
            )
    try:
        biject_to(support)
    except NotImplementedError:
        raise ValueError(f"{name} has support {support}, which has no map to unconstrained space.") from None
    return prior


class LinearTailsTransform(Transform):
    r"""A bijection from :math:`\mathbb{R}` onto :math:`(0, 1)` that is the identity shifted by
    :math:`\frac12` on all but the edges, with exponential tails:

    .. math::
        s = \begin{cases}
            \varepsilon\, e^{(u + c) / \varepsilon} & u < -c, \\
            \tfrac12 + u & |u| \le c, \\
            1 - \varepsilon\, e^{-(u - c) / \varepsilon} & u > c,
        \end{cases} \qquad c = \tfrac12 - \varepsilon.

    Value and slope are continuous at :math:`\pm c`, and the inverse and the Jacobian
    are closed-form. Unlike the logistic map, which stretches a posterior more the
    further it lies from the interval's centre, this map leaves the inner
    :math:`1 - 2\varepsilon` of the interval as it is, so a Gaussian posterior there
    stays Gaussian with the same width whatever its location. (With the logistic
    map, NPE on :math:`x = \theta + 0.1\,\varepsilon` under a uniform prior on
    :math:`[-2, 2]^3` learned posterior sds up to 20% too wide.)

    Arguments:
        eps: The share :math:`\varepsilon` of the interval at each edge mapped by a tail.
    """

    domain = constraints.real
    codomain = constraints.unit_interval
    bijective = True
    sign = +1

    def __init__(self, eps: float = 0.05, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps!r}.")
        self.eps = eps
        self.edge = 0.5 - eps

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinearTailsTransform) and other.eps == self.eps

    def __hash__(self) -> int:
        return hash((LinearTailsTransform, self.eps))

    def _call(self, u: Tensor) -> Tensor:
        eps, edge = self.eps, self.edge
        upper = 1 - eps * torch.exp(-(u - edge).clamp_min(0) / eps)
        lower = eps * torch.exp((u + edge).clamp_max(0) / eps)
        return torch.where(u > edge, upper, torch.where(u < -edge, lower, 0.5 + u))

    def _inverse(self, s: Tensor) -> Tensor:
        eps, edge = self.eps, self.edge
        upper = edge - eps * torch.log((1 - s).clamp_max(eps) / eps)
        lower = -edge + eps * torch.log(s.clamp_max(eps) / eps)
        return torch.where(s > 1 - eps, upper, torch.where(s < eps, lower, s - 0.5))

    def log_abs_det_jacobian(self, u: Tensor, s: Tensor) -> Tensor:
        eps, edge = self.eps, self.edge
        return torch.where(u > edge, -(u - edge) / eps, torch.where(u < -edge, (u + edge) / eps, torch.zeros_like(u)))


def _to_support(support: constraints.Constraint, intervals: str) -> Transform:
    eps = _tails(intervals)
    if eps is None:
        return biject_to(support)
    if isinstance(support, constraints.independent):
        base = _to_support(support.base_constraint, intervals)
        return IndependentTransform(base, support.reinterpreted_batch_ndims)
    if isinstance(support, constraints.cat):
        parts = [_to_support(c, intervals) for c in support.cseq]
        return CatTransform(parts, support.dim, support.lengths)
    interval = (type(constraints.interval(0.0, 1.0)), type(constraints.half_open_interval(0.0, 1.0)))
    if isinstance(support, interval):
        low, high = support.lower_bound, support.upper_bound
        if eps == "truncated":
            return AffineTransform(low + 0.5 * (high - low), high - low)
        return ComposeTransform([LinearTailsTransform(eps), AffineTransform(low, high - low)])
    return biject_to(support)


def from_unconstrained(prior: Distribution, intervals: str = "linear") -> Transform:
    r"""Returns the bijection :math:`T` from unconstrained vectors onto the prior's support.

    ``T(u)`` maps unconstrained :math:`u \in \mathbb{R}^D` into the support and
    ``T.inv(theta)`` maps parameters out of it: bounded intervals by
    :class:`LinearTailsTransform`, with tails on the share ``eps`` of the interval at
    each edge (``intervals="linear-<eps>"``; ``"linear"`` is ``eps = 0.05``), or by the
    logistic function (``"sigmoid"``, as in files of format 2 and before); every other
    support by :func:`torch.distributions.biject_to` (``exp`` for positive reals).
    ``"truncated"`` maps an interval affinely onto :math:`[-\tfrac12, \tfrac12]` instead: ``T``
    is then no bijection onto the support, and a density over :math:`u` must be truncated to
    that box (as :class:`sbikit.NPE` does with ``bounds="truncate"``).

    The transform acts on whole vectors (``event_dim == 1``), so its
    ``log_abs_det_jacobian`` has shape :math:`(*)` for inputs :math:`(*, D)`.

    Example:
        >>> T = from_unconstrained(BoxUniform(-torch.ones(2), torch.ones(2)))
        >>> T(torch.tensor([0.0, 0.25]))
        tensor([0.0000, 0.5000])
    """

    transform = _to_support(prior.support, intervals)  # which refuses an unknown map first
    missing = len(prior.event_shape) - transform.codomain.event_dim
    if missing > 0:
        transform = IndependentTransform(transform, missing)
    return transform


def _bounds(support: constraints.Constraint, size: int) -> tuple[Tensor, Tensor] | None:
    if isinstance(support, constraints.independent):
        return _bounds(support.base_constraint, size)
    if isinstance(support, constraints.cat):
        parts = [_bounds(c, n) for c, n in zip(support.cseq, support.lengths)]
        if any(p is None for p in parts):
            return None
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if support is constraints.real or isinstance(support, type(constraints.real_vector)):
        lower, upper = -torch.inf, torch.inf
    elif hasattr(support, "lower_bound") or hasattr(support, "upper_bound"):
        lower = getattr(support, "lower_bound", -torch.inf)
        upper = getattr(support, "upper_bound", torch.inf)
    else:
        return None
    lower = torch.as_tensor(lower, dtype=torch.float64).expand(size).clone()
    upper = torch.as_tensor(upper, dtype=torch.float64).expand(size).clone()
    return lower, upper


def support_bounds(prior: Distribution) -> tuple[Tensor, Tensor] | None:
    r"""Returns per-dimension bounds ``(lower, upper)`` of a box-shaped support, else None.

    Example:
        >>> support_bounds(BoxUniform(-torch.ones(2), 2 * torch.ones(2)))
        (tensor([-1., -1.], dtype=torch.float64), tensor([2., 2.], dtype=torch.float64))
    """

    return _bounds(prior.support, prior.event_shape[0])


def in_support(prior: Distribution, theta: Tensor) -> Tensor:
    r"""Returns whether each row of ``theta`` :math:`(*, D)` lies in the support, :math:`(*)`."""

    inside = prior.support.check(theta)
    if inside.ndim == theta.ndim:  # elementwise constraints report per dimension
        inside = inside.all(-1)
    return inside & torch.isfinite(theta).all(-1)


def clamp_to_support(theta: Tensor, prior: Distribution) -> Tensor:
    r"""Moves parameters :math:`(*, D)` that lie on a closed boundary of a box-shaped
    support one step of their dtype inside it; other supports are left as they are.

    The map to unconstrained space (:func:`from_unconstrained`) sends a bound to
    :math:`\pm\infty`. A parameter on it, whether float rounding put it there or a
    caller did, is read as the nearest point of its dtype inside the interval, as
    the samples of :class:`sbikit.posterior.SupportMappedDistribution` are.
    Rows outside the support must be dealt with before (:func:`in_support`).

    Example:
        >>> prior = BoxUniform(-torch.ones(2), torch.ones(2))
        >>> clamp_to_support(torch.tensor([-1.0, 0.5]), prior)
        tensor([-1.0000,  0.5000])
        >>> bool(clamp_to_support(torch.tensor([-1.0, 0.5]), prior)[0] > -1)
        True
    """

    bounds = support_bounds(prior)
    if bounds is not None:
        lower, upper = (b.to(theta) for b in bounds)
        theta = torch.maximum(theta, torch.nextafter(lower, upper))
        theta = torch.minimum(theta, torch.nextafter(upper, lower))
    return theta


def _type_name(prior: Distribution) -> str:
    return f"{type(prior).__module__}.{type(prior).__qualname__}"


def prior_fingerprint(prior: Distribution) -> dict:
    r"""Describes a prior well enough to recognize it again, as JSON-able data.

    The fingerprint holds the type, the event shape, the support's bounds, and
    the log-density at eight fixed draws, so that a prior with other parameters
    is told apart even when it cannot be rebuilt by name.
    """

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if isinstance(prior, SupportOnly):  # no prior to draw from: points inside the support
            probe = from_unconstrained(prior, "sigmoid")(torch.randn(8, *prior.event_shape)).float()
        else:
            probe = prior.sample((8,))
    bounds = support_bounds(prior)
    return {
        "repr": repr(prior),
        "type": _type_name(prior),
        "event_shape": list(prior.event_shape),
        "bounds": None if bounds is None else [b.tolist() for b in bounds],
        "probe": probe.tolist(),
        "log_prob": prior.log_prob(probe).tolist(),
    }


def check_same_prior(prior: Distribution, fingerprint: dict, name: str = "prior") -> None:
    r"""Raises if ``prior`` differs from the prior that ``fingerprint`` describes.

    Raises:
        ValueError: Naming both priors and what differs: the type, the event
            shape, the support, or the density.

    Example:
        >>> saved = prior_fingerprint(BoxUniform(-2 * torch.ones(1), 2 * torch.ones(1)))
        >>> check_same_prior(BoxUniform(-2 * torch.ones(1), 2 * torch.ones(1)), saved)
        >>> check_same_prior(BoxUniform(-5 * torch.ones(1), 5 * torch.ones(1)), saved)
        Traceback (most recent call last):
        ...
        ValueError: the prior passed, BoxUniform(low=[-5.0], high=[5.0]), differs from the prior ...
    """

    differences = []
    if _type_name(prior) != fingerprint["type"]:
        differences.append(f"its type is {_type_name(prior)}, not {fingerprint['type']}")
    if list(prior.event_shape) != fingerprint["event_shape"]:
        differences.append(f"its event shape is {tuple(prior.event_shape)}, not {tuple(fingerprint['event_shape'])}")
    else:
        bounds, saved = support_bounds(prior), fingerprint["bounds"]
        same_support = (bounds is None) == (saved is None) and (
            bounds is None or all(torch.equal(b, torch.tensor(s, dtype=b.dtype)) for b, s in zip(bounds, saved))
        )
        if not same_support:
            shown = None if bounds is None else [b.tolist() for b in bounds]
            differences.append(f"its support's bounds are {shown}, not {saved}")
        probe = torch.tensor(fingerprint["probe"])
        expected = torch.tensor(fingerprint["log_prob"])
        try:
            got = prior.log_prob(probe).float()
        except (ValueError, RuntimeError) as error:
            differences.append(f"its log_prob fails on the saved probe points ({error})")
        else:
            if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True):
                differences.append(
                    f"its log-density at the saved probe points is {[round(v, 4) for v in got.tolist()][:3]}..., "
                    f"not {[round(v, 4) for v in expected.tolist()][:3]}..."
                )
    if differences:
        raise ValueError(
            f"the {name} passed, {prior!r}, differs from the prior this posterior was trained with, "
            f"{fingerprint['repr']}: {'; '.join(differences)}. Pass the prior used for training."
        )
