r"""What every estimator does before training: check the data, standardize."""

__all__ = ["standardize", "training_data"]

import torch
import warnings

from torch import Tensor
from torch.distributions import Distribution

from ..data import Simulations
from ..priors import in_support

_MIN_SCALE = 1e-8


def training_data(prior: Distribution, data: object) -> Simulations:
    r"""Checks simulations against the prior and returns the rows that can be trained on.

    Raises:
        TypeError: If ``data`` is not :class:`sbikit.Simulations`.
        ValueError: If the parameters have the wrong dimension or lie outside the
            prior's support, or fewer than two simulations are valid.
    """

    if not isinstance(data, Simulations):
        raise TypeError(
            f"data must be sbikit.Simulations, got {type(data).__name__}; wrap tensors as "
            "sbikit.Simulations(theta=theta, x=x)."
        )
    dim = prior.event_shape[0]
    if data.theta.shape[1] != dim:
        raise ValueError(
            f"data.theta has shape {tuple(data.theta.shape)} but the prior has {dim} dimensions; "
            f"pass theta of shape (N, {dim})."
        )
    valid = len(data) - data.num_invalid
    if valid < 2:
        raise ValueError(
            f"need at least 2 valid simulations to train, got {valid} of {len(data)}"
            + (f" ({data.num_invalid} have NaN or inf values; see data.failures)." if data.num_invalid else ".")
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
