r"""Neural posterior estimation (NPE).

NPE fits a conditional flow :math:`q_\phi(\theta | s_\psi(x))` to pairs
:math:`(\theta_i, x_i) \sim p(\theta) p(x | \theta)` by minimizing

.. math:: \mathcal{L}(\phi, \psi) = -\mathbb{E}_{p(\theta, x)} \log q_\phi(\theta | s_\psi(x)),

which equals :math:`\mathbb{E}_{p(x)} \mathrm{KL}(p(\theta | x) \| q_\phi(\theta | x))`
up to a constant, so the minimizer is the posterior for every :math:`x` at once
(amortized inference). The flow works on :math:`u = (T^{-1}(\theta) - \mu) / \sigma`,
where :math:`T` maps unconstrained space onto the prior's support and
:math:`\mu, \sigma` standardize; the summary network :math:`s_\psi` sees
standardized :math:`x` and is trained jointly with the flow.
"""

__all__ = ["NPE", "NPEPosterior"]

import copy
import torch
import torch.nn as nn
import warnings

from collections.abc import Callable, Sequence
from torch import Size, Tensor
from torch.distributions import Distribution

from .. import io
from ..data import Simulations
from ..errors import FormatError
from ..flows import coupling_flow
from ..nn import MLP
from ..posterior import Posterior, SupportFlow
from ..priors import check_prior, in_support, to_unconstrained
from ..train import TrainConfig, fit

_MIN_SCALE = 1e-8


def _default_summary(x_shape: Size) -> nn.Module:
    return MLP(list(x_shape), out_features=32, hidden_features=(128, 128))


def _summary_features(summary: nn.Module, x_shape: Size) -> int:
    probe = torch.zeros(2, *x_shape)
    with torch.no_grad():
        out = summary(probe)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"summary must map observations (B, {', '.join(map(str, x_shape))}) to summaries (B, F); "
            f"for B = 2 it returned {shape}."
        )
    return out.shape[1]


def _standardize(values: Tensor) -> tuple[Tensor, Tensor]:
    loc = values.double().mean(0)
    scale = values.double().std(0) if len(values) > 1 else torch.ones_like(loc)
    scale = torch.where(scale > _MIN_SCALE, scale, torch.ones_like(scale))
    return loc.float(), scale.float()


class NPEPosterior(Posterior):
    r"""A posterior trained by :class:`NPE`: a summary network and a conditional flow.

    ``forward(x)`` returns :math:`p(\theta | x)` as a distribution with batch shape
    :math:`(*)` for observations :math:`(*, *x\_shape)`.
    """

    kind = "NPE"

    def __init__(
        self,
        prior: Distribution,
        x_shape: Sequence[int],
        summary: nn.Module,
        flow: Callable,
        parameter_names: Sequence[str],
        specs: dict,
    ) -> None:
        super().__init__()
        self.prior = prior
        self.transform = to_unconstrained(prior)
        self.x_shape = Size(x_shape)
        features = self.transform.inverse_shape(prior.event_shape)[-1]
        self.summary = summary
        self.flow = flow(features, _summary_features(summary, self.x_shape))
        self.register_buffer("theta_loc", torch.zeros(features))
        self.register_buffer("theta_scale", torch.ones(features))
        self.register_buffer("x_loc", torch.zeros(self.x_shape))
        self.register_buffer("x_scale", torch.ones(self.x_shape))
        self.parameter_names = list(parameter_names)
        self.specs = specs
        self.history: dict = {}

    def embed(self, x: Tensor) -> Tensor:
        r"""Summarizes observations :math:`(*, *x\_shape) \to (*, F)`."""

        batch = x.shape[: x.ndim - len(self.x_shape)]
        z = ((x - self.x_loc) / self.x_scale).reshape(-1, *self.x_shape)
        return self.summary(z).reshape(*batch, -1)

    def unconstrain(self, theta: Tensor) -> Tensor:
        r"""Maps parameters :math:`(*, D)` to the flow's standardized space."""

        u = self.transform.inv(theta.double().cpu())
        return ((u - self.theta_loc.cpu().double()) / self.theta_scale.cpu().double()).float()

    def loss(self, u: Tensor, x: Tensor) -> Tensor:
        r"""Returns :math:`-\log q(u | x)`, :math:`(B,)`, for standardized :math:`u`."""

        return -self.flow(self.embed(x)).log_prob(u)

    def forward(self, x: Tensor) -> Distribution:
        return SupportFlow(self.flow(self.embed(x)), self.theta_loc, self.theta_scale, self.transform, self.prior)

    def config(self) -> dict:
        return {
            "x_shape": list(self.x_shape),
            "parameter_names": self.parameter_names,
            **self.specs,
            "history": self.history,
        }

    @classmethod
    def from_config(
        cls,
        config: dict,
        prior: Distribution | None = None,
        summary: nn.Module | None = None,
        flow: Callable | None = None,
    ) -> "NPEPosterior":
        specs = {k: config[k] for k in ("prior", "summary", "flow", "training")}
        for name, given, spec in (("prior", prior, specs["prior"]), ("summary", summary, specs["summary"]),
                                  ("flow", flow, specs["flow"])):
            if given is None and spec is None:
                raise FormatError(
                    f"this posterior was trained with a custom {name}, which is not rebuilt by name; "
                    f"pass it: sbikit.load(path, {name}=...)."
                )
        prior = check_prior(prior) if prior is not None else io.prior_from_spec(specs["prior"])
        x_shape = Size(config["x_shape"])
        summary = summary if summary is not None else io.build(specs["summary"])
        builder = flow if flow is not None else (lambda f, c: io.build(specs["flow"], f, c))
        posterior = cls(prior, x_shape, summary, builder, config["parameter_names"], specs)
        posterior.history = config.get("history", {})
        return posterior


