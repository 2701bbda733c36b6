r"""Conditional normalizing flows built from zuko's blocks.

A flow builder is any callable ``builder(features, context) -> zuko.lazy.Flow``
(more generally a :class:`zuko.lazy.LazyDistribution`). The defaults here are
coupling flows, whose sampling and density are each one pass through the
network. zuko's autoregressive flows fit the same slot: pass ``zuko.flows.MAF``
or ``functools.partial(zuko.flows.NSF, transforms=5)``.
"""

__all__ = [
    "coupling_flow",
    "affine_coupling_flow",
    "start_at_identity",
    "start_couplings_without_context",
    "train_location_only",
]

import contextlib
import math
import torch
import torch.nn.functional as F
import zuko.nn

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from torch import Tensor
from torch.distributions import Transform
from zuko.distributions import DiagNormal
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.flows.gaussianization import ElementWiseTransform
from zuko.lazy import Flow, UnconditionalDistribution, UnconditionalTransform
from zuko.transforms import DependentTransform, MonotonicAffineTransform, MonotonicRQSTransform, PermutationTransform
from zuko.utils import unpack


class _SplineTransform(MonotonicRQSTransform):
    r"""zuko's :class:`~zuko.transforms.MonotonicRQSTransform`, the same function of the
    same parameters, with fewer passes over memory to build the knots.

    The bins' softmax is written out (torch's softmax over a few bins is several
    times slower on a CPU), without subtracting a maximum: the widths and heights are
    soft-bounded first, :math:`|v| < |\log s| / 2`, so :math:`e^v` cannot overflow. The
    cumulative sum's last entry is the softmax's normalizer. Sampling a flow builds
    this once per sample and layer (a quarter less time than zuko's, spline included).
    """

    def __init__(self, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float = 5.0,
                 slope: float = 1e-3, **kwargs) -> None:
        Transform.__init__(self, **kwargs)
        log_slope = math.log(slope)
        widths = widths / (1 + abs(2 * widths / log_slope))
        heights = heights / (1 + abs(2 * heights / log_slope))
        derivatives = derivatives / (1 + abs(derivatives / log_slope))
        self.horizontal = self._knots(widths, bound)
        self.vertical = self._knots(heights, bound)
        self.derivatives = F.pad(torch.exp(derivatives), (1, 1), value=1.0)

    @staticmethod
    def _knots(sizes: Tensor, bound: float) -> Tensor:
        cumulative = torch.cumsum(torch.exp(sizes), dim=-1)
        return F.pad(cumulative * ((2 * bound) / cumulative[..., -1:]), (1, 0)) - bound


_ONEDNN: list[bool] = []  # whether torch's oneDNN linear kernel works here: found on first use


def _onednn_linear_works() -> bool:
    r"""Whether ``torch.ops.mkldnn._linear_pointwise`` exists and agrees with
    :func:`torch.nn.functional.linear`, ReLU fused and not; checked once per process."""

    if not _ONEDNN:
        try:
            generator = torch.Generator().manual_seed(0)
            x, weight, bias = (torch.randn(shape, generator=generator) for shape in ((4, 3, 5), (7, 5), (7,)))
            with torch.no_grad():
                expected = F.linear(x, weight, bias)
                works = torch.backends.mkldnn.is_available() and all(
                    torch.allclose(torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], ""), want,
                                   rtol=1e-5, atol=1e-5)
                    for attr, want in (("none", expected), ("relu", F.relu(expected)))
                )
        except (AttributeError, RuntimeError, NotImplementedError):
            works = False
        _ONEDNN.append(bool(works))
    return _ONEDNN[0]


def _plain_linear(layer: torch.nn.Module) -> bool:
    r"""Whether ``layer`` is one linear map with a bias (torch's or zuko's, unstacked)."""

    return (
        type(layer) in (torch.nn.Linear, zuko.nn.Linear)
        and layer.weight.dim() == 2
        and layer.bias is not None
    )


