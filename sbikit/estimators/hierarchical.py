r"""The joint posterior of the global and local parameters of a mixed-effects model.

For a group of members :math:`X = (x_1, \dots, x_M)`,

.. math::
    p(Y_G, Y_{L1}, \dots, Y_{LM} | X) = p(Y_G | X) \prod_j p(Y_{Lj} | Y_G, x_j),

because, given the global parameters, the members and their locals are
independent of one another (this is what :class:`sbikit.MixedEffects` simulates).
:class:`HierarchicalNPE` learns both factors with NPE:

- :math:`p(Y_G | X)` with a set summary network over the members;
- :math:`p(Y_L | Y_G, x)`, one flow shared by all members, whose "observation" is
  the pair (global parameters in unconstrained space, the member's data), trained
  on the member rows of the simulations.

A joint draw is a global draw, then one local draw per member given it.
"""

__all__ = ["HierarchicalNPE", "HierarchicalPosterior"]

import torch
import torch.nn as nn

from collections.abc import Callable, Sequence
from torch import Size, Tensor
from torch.distributions import Distribution, constraints

from .. import _arviz
from .._checks import check_count
from ..data import Simulations
from ..models import MixedEffects
from ..posterior import AmortizedPosterior
from ..priors import SupportOnly, clamp_to_support
from ..runs.stream import member_rows, too_large
from ..train import TrainConfig
from .base import in_memory, training_data
from .npe import NPE, NPEPosterior

MAX_MEMBER_ROWS = 200_000  # member rows the local flow trains on, drawn at random beyond this


def _local_observations(transform, prior: Distribution, g: Tensor, x: Tensor) -> Tensor:
    r"""The local flow's observations: globals :math:`(*, G)` mapped to unconstrained space
    by ``transform.inv`` (those on a bound of ``prior``'s box just inside it), beside members
    :math:`(*, L)`; the batch shapes broadcast, giving :math:`(*, G + L)`."""

    u = transform.inv(clamp_to_support(g, prior).double()).float()
    batch = torch.broadcast_shapes(u.shape[:-1], x.shape[:-1])
    return torch.cat([u.expand(*batch, u.shape[-1]), x.to(u).expand(*batch, x.shape[-1])], dim=-1)


def _describe(constraint) -> tuple:
    r"""A constraint's type and bounds, comparable between instances."""

    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    bounds = [getattr(constraint, name, None) for name in ("lower_bound", "upper_bound")]
    values = tuple(
        None if b is None else tuple(torch.as_tensor(b, dtype=torch.float64).flatten().tolist()) for b in bounds
    )
    return type(constraint), values


def _local_support(model: MixedEffects, theta: Tensor, dim: int) -> SupportOnly:
    r"""The support of the locals, checked to be the same for several global parameters."""

    supports = [model.local_prior(g).support for g in theta[: min(len(theta), 16)].split(1)]
    first = _describe(supports[0])
    for other in supports[1:]:
        if _describe(other) != first:
            raise ValueError(
                "the support of local_prior(g) changes with the global parameters g "
                f"({supports[0]} and {other}); HierarchicalNPE needs locals whose support does not "
                "depend on g (reparametrize them, for example as a fraction of a global bound)."
            )
    return SupportOnly(_unbatched(supports[0], dim), dim)


def _unbatched(constraint, dim: int):
    r"""The support of one row: a constraint evaluated for a batch of one global parameter
    holds bounds of shape (1, K) (or (1, 1)), which become bounds of shape (K,)."""

    base = constraint
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    names = [n for n in ("lower_bound", "upper_bound") if isinstance(getattr(base, n, None), Tensor)]
    if not names:
        return constraint
    bounds = {}
    for name in ("lower_bound", "upper_bound"):
        value = getattr(base, name, None)
        if value is not None:
            value = torch.as_tensor(value, dtype=torch.float32).flatten()
            bounds[name] = value.expand(dim).clone() if value.numel() == 1 else value
    if isinstance(base, constraints.interval):
        rebuilt = constraints.interval(bounds["lower_bound"], bounds["upper_bound"])
    elif isinstance(base, constraints.greater_than):
        rebuilt = constraints.greater_than(bounds["lower_bound"])
    elif isinstance(base, constraints.less_than):
        rebuilt = constraints.less_than(bounds["upper_bound"])
    else:
        return constraint
    return constraints.independent(rebuilt, 1)