class NPE:
    r"""Neural posterior estimation: learns :math:`p(\theta | x)` from simulations.

    Arguments:
        prior: The prior, a distribution over :math:`(D,)` with a support.
        summary: A summary network :math:`(B, *x\_shape) \to (B, F)`, trained
            jointly with the flow. Defaults to an :class:`sbikit.nn.MLP`.
        flow: A flow builder ``flow(features, context)``. Defaults to
            :func:`sbikit.flows.coupling_flow` (spline coupling).
        training: The training settings. Defaults to :class:`TrainConfig()`.
        parameter_names: A name per parameter, for ``to_arviz`` and plots.

    Example:
        >>> prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> data = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 200, seed=0)
        >>> posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=2)).fit(data)
        >>> posterior.sample(5, x=torch.zeros(2)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        prior: Distribution,
        *,
        summary: nn.Module | None = None,
        flow: Callable | None = None,
        training: TrainConfig | None = None,
        parameter_names: Sequence[str] | None = None,
    ) -> None:
        self.prior = check_prior(prior)
        dim = self.prior.event_shape[0]
        if summary is not None and not isinstance(summary, nn.Module):
            raise TypeError(f"summary must be a torch.nn.Module, got {type(summary).__name__}.")
        if flow is not None and not callable(flow):
            raise TypeError(f"flow must be a builder flow(features, context), got {type(flow).__name__}.")
        if training is not None and not isinstance(training, TrainConfig):
            raise TypeError(f"training must be a sbikit.TrainConfig, got {type(training).__name__}.")
        names = list(parameter_names) if parameter_names is not None else [f"theta_{i}" for i in range(dim)]
        if len(names) != dim or len(set(names)) != dim or not all(isinstance(n, str) for n in names):
            raise ValueError(f"parameter_names must be {dim} distinct strings, got {names!r}.")
        self.summary = summary
        self.flow = flow if flow is not None else coupling_flow
        self.training = training if training is not None else TrainConfig()
        self.parameter_names = names

    def fit(self, data: Simulations) -> NPEPosterior:
        r"""Trains a posterior on ``data``; rows with non-finite values are excluded."""

        if not isinstance(data, Simulations):
            raise TypeError(
                f"data must be sbikit.Simulations, got {type(data).__name__}; wrap tensors as "
                "sbikit.Simulations(theta=theta, x=x)."
            )
        dim = self.prior.event_shape[0]
        if data.theta.shape[1] != dim:
            raise ValueError(
                f"data.theta has shape {tuple(data.theta.shape)} but the prior has {dim} dimensions; "
                f"pass theta of shape (N, {dim})."
            )
        if data.num_invalid:
            warnings.warn(
                f"excluding {data.num_invalid} of {len(data)} simulations with NaN or inf values from training.",
                RuntimeWarning,
                stacklevel=2,
            )
            data = data.dropna()
        outside = ~in_support(self.prior, data.theta)
        if outside.any():
            row = int(outside.nonzero()[0])
            raise ValueError(
                f"{int(outside.sum())} rows of theta lie outside the prior's support (row {row}: "
                f"{data.theta[row].tolist()}); train on parameters drawn from this prior."
            )
        if len(data) < 2:
            raise ValueError(f"need at least 2 valid simulations to train, got {len(data)}.")

        config = self.training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            summary = copy.deepcopy(self.summary) if self.summary is not None else _default_summary(data.x_shape)
            specs = {
                "prior": io.prior_spec(self.prior),
                "summary": io.module_spec(summary),
                "flow": io.builder_spec(self.flow),
                "training": config.to_dict(),
            }
            posterior = NPEPosterior(self.prior, data.x_shape, summary, self.flow, self.parameter_names, specs)
            for (loc, scale), values in (
                ((posterior.theta_loc, posterior.theta_scale), posterior.transform.inv(data.theta.double())),
                ((posterior.x_loc, posterior.x_scale), data.x),
            ):
                mean, std = _standardize(values)
                loc.copy_(mean)
                scale.copy_(std)
            u = posterior.unconstrain(data.theta)
            if not bool(torch.isfinite(u).all()):
                raise ValueError("some theta lie on the boundary of the prior's support, where they cannot be mapped.")
            posterior.history = fit(posterior, (u, data.x), config)
        return posterior