def _linear(h: Tensor, layer: torch.nn.Module, relu: bool) -> Tensor:
    r"""``layer(h)``, then a ReLU if ``relu``, without gradients.

    On a CPU, torch's oneDNN kernel (the one ``torch.compile`` uses) computes this
    several times faster than :func:`~torch.nn.functional.linear` on the tall, narrow
    matrices of sampling: for 32,000 samples of 64 features, 1.4 ms for a 64 x 64
    layer with its ReLU against 9.8 ms, and 0.7 ms against 2.2 ms for the spline's
    23 parameters, with the same values. Elsewhere (another device or dtype, a
    torch without the kernel) it is ``layer(h)``.
    """

    if h.device.type == "cpu" and h.dtype == torch.float32 and _onednn_linear_works():
        return torch.ops.mkldnn._linear_pointwise(h.contiguous(), layer.weight, layer.bias,
                                                  "relu" if relu else "none", [], "")
    h = layer(h)
    return F.relu(h, inplace=True) if relu else h


class _ContextCoupling(GeneralCouplingTransform):
    r"""zuko's :class:`~zuko.flows.coupling.GeneralCouplingTransform`, with the same
    parameters and the same function, evaluated more cheaply when many samples share
    one context.

    zuko concatenates the context to every sample before the conditioner's first
    linear layer. Here that layer is split, :math:`W [x_a; c] + b = W_a x_a + (W_c c + b)`,
    and the context's share is computed once per context and broadcast over the
    samples: no copy of the context per sample, and a first layer that costs
    :math:`|x_a|` instead of :math:`|x_a| + |c|` per sample.
    """

    def meta(self, c: Tensor | None, x: Tensor) -> Transform:
        if c is None:
            return super().meta(c, x)
        first, *rest = self.hyper
        features_a = x.shape[-1]
        h = F.linear(c, first.weight[:, features_a:], first.bias)
        if features_a == 1:
            # an outer product: one fused multiply-add instead of a matrix product. Its
            # weight column is made contiguous first: read with the weight's stride,
            # torch's kernel took 5x longer
            h = torch.addcmul(h, x, first.weight[:, 0].contiguous())
        else:
            h = F.linear(x, first.weight[:, :features_a]) + h
        if torch.is_grad_enabled():
            for layer in rest:
                h = layer(h)
        else:  # sampling or densities without gradients: faster kernels, no fresh buffer per ReLU
            h = self._conditioner_without_grad(h, rest)
        phi = unpack(h.unflatten(-1, (-1, self.total)), self.shapes)
        return DependentTransform(self.univariate(*phi), 1)

    @staticmethod
    def _conditioner_without_grad(h: Tensor, layers: list[torch.nn.Module]) -> Tensor:
        i = 0
        while i < len(layers):
            layer = layers[i]
            if _plain_linear(layer):
                relu = i + 1 < len(layers) and type(layers[i + 1]) is torch.nn.ReLU
                h = _linear(h, layer, relu)
                i += 2 if relu else 1
            else:
                h = F.relu(h, inplace=True) if type(layer) is torch.nn.ReLU else layer(h)
                i += 1
        return h


def start_at_identity(flow: torch.nn.Module) -> torch.nn.Module:
    r"""Zeroes the output layer of every conditioner in ``flow``, in place, and returns it.

    zuko's coupling, autoregressive and element-wise transforms (and this module's)
    keep their conditioner in ``hyper``; with its output layer zeroed, a spline or
    monotonic affine transform is the identity, so the flow starts as its base
    distribution whatever the context, and gradients still reach every weight from
    the first step. Transforms without a ``hyper`` conditioner are left as they are.

    Example:
        >>> flow = start_at_identity(coupling_flow(2, 3))
        >>> x = torch.randn(5, 2)
        >>> torch.allclose(flow(torch.randn(3)).transform(x), x, atol=1e-6)
        True
    """

    with torch.no_grad():
        for module in flow.modules():
            hyper = getattr(module, "hyper", None)
            if isinstance(hyper, torch.nn.Sequential) and hasattr(hyper[-1], "weight"):
                hyper[-1].weight.zero_()
                if hyper[-1].bias is not None:
                    hyper[-1].bias.zero_()
    return flow


