r"""Per-row random streams for batched torch simulators.

A batched simulator draws its noise from torch's global generator, so row
:math:`i` of a batch would get numbers that depend on the rows before it. Within
:class:`RowwiseRandomness`, every torch random function whose output has the batch
as its first dimension is evaluated row by row, each row with its own generator
state seeded from the simulation's own seed. The outputs, and so the simulations,
are then the same whatever the batch size.

Random draws whose first dimension is not the batch (``torch.randn(T, n)``, say)
cannot be attributed to a row. They are drawn from a stream seeded by the batch's
first index and size, which is reproducible for a fixed batch size only, and a
:class:`RuntimeWarning` says so once per run.
"""

__all__ = ["RowwiseRandomness", "warn_unattributed"]

import torch
import warnings

from torch import Tensor
from torch.overrides import TorchFunctionMode

# Functions that create a tensor of a given size from the generator.
_SIZED = {torch.randn, torch.rand, torch.randint, torch.randperm}
# Functions whose output has the shape of their first (tensor) argument.
_LIKE = {torch.randn_like, torch.rand_like, torch.randint_like}
# Functions whose tensor arguments broadcast to the output's shape.
_ELEMENTWISE = {
    torch.normal,
    torch.bernoulli,
    torch.poisson,
    torch.binomial,
    torch.multinomial,
    torch._standard_gamma,
    torch._sample_dirichlet,
}
# In-place methods that fill their tensor from the generator.
_INPLACE = {
    Tensor.normal_,
    Tensor.uniform_,
    Tensor.exponential_,
    Tensor.bernoulli_,
    Tensor.random_,
    Tensor.geometric_,
    Tensor.log_normal_,
    Tensor.cauchy_,
}
_RANDOM = _SIZED | _LIKE | _ELEMENTWISE | _INPLACE


def _size_of(func, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    if "size" in kwargs:
        return tuple(kwargs["size"])
    if func is torch.randperm:
        return None
    if func is torch.randint:
        sizes = [a for a in args if isinstance(a, (tuple, list, torch.Size))]
        return tuple(sizes[0]) if sizes else None
    if args and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    if all(isinstance(a, int) for a in args):
        return tuple(args)
    return None


class RowwiseRandomness(TorchFunctionMode):
    r"""Gives each row of a batch its own torch random stream.

    Arguments:
        states: One CPU generator state per row (from :func:`torch.get_rng_state`).
        fallback_seed: Seeds the stream for draws that have no batch dimension.
    """

    def __init__(self, states: list[Tensor], fallback_seed: int) -> None:
        super().__init__()
        self.states = states
        self.size = len(states)
        self.fallback = torch.Generator().manual_seed(fallback_seed)
        self.unattributed = False

    def _row(self, i: int, func, args: tuple, kwargs: dict):
        torch.set_rng_state(self.states[i])
        out = func(*args, **kwargs)
        self.states[i] = torch.get_rng_state()
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _RANDOM or "generator" in kwargs:
            return func(*args, **kwargs)
        with torch.random.fork_rng(devices=[]):
            out = self._rowwise(func, args, kwargs)
        if out is not None:
            return out
        self.unattributed = True
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.fallback.get_state())
            out = func(*args, **kwargs)
            self.fallback.set_state(torch.get_rng_state())
        return out

    def _rowwise(self, func, args: tuple, kwargs: dict):
        n = self.size
        if func in _INPLACE:
            target = args[0]
            if target.ndim == 0 or target.shape[0] != n:
                return None
            for i in range(n):
                self._row(i, func, (target[i], *args[1:]), kwargs)
            return target
        if func in _LIKE:
            like = args[0]
            if like.ndim == 0 or like.shape[0] != n:
                return None
            return torch.stack([self._row(i, func, (like[i], *args[1:]), kwargs) for i in range(n)])
        tensors = [a for a in args if isinstance(a, Tensor)]
        if func in _SIZED or (not tensors and "size" in kwargs):
            size = _size_of(func, args, kwargs)
            if not size or size[0] != n:
                return None
            rest = tuple(size[1:])
            if "size" in kwargs:
                row_args, row_kwargs = args, {**kwargs, "size": rest}
            elif func is torch.randint:
                row_args = tuple(rest if isinstance(a, (tuple, list, torch.Size)) else a for a in args)
                row_kwargs = kwargs
            else:
                row_args, row_kwargs = (rest,), kwargs
            return torch.stack([self._row(i, func, row_args, row_kwargs) for i in range(n)])
        # Elementwise samplers: broadcast the tensor arguments and slice rows.
        if not tensors or any(isinstance(v, Tensor) for v in kwargs.values()):
            return None
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        if len(shape) == 0 or shape[0] != n or (func is torch.multinomial and len(shape) != 2):
            return None
        expanded = [a.expand(shape) if isinstance(a, Tensor) else a for a in args]
        rows = [
            self._row(i, func, tuple(a[i] if isinstance(a, Tensor) else a for a in expanded), kwargs)
            for i in range(n)
        ]
        return torch.stack(rows)


def warn_unattributed() -> None:
    r"""Warns that some draws could not be given to a row (see the module docstring)."""

    warnings.warn(
        "The simulator drew torch random numbers whose first dimension is not the batch "
        "(for example torch.randn(T, n)); those draws are reproducible for this batch size "
        "only. Draw with the batch first, or simulate with batched=False, for simulations "
        "that do not depend on the batch size.",
        RuntimeWarning,
        stacklevel=3,
    )
