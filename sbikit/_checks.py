r"""Shape and value checks shared by every public entry point."""

__all__ = ["check_theta", "check_x", "check_count"]

import numpy as np
import torch
import warnings

from torch import Tensor

from .data import as_float_tensor
from .errors import OutOfRangeWarning


def check_count(value: object, name: str) -> int:
    r"""Returns ``value`` as a positive int, else raises a TypeError or ValueError."""

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}.")
    return int(value)


def check_x(
    x: object, x_shape: torch.Size, name: str = "x", structure: str | None = None
) -> tuple[Tensor, torch.Size]:
    r"""Checks observations :math:`(*, *x\_shape)` and returns them with their batch shape.

    For sets and series (``structure`` not None), ``x_shape`` is :math:`(M, L)` and
    observations :math:`(*, M', L)` may have any number :math:`M' \geq 1` of members or steps.

    Raises:
        ValueError: If the trailing shape differs from ``x_shape`` or ``x`` is not finite.
    """

    x = as_float_tensor(x, name)
    if structure is not None:
        what = "members" if structure == "set" else "time steps"
        features = x_shape[-1]
        if x.ndim < 2 or x.shape[-1] != features:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, but each of the {what} has {features} feature(s): pass "
                f"one observation of shape (M, {features}) with any number M of {what}, or a batch "
                f"(m, M, {features})."
            )
        if x.shape[-2] == 0:
            raise ValueError(f"{name} has no {what} (shape {tuple(x.shape)}); an observation needs at least one.")
        if x.shape[-2] > x_shape[-2]:
            longer = "a longer series" if structure == "series" else "more members"
            warnings.warn(
                f"{name} has {x.shape[-2]} {what}, {longer} than any simulation trained on (at most "
                f"{x_shape[-2]}); the summary network extrapolates, so check the posterior "
                "(for example by simulating data of this size).",
                OutOfRangeWarning,
                stacklevel=4,
            )
        x_shape = x.shape[-2:]
    if x.ndim == 0 and x_shape == (1,):  # a scalar observation of a one-feature simulator
        x = x.reshape(1)
    k = len(x_shape)
    if x.ndim < k or x.shape[x.ndim - k :] != x_shape:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but the simulator produced outputs of shape "
            f"{tuple(x_shape)}; pass one observation of shape {tuple(x_shape)} or a batch of "
            f"shape (m, {', '.join(map(str, x_shape))})."
        )
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{name} contains {bad}; observations must be finite.")
    return x, x.shape[: x.ndim - k]


def broadcast_batch(theta_batch: torch.Size, x_batch: torch.Size) -> torch.Size:
    r"""The batch shape that parameters with batch shape ``theta_batch`` and observations with
    batch shape ``x_batch`` broadcast to.

    Raises:
        ValueError: If they do not broadcast, with the shapes that would.
    """

    try:
        return torch.broadcast_shapes(theta_batch, x_batch)
    except RuntimeError:
        raise ValueError(
            f"theta has batch shape {tuple(theta_batch)} and x has batch shape {tuple(x_batch)}, which do not "
            "broadcast; pass theta (n, m, D) for m observations (m, *x_shape)."
        ) from None


def check_theta(theta: object, dim: int, name: str = "theta") -> Tensor:
    r"""Checks parameters :math:`(*, D)` with :math:`D` = ``dim``."""

    theta = as_float_tensor(theta, name)
    if theta.ndim == 0 or theta.shape[-1] != dim:
        raise ValueError(
            f"{name} has shape {tuple(theta.shape)} but the prior has {dim} dimensions; "
            f"pass {name} of shape (*, {dim})."
        )
    return theta