def start_couplings_without_context(flow: torch.nn.Module) -> torch.nn.Module:
    r"""Zeroes the context's weights in the first layer of every coupling conditioner in
    ``flow``, in place, and returns it.

    A coupling's conditioner reads :math:`[x_a; c]`; with the context's columns of its
    first layer zeroed, it starts as a function of :math:`x_a` alone, and the context
    enters the couplings only as far as training moves those weights away from zero.
    The element-wise layers, which read the context alone, keep their weights, so the
    context still sets the location and scale from the first step. Couplings are
    zuko's :class:`~zuko.flows.coupling.GeneralCouplingTransform` and its subclasses,
    this module's among them; other transforms are left as they are.

    :class:`sbikit.NLE` starts its flows this way: a simulator's noise often changes
    little with the parameters, and a coupling that reads them from the start learns
    a dependence on them from the noise of 10,000 simulations (see
    :class:`sbikit.estimators.nle.NLENetwork`).

    Example:
        >>> flow = start_couplings_without_context(coupling_flow(2, 3))
        >>> coupling = flow.transform.transforms[1]  # after the element-wise layer
        >>> first = coupling.hyper[0].weight  # its columns: x_a (1), then the context (3)
        >>> bool((first[:, 1:] == 0).all()), bool((first[:, :1] != 0).any())
        (True, True)
    """

    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, GeneralCouplingTransform) and isinstance(module.hyper, torch.nn.Sequential):
                first = module.hyper[0]
                if hasattr(first, "weight") and first.weight.dim() == 2:
                    first.weight[:, int(module.mask.sum()):].zero_()
    return flow


@contextlib.contextmanager
def train_location_only(flow: torch.nn.Module) -> Iterator[bool]:
    r"""Freezes every parameter of ``flow`` but those of its leading element-wise
    transforms while the block runs, and yields whether those have any to train.

    The leading element-wise transforms are the instances of zuko's
    :class:`~zuko.flows.gaussianization.ElementWiseTransform` that come first among the
    flow's transforms (on the side of the data), before any transform with parameters
    of another kind: in :func:`coupling_flow` and :func:`affine_coupling_flow`, the
    conditional location and scale that the couplings read their input from. The
    element-wise map on the base side is not among them: trained together, the two
    would share the scale in any proportion, and the couplings would see their input
    at a scale other than the one they start at. Parameters frozen before the block
    stay frozen after it; the others are trainable again, even if the block raises.

    :class:`sbikit.NLE` trains its flow's location and scale this way before the whole
    flow (see :meth:`sbikit.NLE.fit`).

    Example:
        >>> flow = coupling_flow(2, 3)
        >>> first = flow.transform.transforms[0]  # the conditional location and scale
        >>> with train_location_only(flow) as any_to_train:
        ...     trained = {id(p) for p in flow.parameters() if p.requires_grad}
        >>> any_to_train, trained == {id(p) for p in first.parameters()}
        (True, True)
        >>> all(p.requires_grad for p in flow.parameters())
        True
    """

    leading = []
    for transform in getattr(getattr(flow, "transform", None), "transforms", ()):
        if isinstance(transform, ElementWiseTransform):
            leading.append(transform)
        elif any(True for _ in transform.parameters()):
            break  # transforms without parameters (permutations) are passed over
    kept = {id(p) for transform in leading for p in transform.parameters() if p.requires_grad}
    frozen = [p for p in flow.parameters() if p.requires_grad and id(p) not in kept]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield bool(kept)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


