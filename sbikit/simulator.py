r"""A user's simulator with its calling convention, and optionally its prior.

A simulator is a function of parameters that returns observations. How it is called is
part of it: on one parameter vector or a batch, on tensors or numpy arrays, with or without
a random generator handed to it. :class:`Simulator` carries that convention, so that every
function that runs the simulator (:func:`sbikit.simulate`, :func:`sbikit.diagnostics.ppc`,
:func:`sbikit.diagnostics.check`) calls it the same way.
"""

__all__ = ["Simulator"]

from collections.abc import Callable
from dataclasses import dataclass
from torch.distributions import Distribution

from .priors import check_prior


@dataclass(frozen=True)
class Simulator:
    r"""A simulator function, how to call it, and optionally its prior.

    Arguments:
        function: Observations from parameters: :math:`(B, D) \to (B, *x\_shape)` when
            ``batched``, else :math:`(D,) \to (*x\_shape)`; with ``rng``, a second argument,
            the random generator(s) (see below).
        prior: The prior, a distribution over :math:`(D,)` with a support; with it,
            ``sbikit.simulate(simulator, num_simulations)`` needs no prior.
        batched: Whether ``function`` takes a batch of parameter vectors.
        numpy: Whether ``function`` takes numpy arrays (float64) instead of tensors.
        rng: Whether ``function`` takes a second argument and draws its noise from it: a
            :class:`numpy.random.Generator` (with ``numpy=True``) or a :class:`torch.Generator`,
            one per simulation; a batched function gets a list with one per row.

    Raises:
        TypeError: If ``function`` is not callable, or an option is not a bool.
        ValueError: If ``prior`` is not a prior over vectors with a support.

    Example:
        >>> import numpy as np
        >>> def ricker_like(theta, rng):                # one parameter vector, numpy, its own generator
        ...     return rng.poisson(np.exp(theta[0]), size=5).astype(float)
        >>> prior = sbikit.BoxUniform(torch.zeros(1), torch.ones(1))
        >>> sim = sbikit.Simulator(ricker_like, prior, batched=False, numpy=True, rng=True)
        >>> sbikit.simulate(sim, 10, seed=0).x.shape
        torch.Size([10, 5])
    """

    function: Callable
    prior: Distribution | None = None
    batched: bool = True
    numpy: bool = False
    rng: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.function, Simulator):
            raise TypeError("function is already a sbikit.Simulator; pass it as it is.")
        if not callable(self.function):
            raise TypeError(f"function must be callable, got {type(self.function).__name__}.")
        for name in ("batched", "numpy", "rng"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.prior is not None:
            check_prior(self.prior)

    @property
    def options(self) -> dict:
        r"""The calling convention, as ``simulate``'s keywords: ``batched``, ``numpy`` and ``rng``."""

        return {"batched": self.batched, "numpy": self.numpy, "rng": self.rng}