class HierarchicalPosterior(AmortizedPosterior):
    r"""The joint posterior of global and local parameters, trained by :class:`HierarchicalNPE`.

    ``sample`` and ``log_prob`` concern the global parameters, as for
    :class:`sbikit.NPEPosterior`; ``sample_joint`` draws the locals of every member too.

    Arguments:
        global_posterior: :math:`p(Y_G | X)`, over sets of members.
        local_posterior: :math:`p(Y_L | Y_G, x)`, whose observation is the global
            parameters in unconstrained space followed by one member's data.
        local_names: A name per local parameter.
    """

    kind = "HierarchicalNPE"

    def __init__(self, global_posterior: NPEPosterior, local_posterior: NPEPosterior, local_names: Sequence[str]):
        self.global_posterior = global_posterior
        self.local_posterior = local_posterior
        self.prior = global_posterior.prior
        self.x_shape = global_posterior.x_shape
        self.structure = global_posterior.structure
        self.parameter_names = global_posterior.parameter_names
        self.local_names = list(local_names)
        self.network = nn.ModuleDict({"global": global_posterior.network, "local": local_posterior.network})
        self.x_range = global_posterior.x_range  # the group is checked once, not the locals' contexts
        local_posterior.x_range = None
        self.global_transform = global_posterior.transform

    @property
    def history(self) -> dict:
        return {"global": self.global_posterior.history, "local": self.local_posterior.history}

    @history.setter
    def history(self, value: dict) -> None:
        self.global_posterior.history = value.get("global", {})
        self.local_posterior.history = value.get("local", {})

    def distribution(self, x: Tensor) -> Distribution:
        return self.global_posterior.distribution(x)

    def _context(self, g: Tensor, x: Tensor) -> Tensor:
        r"""The local flow's observations for globals :math:`(n, G)` and one group :math:`(M, L)`:
        :math:`(n, M, G + L)`."""

        return _local_observations(self.global_transform, self.prior, g.unsqueeze(-2), x)

    def _group(self, x: object, caller: str) -> Tensor:
        r"""Checks one group of members :math:`(M, L)`, once, and puts it on the network's device."""

        x, batch = self._x(x)
        if batch != Size():
            raise ValueError(f"{caller} takes one group of members (M, L), got shape {tuple(x.shape)}.")
        return x

    def _sample_joint(self, num_samples: int, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            g = self.distribution(x).sample((num_samples,))
        context = self._context(g, x.cpu())  # (n, M, G + L)
        local = self.local_posterior.sample(1, x=context.reshape(-1, context.shape[-1]))[0]
        return g, local.reshape(num_samples, x.shape[0], -1)

    def sample_joint(self, num_samples: int, x: object) -> tuple[Tensor, Tensor]:
        r"""Draws global parameters and every member's locals jointly.

        Arguments:
            num_samples: The number of joint draws :math:`n`.
            x: One group of members :math:`(M, L)`.

        Returns:
            The global draws :math:`(n, G)` and the local draws :math:`(n, M, K)`.
        """

        num_samples = check_count(num_samples, "num_samples")
        return self._sample_joint(num_samples, self._group(x, "sample_joint"))

    def log_prob_joint(self, theta: object, theta_local: object, x: object) -> Tensor:
        r"""Evaluates :math:`\log p(Y_G | X) + \sum_j \log p(Y_{Lj} | Y_G, x_j)` for global
        parameters :math:`(n, G)`, locals :math:`(n, M, K)` and one group :math:`(M, L)`; :math:`(n,)`."""

        x = self._group(x, "log_prob_joint")
        theta = torch.as_tensor(theta, dtype=torch.float32)
        theta_local = torch.as_tensor(theta_local, dtype=torch.float32)
        k = len(self.local_names)
        if theta.ndim != 2 or theta_local.shape != (len(theta), x.shape[0], k):
            raise ValueError(
                f"theta must be (n, {self.theta_dim}) and theta_local (n, {x.shape[0]}, {k}) for {x.shape[0]} "
                f"members; got {tuple(theta.shape)} and {tuple(theta_local.shape)}."
            )
        with torch.no_grad():
            log_global = self.distribution(x).log_prob(theta)
        context = self._context(theta, x.cpu()).reshape(-1, self.theta_dim + x.shape[-1])
        log_local = self.local_posterior.log_prob(theta_local.reshape(-1, k), x=context)
        return log_global + log_local.reshape(len(theta), x.shape[0]).sum(-1)

    def to_arviz(self, x: object, num_samples: int = 1000, num_chains: int = 4):
        r"""Draws the joint posterior for one group into an arviz InferenceData; the locals
        carry a "member" dimension. The i.i.d. draws are split into ``num_chains`` chains."""

        num_samples = check_count(num_samples, "num_samples")
        num_chains = check_count(num_chains, "num_chains")
        if num_samples % num_chains:
            raise ValueError(f"num_samples ({num_samples}) must be a multiple of num_chains ({num_chains}).")
        x = self._group(x, "to_arviz")
        g, local = self._sample_joint(num_samples, x)
        return _arviz.members_to_inference_data(
            g.reshape(num_chains, -1, g.shape[-1]).numpy(),
            self.parameter_names,
            local.reshape(num_chains, -1, *local.shape[1:]).numpy(),
            self.local_names,
            x.cpu().numpy(),
            attrs={"inference": self.kind},
        )

    def config(self) -> dict:
        return {
            "global": self.global_posterior.config(),
            "local": self.local_posterior.config(),
            "local_names": self.local_names,
        }

    @classmethod
    def from_config(
        cls,
        config: dict,
        prior: Distribution | None = None,
        summary: nn.Module | None = None,
        flow: Callable | None = None,
        local_flow: Callable | None = None,
    ) -> "HierarchicalPosterior":
        global_posterior = NPEPosterior.from_config(config["global"], prior=prior, summary=summary, flow=flow)
        local_posterior = NPEPosterior.from_config(config["local"], flow=local_flow)
        return cls(global_posterior, local_posterior, config["local_names"])

    def __repr__(self) -> str:
        return (
            f"HierarchicalPosterior(prior={self.prior!r}, parameter_names={self.parameter_names}, "
            f"local_names={self.local_names})"
        )


class HierarchicalNPE:
    r"""Learns the joint posterior of global and local parameters of a :class:`sbikit.MixedEffects` model.

    Arguments:
        model: The mixed-effects model that simulated the data.
        summary: The set summary network of the global posterior (a :class:`sbikit.nn.DeepSet`
            by default).
        flow: The flow builder of the global posterior.
        local_flow: The flow builder of the local posterior.
        training: The training settings of both.
        local_names: A name per local parameter (``local_0``, ... by default).
        max_member_rows: The most member rows the local flow trains on; beyond it,
            a random subset (seeded by ``training.seed``).

    Example:
        >>> from torch.distributions import Normal, Independent
        >>> model = sbikit.MixedEffects(
        ...     global_prior=sbikit.BoxUniform(-torch.ones(1), torch.ones(1)),
        ...     local_prior=lambda g: Independent(Normal(g, 1.0), 1),
        ...     member_simulator=lambda g, l: l + 0.1 * torch.randn_like(l),
        ...     num_members=(2, 5),
        ... )
        >>> data = sbikit.simulate(model, 200, seed=0)
        >>> joint = sbikit.HierarchicalNPE(model, training=sbikit.TrainConfig(max_epochs=2)).fit(data)
        >>> g, l = joint.sample_joint(10, x=torch.zeros(3, 1))
        >>> g.shape, l.shape
        (torch.Size([10, 1]), torch.Size([10, 3, 1]))
    """

    def __init__(
        self,
        model: MixedEffects,
        summary: nn.Module | None = None,
        flow: Callable | None = None,
        local_flow: Callable | None = None,
        training: TrainConfig | None = None,
        local_names: Sequence[str] | None = None,
        max_member_rows: int = MAX_MEMBER_ROWS,
    ) -> None:
        if not isinstance(model, MixedEffects):
            raise TypeError(f"model must be a sbikit.MixedEffects, got {type(model).__name__}.")
        self.model = model
        self.training = training if training is not None else TrainConfig()
        self.global_npe = NPE(
            model.global_prior, summary=summary, flow=flow, training=self.training,
            parameter_names=model.parameter_names,
        )
        self.local_flow = local_flow
        self.local_names = None if local_names is None else list(local_names)
        self.max_member_rows = check_count(max_member_rows, "max_member_rows")

    def fit(self, data: Simulations) -> HierarchicalPosterior:
        r"""Trains both factors on mixed-effects simulations (``sbikit.simulate(model, ...)``), in
        memory or in a store (:func:`sbikit.open_store`). A store too large for memory is not
        read whole: the global factor streams it as :class:`NPE` does, and the local factor
        trains on ``max_member_rows`` members drawn from it one shard at a time."""

        if not too_large(data):
            data = in_memory(data)
        rows = None
        if getattr(data, "structure", None) == "set":
            if isinstance(data, Simulations):
                data = training_data(self.model.global_prior, data)  # once: the global fit gets clean rows
            rows = member_rows(data, self.max_member_rows, self.training.seed)
        if rows is None or rows[2] is None:
            raise TypeError(
                "HierarchicalNPE needs mixed-effects simulations with local parameters: "
                "data = sbikit.simulate(model, num_simulations, seed=...)."
            )
        theta, x, local = rows
        global_posterior = self.global_npe.fit(data)
        k = local.shape[-1]
        names = self.local_names or [f"local_{i}" for i in range(k)]
        if len(names) != k:
            raise ValueError(f"local_names has {len(names)} names for {k} local parameters.")
        support = _local_support(self.model, data.theta, k)
        observations = _local_observations(global_posterior.transform, global_posterior.prior, theta, x)
        members = Simulations(theta=local, x=observations)
        # mapped: a joint density would need each member's mass inside the box
        local_npe = NPE(support, flow=self.local_flow, training=self.training, parameter_names=names, bounds="map")
        local_posterior = local_npe.fit(members)
        return HierarchicalPosterior(global_posterior, local_posterior, names)
