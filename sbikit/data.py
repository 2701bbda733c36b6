r"""Simulated pairs :math:`(\theta_i, x_i)` and the record of failed simulations."""

__all__ = ["STATUSES", "Failure", "Simulations", "as_float_tensor", "failure_summary"]

import collections
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


def _describe(value: object) -> str:
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


_INTEGRAL = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# A failure's kind and the status of its record: "invalid" outputs can be simulated again with
# the same result, "error" is a deterministic exception, "timeout" and "crashed" are retried first.
STATUSES = ("ok", "invalid", "error", "timeout", "crashed")
_STATUS = {"nan": "invalid", "inf": "invalid", "exception": "error", "timeout": "timeout", "crashed": "crashed"}


@dataclass(frozen=True)
class Failure:
    r"""One simulation that produced no usable output.

    Arguments:
        index: The simulation's index within its run.
        kind: ``"nan"``, ``"inf"``, ``"exception"``, ``"timeout"`` (it ran past the
            run's timeout, and its worker process was replaced) or ``"crashed"`` (its
            worker process died).
        message: The exception's text, or a short description.
        error_type: The exception's type name, for ``"exception"``.
        attempt: The attempt that was recorded (timeouts and crashes are retried).

    Example:
        >>> Failure(3, "exception", "ValueError: diverged", "ValueError").status
        'error'
    """

    index: int
    kind: str
    message: str = ""
    error_type: str = ""
    attempt: int = 1

    @property
    def status(self) -> str:
        r"""The record's status: ``"invalid"`` (NaN or inf), ``"error"``, ``"timeout"`` or ``"crashed"``."""

        return _STATUS[self.kind]


@dataclass(frozen=True)
class Simulations:
    r"""Pairs of parameters and simulator outputs.

    Rows whose output is not finite (NaN, inf, or a raised exception, stored as
    NaN) are kept so that indices match the seeds, and are excluded by estimators.

    Structured outputs carry their structure explicitly: sets of members
    (``structure="set"``) and time series (``structure="series"``) have
    :math:`x` of shape :math:`(N, M, L)`, padded along the member or time axis, and a
    boolean ``mask`` :math:`(N, M)` that is True where a member or time step is
    present. Padded entries of :math:`x` are never read (they hold zeros), so
    NaN keeps its meaning of a failed simulation.

    Arguments:
        theta: The parameters, with shape :math:`(N, D)`.
        x: The outputs, with shape :math:`(N, *)`: vectors :math:`(N, L)`, sets
            :math:`(N, M, L)` or sequences :math:`(N, T, L)`.
        seed: The root seed of the run that produced them, if any.
        failures: The record of failed simulations.
        mask: For sets and series, which members or steps are present, :math:`(N, M)`
            booleans; None means all of them.
        structure: ``"set"`` (exchangeable members), ``"series"`` (ordered time
            steps) or None (an unstructured array, the default).
        theta_local: For mixed effects, each member's local parameters,
            :math:`(N, M, K)`, zeros where the member is absent.

    Example:
        >>> data = Simulations(theta=torch.zeros(4, 2), x=torch.ones(4, 3))
        >>> len(data), data.num_invalid
        (4, 0)
    """

    theta: Tensor
    x: Tensor
    seed: int | None = None
    failures: tuple[Failure, ...] = field(default=())
    mask: Tensor | None = None
    structure: str | None = None
    theta_local: Tensor | None = None

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
        self._check_structure()

    def _check_structure(self) -> None:
        if self.structure not in (None, "set", "series"):
            raise ValueError(f"structure must be 'set', 'series' or None, got {self.structure!r}.")
        x = self.x
        if self.structure is None:
            if self.mask is not None or self.theta_local is not None:
                raise ValueError("mask and theta_local describe sets or series: pass structure='set' or 'series'.")
            return
        if x.ndim != 3:
            raise ValueError(
                f"x of a {self.structure} must have shape (N, M, L) (members or steps of L features), "
                f"got {tuple(x.shape)}."
            )
        mask = self.mask
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor of shape {tuple(x.shape[:2])}, got {_describe(mask)}.")
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(x.shape[:2])} (N, M), got {tuple(mask.shape)}.")
        # padded entries hold zeros: they are never read, and NaN there would mark the row as failed
        object.__setattr__(self, "x", torch.where(mask.unsqueeze(-1), x, 0.0))
        object.__setattr__(self, "mask", mask)
        if self.theta_local is not None:
            local = as_float_tensor(self.theta_local, "theta_local")
            if local.ndim != 3 or local.shape[:2] != x.shape[:2]:
                raise ValueError(
                    f"theta_local must have shape ({x.shape[0]}, {x.shape[1]}, K), one row per member, "
                    f"got {tuple(local.shape)}."
                )
            object.__setattr__(self, "theta_local", torch.where(mask.unsqueeze(-1), local, 0.0))

    def __len__(self) -> int:
        return self.theta.shape[0]

    @property
    def x_shape(self) -> torch.Size:
        r"""The shape of one output, without the leading :math:`N`."""

        return self.x.shape[1:]

    @property
    def valid(self) -> Tensor:
        r"""Whether each row's parameters and output are finite, :math:`(N,)`."""

        valid = torch.isfinite(self.x).flatten(1).all(1) & torch.isfinite(self.theta).all(1)
        if self.theta_local is not None:
            valid &= torch.isfinite(self.theta_local).flatten(1).all(1)
        if self.mask is not None:
            valid &= self.mask.any(1)  # an empty set or series cannot be trained on
        return valid

    @property
    def num_invalid(self) -> int:
        r"""The number of rows that cannot be trained on."""

        return int((~self.valid).sum())

    def dropna(self) -> "Simulations":
        r"""Returns only the rows that can be trained on."""

        return self[self.valid]

    def __getitem__(self, index: Tensor | slice) -> "Simulations":
        r"""Returns the rows ``index`` (a boolean mask, indices or a slice), with their structure."""

        def take(value: Tensor | None) -> Tensor | None:
            return None if value is None else value[index]

        return dataclasses.replace(
            self, theta=self.theta[index], x=self.x[index], mask=take(self.mask), theta_local=take(self.theta_local)
        )

    def __repr__(self) -> str:
        return (
            f"Simulations(n={len(self)}, theta_dim={self.theta.shape[1]}, "
            f"x_shape={tuple(self.x_shape)}, seed={self.seed}, num_invalid={self.num_invalid}"
            + (f", structure={self.structure!r}" if self.structure else "")
            + ")"
        )


def failure_summary(failures: list[Failure], total: int) -> str:
    r"""One paragraph on a run's failures: how many of each kind, and the three most
    common messages."""

    kinds = collections.Counter(f.kind for f in failures)
    text = (
        f"{len(failures)} of {total} simulations failed ({kinds['exception']} raised, "
        f"{kinds['nan']} returned NaN, {kinds['inf']} returned inf"
        + (f", {kinds['timeout']} timed out" if kinds["timeout"] else "")
        + (f", {kinds['crashed']} crashed" if kinds["crashed"] else "")
        + "); they are recorded in Simulations.failures and excluded from training."
    )
    messages = collections.Counter(f.message.splitlines()[0] if f.message else f.kind for f in failures)
    common = "; ".join(f"{count} x {message}" for message, count in messages.most_common(3))
    return f"{text} Most common: {common}."
