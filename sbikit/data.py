r"""Simulated pairs :math:`(\theta_i, x_i)` and the record of failed simulations."""

__all__ = ["Failure", "Simulations", "as_float_tensor"]

import dataclasses
import numpy as np
import torch

from dataclasses import dataclass, field
from torch import Tensor


def as_float_tensor(value: object, name: str) -> Tensor:
    r"""Converts a tensor, array or nested list of real numbers to a float32 tensor.

    Raises:
        TypeError: If ``value`` is not numeric or is complex.
    """

    if isinstance(value, Tensor):
        tensor = value.detach()
    else:
        try:
            array = np.asarray(value)
        except Exception as error:  # noqa: BLE001 - any conversion failure is a type error here
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}.") from error
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must hold real numbers, got {type(value).__name__} with dtype {array.dtype}."
            )
        # np.ascontiguousarray would turn a 0-d array into shape (1,): scalars stay scalars
        tensor = torch.from_numpy(array.copy() if array.ndim == 0 else np.ascontiguousarray(array))
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _INTEGRAL):
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}.")
    return tensor.to(torch.float32)


_INTEGRAL = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(frozen=True)
class Failure:
    r"""One simulation that produced no usable output.

    Arguments:
        index: The simulation's index within its run.
        kind: ``"nan"``, ``"inf"`` or ``"exception"``.
        message: The exception's text, or a short description.
    """

    index: int
    kind: str
    message: str = ""


@dataclass(frozen=True)
class Simulations:
    r"""Pairs of parameters and simulator outputs.

    Rows whose output is not finite (NaN, inf, or a raised exception, stored as
    NaN) are kept so that indices match the seeds, and are excluded by estimators.

    Arguments:
        theta: The parameters, with shape :math:`(N, D)`.
        x: The outputs, with shape :math:`(N, *)`: vectors :math:`(N, L)`, sets
            :math:`(N, M, L)` or sequences :math:`(N, T, L)`.
        seed: The root seed of the run that produced them, if any.
        failures: The record of failed simulations.

    Example:
        >>> data = Simulations(theta=torch.zeros(4, 2), x=torch.ones(4, 3))
        >>> len(data), data.num_invalid
        (4, 0)
    """

    theta: Tensor
    x: Tensor
    seed: int | None = None
    failures: tuple[Failure, ...] = field(default=())

    def __post_init__(self) -> None:
        theta = as_float_tensor(self.theta, "theta")
        x = as_float_tensor(self.x, "x")
        if theta.ndim != 2:
            raise ValueError(
                f"theta must have shape (N, D), got {tuple(theta.shape)}"
                + ("; for one parameter use theta.unsqueeze(-1)." if theta.ndim == 1 else ".")
            )
        if x.ndim < 2:
            raise ValueError(
                f"x must have shape (N, *) with at least one feature dimension, got {tuple(x.shape)}"
                + ("; for scalar outputs use x.unsqueeze(-1)." if x.ndim == 1 else ".")
            )
        if theta.shape[0] != x.shape[0]:
            raise ValueError(
                f"theta and x must have the same number of rows, got theta {tuple(theta.shape)} "
                f"and x {tuple(x.shape)}."
            )
        object.__setattr__(self, "theta", theta)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "failures", tuple(self.failures))

    def __len__(self) -> int:
        return self.theta.shape[0]

    @property
    def x_shape(self) -> torch.Size:
        r"""The shape of one output, without the leading :math:`N`."""

        return self.x.shape[1:]

    @property
    def valid(self) -> Tensor:
        r"""Whether each row's parameters and output are finite, :math:`(N,)`."""

        return torch.isfinite(self.x).flatten(1).all(1) & torch.isfinite(self.theta).all(1)

    @property
    def num_invalid(self) -> int:
        r"""The number of rows that cannot be trained on."""

        return int((~self.valid).sum())

    def dropna(self) -> "Simulations":
        r"""Returns only the rows that can be trained on."""

        valid = self.valid
        return dataclasses.replace(self, theta=self.theta[valid], x=self.x[valid])

    def __repr__(self) -> str:
        return (
            f"Simulations(n={len(self)}, theta_dim={self.theta.shape[1]}, "
            f"x_shape={tuple(self.x_shape)}, seed={self.seed}, num_invalid={self.num_invalid})"
        )
