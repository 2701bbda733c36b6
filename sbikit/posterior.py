r"""Posteriors: the common surface of every trained estimator.

A :class:`Posterior` is a plain object that holds its trained weights in one
:class:`torch.nn.Module`, ``posterior.network``, and offers checked ``sample``,
``log_prob``, ``to_arviz`` and ``save``. Subclasses say how to draw and how to
evaluate the density; this module checks the arguments and shapes once for all.
"""

__all__ = ["Posterior", "SupportMappedDistribution"]

import abc
import math
import torch
import torch.nn as nn

from torch import Size, Tensor
from torch.distributions import Distribution, Transform, constraints

from ._checks import check_count, check_theta, check_x
from .priors import in_support, support_bounds


class SupportMappedDistribution(Distribution):
    r"""A distribution over standardized unconstrained vectors, mapped into the prior's support.

    With :math:`u \sim q(u | x)`, the parameters are :math:`\theta = T(\mu + \sigma u)`
    and :math:`\log p(\theta | x) = \log q(u | x) - \sum \log \sigma - \log |\det J_T|`.
    The map runs in float64 on the CPU and samples are kept strictly inside a
    box-shaped support, so they never leave it, whatever device the flow is on.

    Arguments:
        base: The distribution :math:`q(u | x)`, batch shape :math:`(*)`.
        loc: The standardization mean :math:`\mu`, :math:`(D,)`.
        scale: The standardization scale :math:`\sigma`, :math:`(D,)`.
        transform: The map :math:`T` from unconstrained space to the support.
        prior: The prior, whose support bounds the samples.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, base: Distribution, loc: Tensor, scale: Tensor, transform: Transform, prior) -> None:
        self.base = base
        self.device = loc.device
        self.loc = loc.detach().cpu().double()
        self.scale = scale.detach().cpu().double()
        self.transform = transform
        self.prior = prior
        # a point inside the support stands in for rows outside it, whose density is 0
        self.anchor = transform(torch.zeros(base.event_shape, dtype=torch.float64)).float()
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return self.prior.support

    def sample(self, sample_shape: Size = Size()) -> Tensor:
        with torch.no_grad():
            u = self.base.sample(sample_shape).cpu().double()
        theta = self.transform(self.loc + self.scale * u).float()
        bounds = support_bounds(self.prior)
        if bounds is not None:  # float rounding can land on a closed boundary
            lower, upper = (b.float() for b in bounds)
            theta = torch.maximum(theta, torch.nextafter(lower, upper))
            theta = torch.minimum(theta, torch.nextafter(upper, lower))
        return theta

    def log_prob(self, theta: Tensor) -> Tensor:
        theta = theta.cpu()
        inside = in_support(self.prior, theta)
        safe = torch.where(inside.unsqueeze(-1), theta, self.anchor.to(theta)).double()
        unconstrained = self.transform.inv(safe)
        jacobian = self.transform.log_abs_det_jacobian(unconstrained, safe)
        u = (unconstrained - self.loc) / self.scale
        log_q = self.base.log_prob(u.to(device=self.device, dtype=torch.float32)).cpu().double()
        log_p = log_q - self.scale.log().sum() - jacobian
        return torch.where(inside, log_p, -math.inf).float()


_SAMPLE_CHUNK = 2**15  # samples per call when sampling many observations


class Posterior(abc.ABC):
    r"""The surface shared by trained posteriors.

    A subclass sets ``prior``, ``x_shape``, ``parameter_names``, ``history`` and
    ``network`` (the :class:`torch.nn.Module` holding every trained weight), and
    provides:

    - ``distribution(x)``: :math:`p(\theta | x)` as a normalized
      :class:`~torch.distributions.Distribution` with batch shape :math:`(*)`, for
      checked observations :math:`(*, *x\_shape)` on the network's device;
    - ``config()`` and ``from_config(config, **components)``, for saving.

    Calling the posterior, ``posterior(x)``, returns ``distribution(x)`` for a
    checked ``x``.
    """

    kind = "posterior"
    network: nn.Module

    @abc.abstractmethod
    def distribution(self, x: Tensor) -> Distribution:
        r"""Returns :math:`p(\theta | x)` for checked observations on the network's device."""

    @abc.abstractmethod
    def config(self) -> dict:
        r"""Returns the JSON-able description that :meth:`from_config` rebuilds from."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: dict, **components) -> "Posterior":
        r"""Rebuilds an untrained posterior from :meth:`config`, with the components
        (prior, networks) that cannot be rebuilt by name."""

    @property
    def theta_dim(self) -> int:
        return self.prior.event_shape[0]

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> "Posterior":
        r"""Moves the network to ``device`` and returns the posterior."""

        self.network.to(device)
        return self

    def _x(self, x: object) -> tuple[Tensor, Size]:
        x, batch = check_x(x, self.x_shape, structure=getattr(self, "structure", None))
        return x.to(self.device), batch

    def __call__(self, x: object) -> Distribution:
        x, _ = self._x(x)
        return self.distribution(x)

    def sample(self, num_samples: int, x: object) -> Tensor:
        r"""Draws samples from :math:`p(\theta | x)`.

        Arguments:
            num_samples: The number of samples :math:`n` per observation.
            x: One observation :math:`(*x\_shape)` or a batch :math:`(m, *x\_shape)`.

        Returns:
            The samples, :math:`(n, D)` for one observation or :math:`(n, m, D)` for
            a batch, on the CPU.
        """

        num_samples = check_count(num_samples, "num_samples")
        x, batch = self._x(x)
        with torch.no_grad():
            if len(batch) != 1 or num_samples * batch[0] <= _SAMPLE_CHUNK:
                return self.distribution(x).sample((num_samples,))
            # many observations: chunks of observations keep the flow's intermediate
            # tensors small enough for the cache (about 2x the throughput on a CPU)
            step = max(1, _SAMPLE_CHUNK // num_samples)
            return torch.cat([self.distribution(part).sample((num_samples,)) for part in x.split(step)], dim=1)

    def log_prob(self, theta: object, x: object) -> Tensor:
        r"""Evaluates the normalized density :math:`\log p(\theta | x)`.

        Arguments:
            theta: Parameters :math:`(*, D)`; rows outside the prior's support get
                :math:`-\infty`.
            x: One observation :math:`(*x\_shape)` or a batch :math:`(m, *x\_shape)`,
                broadcast against the batch shape of ``theta``.

        Returns:
            The log-densities, with the broadcast batch shape, on the CPU.
        """

        theta = check_theta(theta, self.theta_dim)
        x, batch = self._x(x)
        try:
            torch.broadcast_shapes(theta.shape[:-1], batch)
        except RuntimeError:
            raise ValueError(
                f"theta has batch shape {tuple(theta.shape[:-1])} and x has batch shape {tuple(batch)}, "
                "which do not broadcast; pass theta (n, m, D) for a batch of m observations."
            ) from None
        with torch.no_grad():
            return self.distribution(x).log_prob(theta)

    def to_arviz(self, x: object, num_samples: int = 1000, num_chains: int = 4):
        r"""Samples :math:`p(\theta | x)` for one observation into an arviz InferenceData.

        The i.i.d. samples are split into ``num_chains`` chains, so that arviz's
        split-:math:`\hat{R}` and ESS apply. The InferenceData has a ``posterior``
        group with one variable per parameter and an ``observed_data`` group.
        """

        from . import _arviz

        num_samples = check_count(num_samples, "num_samples")
        num_chains = check_count(num_chains, "num_chains")
        if num_samples % num_chains:
            raise ValueError(
                f"num_samples ({num_samples}) must be a multiple of num_chains ({num_chains})."
            )
        x, batch = check_x(x, self.x_shape, structure=getattr(self, "structure", None))
        if batch != Size():
            raise ValueError(f"to_arviz takes one observation of shape {tuple(self.x_shape)}, got {tuple(x.shape)}.")
        samples = self.sample(num_samples, x).reshape(num_chains, -1, self.theta_dim)
        return _arviz.posterior_to_inference_data(
            samples.numpy(), self.parameter_names, x.numpy(), attrs={"inference": self.kind}
        )

    def save(self, path) -> None:
        r"""Writes the posterior to ``path`` atomically; :func:`sbikit.load` reads it back.

        The file holds a versioned JSON config and the network's ``state_dict``
        (see :mod:`sbikit.io`).
        """

        from .io import save

        save(self, path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prior={self.prior!r}, x_shape={tuple(self.x_shape)}, "
            f"parameter_names={self.parameter_names})"
        )
