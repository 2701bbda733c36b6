r"""Per-row random streams for batched torch code, vectorized.

A batched simulator (or a prior's ``sample``) draws its noise from torch's global
generator, so row :math:`i` of a batch would get numbers that depend on the rows
before it. Within :class:`RowStreams`, every torch random function whose output
has the batch as its first dimension instead gets, for row :math:`i`, values that
depend only on that row's key :math:`k_i`, the number :math:`c` of random calls
made so far, and the element's position :math:`j` within the row:

.. math:: b_{icj} = h\big(k_i \oplus h((c \cdot 2^{32} + j + 1)\,\gamma)\big),

a counter-based generator (:func:`sbikit.runs.seeds.mix64` is :math:`h`), like
Philox in JAX and on GPUs. The simulations are then the same whatever the batch
size, and the whole batch is drawn in a few vectorized operations.

The 64-bit words become uniforms with the output's precision, then:

- ``rand``, ``uniform_``: uniform; ``randn``, ``normal``, ``normal_``, ``log_normal_``:
  the normal quantile function; ``exponential_``, ``geometric_``, ``cauchy_``:
  their quantile functions; ``randint``, ``random_(from, to)``: scaled uniforms;
  ``bernoulli``: a comparison with the probabilities.
- Samplers that need rejection (``poisson``, ``binomial``, ``multinomial``, the
  gamma and Dirichlet samplers) run row by row, each row with a torch generator
  seeded from its own key and counter: reproducible, but slower.

Random draws whose first dimension is not the batch (``torch.randn(T, n)``, say)
cannot be attributed to a row. They are drawn from a stream seeded by the batch's
first index and size, which is reproducible for a fixed batch size only, and a
:class:`RuntimeWarning` says so once per run.
"""

__all__ = ["RowStreams", "warn_unattributed"]

import math
import numpy as np
import torch
import warnings

from torch import Tensor
from torch.overrides import TorchFunctionMode

from .seeds import mix64, mix64_int

_GAMMA_INT = 0x9E3779B97F4A7C15
_GAMMA = np.uint64(_GAMMA_INT)
_MASK = (1 << 64) - 1

# Functions that create a tensor of a given size, or of the size of their input.
_UNIFORM = {torch.rand, torch.rand_like}
_NORMAL = {torch.randn, torch.randn_like}
_INTEGER = {torch.randint, torch.randint_like}
# In-place methods, with their parameters' names and defaults.
_INPLACE = {
    Tensor.normal_: (("mean", 0.0), ("std", 1.0)),
    Tensor.uniform_: (("from", 0.0), ("to", 1.0)),
    Tensor.exponential_: (("lambd", 1.0),),
    Tensor.bernoulli_: (("p", 0.5),),
    Tensor.geometric_: (("p", None),),
    Tensor.log_normal_: (("mean", 1.0), ("std", 2.0)),
    Tensor.cauchy_: (("median", 0.0), ("sigma", 1.0)),
    Tensor.random_: (("from", None), ("to", None)),
}
# Samplers evaluated row by row with a seeded generator; the first two take (B, K) inputs.
_ROWWISE = {torch.multinomial, torch._sample_dirichlet, torch.poisson, torch.binomial, torch._standard_gamma}
_RANDOM = _UNIFORM | _NORMAL | _INTEGER | set(_INPLACE) | _ROWWISE | {torch.normal, torch.bernoulli, torch.randperm}


def _bind(func, args: tuple, kwargs: dict) -> dict:
    names = _INPLACE[func]
    values = {name: default for name, default in names}
    values.update(zip((n for n, _ in names), args[1:]))
    values.update((k, v) for k, v in kwargs.items() if k in values)
    return values


def _integers(func, args: tuple, kwargs: dict) -> tuple[int, int]:
    ints = [a for a in (args[1:] if func is torch.randint_like else args) if isinstance(a, int)]
    low, high = (0, *ints) if len(ints) == 1 else (ints + [0, 0])[:2]
    return kwargs.get("low", low), kwargs.get("high", high)


def keyed_words(keys: np.ndarray, first: int, n: int) -> np.ndarray:
    r"""The counter-based words :math:`h(k_i \oplus h((c + j)\,\gamma))` for the keys
    :math:`k_i` and the counters :math:`c = \text{first}, \dots, \text{first} + n - 1`,
    :math:`(B, n)` ``uint64``: row :math:`i` depends on its key alone."""

    if n <= 8:  # the usual case, one or a few draws per row: Python ints are faster
        inner = np.array([mix64_int(((first + j) * _GAMMA_INT) & _MASK) for j in range(n)], dtype=np.uint64)
    else:
        inner = mix64((np.arange(n, dtype=np.uint64) + np.uint64(first)) * _GAMMA, inplace=True)
    return mix64(keys.reshape(-1, 1) ^ inner, inplace=True)


