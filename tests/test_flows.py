r"""The flows' fast paths compute zuko's functions: same parameters, same densities and samples."""

import pytest
import torch
import zuko

from functools import partial
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.transforms import MonotonicRQSTransform

import sbikit
import sbikit.flows as flows


@pytest.mark.parametrize("features", [2, 3, 5])
@pytest.mark.parametrize("builder", ["spline", "affine"])
def test_fast_coupling_matches_zuko(features, builder, monkeypatch):
    context = 4
    if builder == "spline":
        make = partial(sbikit.coupling_flow, features, context)
    else:
        make = partial(sbikit.affine_coupling_flow, features, context)
    torch.manual_seed(0)
    fast = make()
    with torch.no_grad():  # weights away from zero, so every part of the conditioner matters
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    originals = (flows._ContextCoupling, flows._SplineTransform)
    try:
        flows._ContextCoupling = GeneralCouplingTransform
        flows._SplineTransform = MonotonicRQSTransform
        torch.manual_seed(0)
        slow = make()
    finally:
        flows._ContextCoupling, flows._SplineTransform = originals
    slow.load_state_dict(fast.state_dict())
    assert not any(isinstance(m, flows._ContextCoupling) for m in slow.modules())

    c = torch.randn(7, context)
    theta = torch.randn(11, 7, features)
    torch.testing.assert_close(fast(c).log_prob(theta), slow(c).log_prob(theta), rtol=1e-4, atol=1e-4)
    # one parameter vector per context, and many under one context
    torch.testing.assert_close(fast(c).log_prob(theta[0]), slow(c).log_prob(theta[0]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast(c[0]).log_prob(theta), slow(c[0]).log_prob(theta), rtol=1e-4, atol=1e-4)
    # without gradients the conditioner runs on torch's oneDNN kernel where it works,
    # and on the layers themselves where it does not: both compute zuko's function
    for kernel in sorted({False, flows._onednn_linear_works()}):
        monkeypatch.setattr(flows, "_ONEDNN", [kernel])
        with torch.no_grad():
            torch.testing.assert_close(fast(c).log_prob(theta), slow(c).log_prob(theta), rtol=1e-4, atol=1e-4)
            torch.manual_seed(1)
            a = fast(c).sample((13,))
            torch.manual_seed(1)
            b = slow(c).sample((13,))
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    monkeypatch.undo()
    # the same gradients, up to float32 rounding
    fast(c).log_prob(theta).sum().backward()
    slow(c).log_prob(theta).sum().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-3 * q.grad.abs().max(), name


@pytest.mark.parametrize("builder", [sbikit.coupling_flow, sbikit.affine_coupling_flow])
def test_weights_from_before_the_affine_at_the_base_load_as_the_identity(builder):
    # a flow saved before the base-side affine layer existed has no weights for it
    torch.manual_seed(0)
    flow = builder(3, 4)
    assert isinstance(flow.transform.transforms[-1], flows._ScaleAtTheBase)
    last = str(len(flow.transform.transforms) - 1)
    old = {k: v for k, v in flow.state_dict().items() if not k.startswith(f"transform.transforms.{last}.")}
    assert len(old) < len(flow.state_dict())

    torch.manual_seed(1)
    loaded = builder(3, 4)
    loaded.load_state_dict(old)  # strict: nothing missing, nothing unexpected
    c, theta = torch.randn(7, 4), torch.randn(5, 7, 3)
    with torch.no_grad():
        u = loaded.transform.transforms[-1](c)(theta)
        assert torch.equal(u, theta)
        del flow.transform.transforms[-1]  # the old architecture, with the saved weights
        flow.load_state_dict(old)
        torch.testing.assert_close(loaded(c).log_prob(theta), flow(c).log_prob(theta))
    # a complete state dict keeps its own weights for the layer
    full = builder(3, 4).state_dict()
    fresh = builder(3, 4)
    fresh.load_state_dict(full)
    assert all(torch.equal(full[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize(
    "builder",
    [sbikit.coupling_flow, sbikit.affine_coupling_flow, zuko.flows.MAF, partial(zuko.flows.NSF, transforms=2)],
)
def test_start_at_identity_gives_the_base_distribution(builder):
    torch.manual_seed(0)
    flow = flows.start_at_identity(builder(3, 4))
    c, x = torch.randn(7, 4), 3 * torch.randn(11, 7, 3)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(flow(c).log_prob(x), standard, rtol=1e-5, atol=1e-5)
    # and it trains: the zeroed output layers get gradients
    flow(c).log_prob(x + 1).sum().backward()
    zeroed = [m.hyper[-1] for m in flow.modules() if isinstance(getattr(m, "hyper", None), torch.nn.Sequential)]
    assert zeroed and all(float(layer.weight.grad.abs().sum()) > 0 for layer in zeroed)


@pytest.mark.parametrize("builder", [sbikit.coupling_flow, sbikit.affine_coupling_flow, zuko.flows.MAF])
def test_train_location_only_freezes_the_rest_while_the_block_runs(builder):
    flow = builder(3, 4)
    first = flow.transform.transforms[0]
    # the data side's element-wise layer; not the one at the base, nor zuko's MAF, which has none
    location = set() if builder is zuko.flows.MAF else {id(p) for p in first.parameters()}
    flow.transform.transforms[1].hyper[0].bias.requires_grad_(False)  # frozen before: stays frozen
    before = {id(p): p.requires_grad for p in flow.parameters()}
    with flows.train_location_only(flow) as any_to_train:
        trained = {id(p) for p in flow.parameters() if p.requires_grad}
        if location:  # a step of training moves the location and scale only
            flow(torch.randn(4)).log_prob(torch.randn(5, 3)).sum().backward()
            assert all((p.grad is not None) == (id(p) in location) for p in flow.parameters())
    assert any_to_train == bool(location) and trained == location
    assert {id(p): p.requires_grad for p in flow.parameters()} == before
    # and an error inside the block leaves the flow as it was
    with pytest.raises(RuntimeError, match="inside"):
        with flows.train_location_only(flow):
            raise RuntimeError("inside")
    assert {id(p): p.requires_grad for p in flow.parameters()} == before