class _ScaleAtTheBase(ElementWiseTransform):
    r"""A conditional element-wise affine map on the base side of a flow.

    A spline maps :math:`[-B, B]` onto itself, so a spline that narrows the centre
    of a posterior must widen its edges: left to the splines, a scale that varies
    with the context came out as a narrow core with heavy tails (on a 1-D Gaussian
    posterior, 0.1 to 0.5% of the draws beyond 6 sd, out to 30 sd). With an affine
    map on either side of the splines, the scale is carried by the affine maps and
    those tails went away (0 to 0.03%).

    It starts as the identity (its conditioner's output layer is zeroed), so
    training starts from the same function as without it. Files from before this
    layer existed have no weights for it; they load with it as the identity: the
    function they were trained as.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.identity()  # training starts from the flow without it

    def identity(self) -> None:
        r"""Zeroes the conditioner's output layer, which makes the map the identity."""

        with torch.no_grad():
            self.hyper[-1].weight.zero_()
            self.hyper[-1].bias.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not any(key.startswith(prefix) for key in state_dict):
            self.identity()
            for key, value in self.state_dict(prefix=prefix).items():
                state_dict[key] = value.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _coupling(
    features: int,
    context: int,
    transforms: int,
    hidden_features: Sequence[int],
    univariate: Callable[..., Transform],
    shapes: list[tuple[int, ...]],
) -> Flow:
    layers = []
    if context > 0:
        # A first conditional element-wise affine map carries the posterior's location
        # and scale, so the couplings only model the remaining shape (docs/design.md,
        # "Tails of the map of an interval", has the measurement).
        layers.append(
            ElementWiseTransform(
                features, context, univariate=MonotonicAffineTransform, shapes=[(), ()],
                hidden_features=tuple(hidden_features),
            )
        )
    for i in range(transforms):
        layers.append(
            _ContextCoupling(
                features,
                context,
                mask=torch.arange(features) % 2 == i % 2,
                univariate=univariate,
                shapes=shapes,
                hidden_features=tuple(hidden_features),
            )
        )
        if features > 2 and i < transforms - 1:
            layers.append(UnconditionalTransform(PermutationTransform, torch.randperm(features), buffer=True))
    if context > 0:
        layers.append(
            _ScaleAtTheBase(
                features, context, univariate=MonotonicAffineTransform, shapes=[(), ()],
                hidden_features=tuple(hidden_features),
            )
        )
    base = UnconditionalDistribution(DiagNormal, torch.zeros(features), torch.ones(features), buffer=True)
    return Flow(layers, base)


def coupling_flow(
    features: int,
    context: int,
    transforms: int = 3,
    bins: int = 8,
    hidden_features: Sequence[int] = (64, 64),
) -> Flow:
    r"""Builds a rational-quadratic spline coupling flow (the default).

    A conditional element-wise affine layer comes first; then each coupling layer
    transforms half of the features with monotonic rational-quadratic splines on
    :math:`[-5, 5]` whose knots are computed from the other half and the context;
    random permutations between layers mix the halves; a second conditional
    element-wise affine layer, on the base side, starts as the identity (see
    :class:`_ScaleAtTheBase`): with an affine map on both sides, the splines need
    not carry the posterior's scale.

    The defaults (3 couplings, conditioners of 64 × 64) are smaller than zuko's.
    Each step costs a fraction of the larger flow's, and where NPE's regression
    adjustment applies, the flow models a residual that is close to standard normal. Sharply curved
    posteriors may gain from more layers: ``functools.partial(coupling_flow,
    transforms=5)``.

    Arguments:
        features: The number of features :math:`D`.
        context: The number of context features :math:`F`.
        transforms: The number of coupling layers.
        bins: The number of spline bins.
        hidden_features: The hidden widths of each layer's conditioner.

    Example:
        >>> flow = coupling_flow(3, 4)
        >>> flow(torch.randn(4)).sample((10,)).shape
        torch.Size([10, 3])
    """

    spline = partial(_SplineTransform, bound=5.0)
    return _coupling(features, context, transforms, hidden_features, spline, [(bins,), (bins,), (bins - 1,)])


def affine_coupling_flow(
    features: int,
    context: int,
    transforms: int = 5,
    hidden_features: Sequence[int] = (128, 128),
) -> Flow:
    r"""Builds an affine coupling flow (RealNVP) with permutations between layers.

    Example:
        >>> flow = affine_coupling_flow(3, 4)
        >>> flow(torch.randn(4)).log_prob(torch.randn(3)).shape
        torch.Size([])
    """

    return _coupling(features, context, transforms, hidden_features, MonotonicAffineTransform, [(), ()])