class RowStreams(TorchFunctionMode):
    r"""Gives each row of a batch its own torch random stream.

    Arguments:
        keys: One 64-bit key per row, a uint64 array :math:`(B,)`.
        fallback_seed: Seeds the stream for draws that have no batch dimension.
    """

    def __init__(self, keys: np.ndarray, fallback_seed: int) -> None:
        super().__init__()
        self.keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 1)
        self.size = len(self.keys)
        self.counter = 0
        self.fallback_seed = fallback_seed
        self.fallback: Tensor | None = None
        self.unattributed = False
        self.scratch = torch.Generator()

    def _words(self, n: int) -> np.ndarray:
        r"""Returns the next call's 64-bit words, :math:`(B, n)`."""

        first = (self.counter << 32) + 1
        self.counter += 1
        return keyed_words(self.keys, first, n)

    def _uniform(self, like: Tensor, open_interval: bool = False, bits: int | None = None) -> Tensor:
        r"""Uniforms on :math:`[0, 1)` (or :math:`(0, 1)`) in float64, shaped like ``like``.

        By default they carry no more bits than ``like``'s dtype holds, so that a
        uniform never rounds up to 1 when cast to it.
        """

        if bits is None:
            floating = like.is_floating_point() and like.dtype != torch.float64
            bits = 1 - round(math.log2(torch.finfo(like.dtype).eps)) if floating else 53
        u = (self._words(like[0].numel()) >> np.uint64(64 - bits)).astype(np.float64)
        if open_interval:
            u += 0.5
        u *= 2.0**-bits
        return torch.from_numpy(u).reshape(like.shape).to(like.device)

    def _normal(self, like: Tensor) -> Tensor:
        # 53-bit uniforms whatever the output's dtype, so that the tails are not cut off
        return torch.special.ndtri(self._uniform(like, open_interval=True, bits=53))

    def _values(self, func, args: tuple, kwargs: dict, out: Tensor) -> Tensor | None:
        r"""Computes ``func``'s values for a template output ``out`` of the right shape."""

        if func in _UNIFORM:
            return self._uniform(out)
        if func in _NORMAL:
            return self._normal(out)
        if func in _INTEGER:
            low, high = _integers(func, args, kwargs)
            return (self._uniform(out, bits=53) * (high - low)).floor() + low
        if func is torch.normal:
            mean = kwargs.get("mean", args[0] if args else 0.0)
            std = kwargs.get("std", args[1] if len(args) > 1 else 1.0)
            return torch.as_tensor(mean).double() + torch.as_tensor(std).double() * self._normal(out)
        if func is torch.bernoulli:
            p = kwargs.get("p", args[1] if len(args) > 1 else args[0])
            return (self._uniform(out, bits=53) < torch.as_tensor(p)).double()
        p = _bind(func, args, kwargs)
        if func is Tensor.normal_:
            return p["mean"] + p["std"] * self._normal(out)
        if func is Tensor.uniform_:
            return p["from"] + (p["to"] - p["from"]) * self._uniform(out)
        if func is Tensor.exponential_:
            return -torch.log1p(-self._uniform(out, bits=53)) / p["lambd"]
        if func is Tensor.bernoulli_:
            return (self._uniform(out, bits=53) < torch.as_tensor(p["p"])).double()
        if func is Tensor.geometric_:
            return torch.ceil(torch.log1p(-self._uniform(out, True, 53)) / math.log1p(-p["p"])).clamp_min(1)
        if func is Tensor.log_normal_:
            return torch.exp(p["mean"] + p["std"] * self._normal(out))
        if func is Tensor.cauchy_:
            return p["median"] + p["sigma"] * torch.tan(math.pi * (self._uniform(out, True, 53) - 0.5))
        if func is Tensor.random_ and p["to"] is not None:
            low = 0 if p["from"] is None else p["from"]
            return (self._uniform(out, bits=53) * (p["to"] - low)).floor() + low
        return None

    def _rowwise(self, func, args: tuple, kwargs: dict) -> Tensor | None:
        r"""Runs a rejection sampler row by row, each row with its own seeded generator."""

        n = self.size
        if func in (torch.multinomial, torch._sample_dirichlet):  # (B, ..., K) inputs
            if args[0].ndim < 2 or args[0].shape[0] != n:
                return None
            rows = [(args[0][i], *args[1:]) for i in range(n)]
        else:
            tensors = [a for a in args if isinstance(a, Tensor)]
            shape = torch.broadcast_shapes(*(t.shape for t in tensors))
            if len(shape) == 0 or shape[0] != n:
                return None
            expanded = [a.expand(shape) if isinstance(a, Tensor) else a for a in args]
            rows = [tuple(a[i] if isinstance(a, Tensor) else a for a in expanded) for i in range(n)]
        seeds = self._words(1)[:, 0] >> np.uint64(1)
        generator = torch.Generator(device=args[0].device)
        out = []
        for seed, row in zip(seeds.tolist(), rows):
            generator.manual_seed(seed)
            out.append(func(*row, generator=generator, **kwargs))
        return torch.stack(out)

    def _unattributed(self, func, args: tuple, kwargs: dict) -> Tensor:
        self.unattributed = True
        with torch.random.fork_rng(devices=[]):
            if self.fallback is None:
                torch.manual_seed(self.fallback_seed)
            else:
                torch.set_rng_state(self.fallback)
            out = func(*args, **kwargs)
            self.fallback = torch.get_rng_state()
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _RANDOM or kwargs.get("generator") is not None:
            return func(*args, **kwargs)
        if func in _ROWWISE:
            out = self._rowwise(func, args, kwargs)
            return out if out is not None else self._unattributed(func, args, kwargs)
        if func in _INPLACE:
            target = args[0]
            if target.ndim == 0 or target.shape[0] != self.size:
                return self._unattributed(func, args, kwargs)
            values = self._values(func, args, kwargs, target)
            if values is None:
                return self._unattributed(func, args, kwargs)
            with torch.no_grad():
                return target.copy_(values)
        # A template gives the output's shape, dtype and device for any signature;
        # its values are replaced.
        if func in (torch.rand, torch.randn):
            out = torch.empty(*args, **kwargs)
        elif func in (torch.rand_like, torch.randn_like):
            out = torch.empty_like(*args, **kwargs)
        else:
            out = func(*args, generator=self.scratch, **kwargs)
        if func is torch.randperm or out.ndim == 0 or out.shape[0] != self.size:
            return self._unattributed(func, args, kwargs)
        values = self._values(func, args, kwargs, out).to(dtype=out.dtype, device=out.device)
        return values.requires_grad_() if out.requires_grad else values


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
