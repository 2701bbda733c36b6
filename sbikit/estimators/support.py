r"""The support of observations, column by column, and its map onto the real line.

A column of flattened observations :math:`(B, X)` is continuous or discrete (integers),
with a lower and an upper bound (either may be infinite). A discrete value :math:`k`
stands for its cell :math:`[k, k + 1)` (see :func:`dequantize`), so a discrete column with
integers :math:`a, \dots, b` covers :math:`[a, b + 1)`. :func:`to_free` maps each column's
continuous range bijectively onto :math:`\mathbb{R}`:

- below-bounded, :math:`(a, \infty)`: :math:`w = s \log(e^{(y - a) / s} - 1)`, a softplus
  inverted with a knee at :math:`s` (the column's training sd): close to
  :math:`s \log((y - a) / s)` within :math:`s` of the bound and to :math:`y - a` beyond;
- above-bounded: the mirror image; bounded on both sides: the logit of :math:`(y - a) / (b - a)`.

Near the bound it spreads the cell of a count of 0, :math:`(0, 1)`, over a half-line, at the
scale of the data's spread rather than of one count; far from it, it is linear, so that the
flow's tails do not become the heavy tails of an exponential (``docs/design.md`` compares it
with the logarithm and with a knee at one count).

A density over :math:`w` is then a density over the support, which puts no mass outside it,
and draws mapped back (:func:`from_free`) always lie inside it.

The bounds are held as tensors of shape :math:`(X,)`: ``discrete`` (0 or 1), ``low`` and
``high``, the continuous range (for discrete columns, one above the largest integer), and
``knee``, the scale :math:`s` of each one-sided map (:func:`knees`).
"""

__all__ = ["all_counts", "dequantize", "describe", "from_free", "infer_support", "knees", "outside", "parse_support", "to_free"]

import math
import torch
import torch.nn.functional as F

from collections.abc import Mapping, Sequence
from torch import Tensor
from torch.distributions import constraints

_GAP = 1e-6  # values closer than this to a bound are read this far inside it


def _bounds(constraint: object, column: int) -> tuple[bool, float, float]:
    if not isinstance(constraint, constraints.Constraint) or constraint.event_dim != 0:
        raise TypeError(
            f"x_support[{column}] must be a torch.distributions.constraints constraint on single values "
            "(real, positive, nonnegative, greater_than(a), less_than(b), interval(a, b), nonnegative_integer, "
            f"positive_integer, integer_interval(a, b), boolean), got {constraint!r}."
        )
    if constraint is constraints.boolean:
        return True, 0.0, 2.0
    known = isinstance(constraint, (constraints.greater_than, constraints.greater_than_eq, constraints.less_than,
                                    constraints.interval, constraints.half_open_interval, constraints.integer_interval))
    if constraint is not constraints.real and not known and not hasattr(constraint, "lower_bound"):
        raise TypeError(f"x_support[{column}] = {constraint!r} is not a support sbikit can map; pass one of real, "
                        "greater_than(a), less_than(b), interval(a, b), nonnegative_integer, integer_interval(a, b).")
    discrete = bool(constraint.is_discrete)
    low = float(getattr(constraint, "lower_bound", -math.inf))
    high = float(getattr(constraint, "upper_bound", math.inf)) + (1.0 if discrete else 0.0)
    return discrete, low, high


def parse_support(x_support: object, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Reads a declared support: one constraint for every column, a sequence of :math:`X`
    constraints, a mapping from column indices to constraints (the others undeclared), or
    None (none declared).

    Returns:
        ``discrete``, ``low``, ``high`` and ``declared``, each :math:`(X,)`; an undeclared
        column is continuous and unbounded until :func:`infer_support` looks at the data.

    Raises:
        TypeError: If an entry is not a constraint sbikit can map.
        ValueError: If a sequence does not have one entry per column, or a mapping names a
            column that does not exist.

    Example:
        >>> discrete, low, high, _ = parse_support({1: constraints.nonnegative_integer}, 2)
        >>> discrete.tolist(), low.tolist(), high.tolist()
        ([0.0, 1.0], [-inf, 0.0], [inf, inf])
    """

    discrete, low = torch.zeros(size), torch.full((size,), -math.inf)
    high, declared = torch.full((size,), math.inf), torch.zeros(size, dtype=torch.bool)
    if x_support is None:
        return discrete, low, high, declared
    if isinstance(x_support, constraints.Constraint):
        x_support = [x_support] * size
    if isinstance(x_support, Mapping):
        items = list(x_support.items())
    elif isinstance(x_support, Sequence) and not isinstance(x_support, str):
        if len(x_support) != size:
            raise ValueError(f"x_support has {len(x_support)} entries but an observation has {size} values "
                             "(flattened); pass one constraint per value, one for all, or a dict {column: constraint}.")
        items = list(enumerate(x_support))
    else:
        raise TypeError(
            f"x_support must be a constraint, a sequence or a dict of constraints, got {type(x_support).__name__}."
        )
    for column, constraint in items:
        if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < size:
            raise ValueError(
                f"x_support names column {column!r}, but the flattened observation has columns 0 to {size - 1}."
            )
        discrete[column], low[column], high[column] = _bounds(constraint, column)
        declared[column] = True
    return discrete, low, high, declared


def infer_support(x: Tensor, discrete: Tensor, low: Tensor, high: Tensor, declared: Tensor) -> None:
    r"""Fills in the undeclared columns from training observations :math:`(N, X)`, in place: a
    column of integers is discrete; non-negative (:math:`[0, \infty)`) where every value is
    :math:`\geq 0`, and binary where every value is 0 or 1; any other column is continuous and
    unbounded.

    Raises:
        ValueError: If a declared column has a training value outside its support.
    """

    integers = (x == x.round()).all(0)
    free = ~declared
    counts = integers & (x.min(0).values >= 0)
    discrete[free] = integers[free].to(discrete)
    low[free] = torch.where(counts, 0.0, -math.inf)[free]
    high[free] = torch.where(counts & (x.max(0).values <= 1), 2.0, math.inf)[free]
    bad = outside(x, discrete, low, high) & declared
    if bool(bad.any()):
        row, column = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"training simulation {row} has the value {float(x[row, column])!r} in column {column}, outside its "
            f"declared support ({describe(discrete, low, high)[column]}); fix x_support or the simulator."
        )


def outside(x: Tensor, discrete: Tensor, low: Tensor, high: Tensor) -> Tensor:
    r"""Which values of observations :math:`(*, X)` lie outside the support: a discrete column
    takes integers in :math:`[low, high - 1]`, a continuous one values in :math:`(low, high)`."""

    d = discrete.to(x.device).bool()
    low, high = low.to(x), high.to(x)
    continuous = (x <= low) | (x >= high)
    integer = (x != x.round()) | (x < low) | (x > high - 1)
    return torch.where(d, integer, continuous)


def all_counts(discrete: Tensor, low: Tensor, high: Tensor) -> bool:
    r"""Whether every column is a count: discrete, bounded below, unbounded above."""

    return bool(discrete.bool().all() and torch.isfinite(low).all() and torch.isinf(high).all())


def knees(y: Tensor, low: Tensor, high: Tensor) -> Tensor:
    r"""The knee of each column's one-sided map: the standard deviation of training values
    :math:`(N, X)` (dequantized), at least 1 in units of the data for counts' sake (a count of 0 is
    a cell one wide), and 1 where a column is unbounded or bounded on both sides."""

    one_sided = torch.isfinite(low) ^ torch.isfinite(high)
    return torch.where(one_sided, y.double().std(0).nan_to_num(1.0).clamp_min(1.0).float(), 1.0)


def dequantize(x: Tensor, noise: Tensor, discrete: Tensor) -> Tensor:
    r"""Observations :math:`(*, X)` with ``noise`` in :math:`[0, 1)` added to the discrete
    columns, kept below the next integer (in float32 a count above 1 plus a noise within
    :math:`2^{-24}` of 1 would round up into the next count's cell)."""

    inside = torch.minimum(x + noise, torch.nextafter(x + 1, x))
    return torch.where(discrete.to(x.device).bool(), inside, x)


def to_free(y: Tensor, low: Tensor, high: Tensor, knee: Tensor) -> tuple[Tensor, Tensor]:
    r"""Maps values :math:`(*, X)` in the continuous range onto the real line.

    Returns:
        :math:`w` :math:`(*, X)` and :math:`\log |\det \partial w / \partial y|` :math:`(*)`,
        NaN where :math:`y` is outside the range.
    """

    low, high = low.to(y), high.to(y)
    above, below = torch.isfinite(low), torch.isfinite(high)
    both = above & below
    width = torch.where(both, high - low, 1.0)
    s = ((y - low) / width).clamp(_GAP, 1 - _GAP)
    knee = knee.to(y)
    t = (torch.where(above, y - low, high - y) / knee).clamp_min(_GAP)
    soft_jac = -torch.log(-torch.expm1(-t))  # log d/dt of log(exp(t) - 1)
    soft = knee * (t - soft_jac)  # knee * log(exp(t) - 1), without overflow
    w = torch.where(both, torch.log(s) - torch.log1p(-s), torch.where(above, soft, torch.where(below, -soft, y)))
    jac = torch.where(both, -torch.log(s) - torch.log1p(-s) - torch.log(width),
                      torch.where(above | below, soft_jac, torch.zeros_like(y)))
    off = ((y < low) | (y > high)).any(-1)
    return w, torch.where(off, math.nan, jac.sum(-1))


def from_free(w: Tensor, discrete: Tensor, low: Tensor, high: Tensor, knee: Tensor) -> Tensor:
    r"""Maps :math:`w` :math:`(*, X)` back into the support: values in the continuous range, and
    integers (the cell's floor, within the bounds) in the discrete columns."""

    low, high, knee = low.to(w), high.to(w), knee.to(w)
    above, below = torch.isfinite(low), torch.isfinite(high)
    y = torch.where(above & below, low + (high - low) * torch.sigmoid(w), torch.where(
        above, low + knee * F.softplus(w / knee), torch.where(below, high - knee * F.softplus(-w / knee), w)))
    d = discrete.to(w.device).bool()
    inner_low, inner_high = torch.nextafter(low, high), torch.nextafter(high, low)  # open bounds of continuous columns
    y = torch.where(d, y.floor().clamp(low, high - 1), torch.maximum(torch.minimum(y, inner_high), inner_low))
    return y


def describe(discrete: Tensor, low: Tensor, high: Tensor) -> list[str]:
    r"""Each column's support in words, for example ``"integers >= 0"`` or ``"(0, 1)"``."""

    words = []
    for d, a, b in zip(discrete.tolist(), low.tolist(), high.tolist()):
        if d:
            bounds = ("" if a == -math.inf else f" >= {a:g}") + ("" if b == math.inf else f" <= {b - 1:g}")
            words.append("integers" + bounds)
        else:
            words.append("real" if a == -math.inf and b == math.inf else f"({a:g}, {b:g})")
    return words
