r"""Summary networks for time series of any length.

Both networks take observations :math:`(B, T, L)` (:math:`T` time steps of
:math:`L` features, or :math:`(B, T)` for one feature; an irregular time grid is a
feature like any other) and an optional boolean ``mask`` :math:`(B, T)`, True
where a step was observed. Steps after the last observed one (padding) change
nothing. A step missing inside a
series is seen as missing (its values are zeroed and a mask channel says so).
"""

__all__ = ["GRUSummary", "ConvSummary"]

import torch
import torch.nn as nn

from torch import Tensor

from .sets import _mlp, presence_mask


def _with_mask_channel(x: Tensor, mask: Tensor) -> Tensor:
    return torch.cat([torch.where(mask.unsqueeze(-1), x, 0.0), mask.unsqueeze(-1).to(x.dtype)], dim=-1)


def _last(mask: Tensor) -> Tensor:
    r"""The index of the last observed step per row, :math:`(B,)`."""

    steps = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, steps, -1).amax(1)


class GRUSummary(nn.Module):
    r"""A gated recurrent network read at the last observed step.

    Arguments:
        in_features: The features per step :math:`L`.
        out_features: The number of summary features :math:`F`.
        hidden_features: The GRU's hidden size.
        layers: The number of stacked GRU layers.
        pooling: ``"last"`` reads the hidden state at the last observed step only;
            ``"last_and_mean"`` adds the mean of the hidden states over the observed
            steps, so early steps of a long series reach the summary without
            passing through every later step (NPE's default for series).

    Example:
        >>> net = GRUSummary(1, out_features=8)
        >>> x, mask = torch.randn(2, 50, 1), torch.arange(50) < torch.tensor([[20], [50]])
        >>> net(x, mask=mask).shape
        torch.Size([2, 8])
    """

    def __init__(self, in_features: int, out_features: int = 32, hidden_features: int = 64, layers: int = 2,
                 pooling: str = "last") -> None:
        super().__init__()
        if pooling not in ("last", "last_and_mean"):
            raise ValueError(f"pooling must be 'last' or 'last_and_mean', got {pooling!r}.")
        self.config = {
            "in_features": int(in_features),
            "out_features": int(out_features),
            "hidden_features": int(hidden_features),
            "layers": int(layers),
            "pooling": pooling,
        }
        self.pooling = pooling
        self.gru = nn.GRU(in_features + 1, hidden_features, num_layers=layers, batch_first=True)
        pooled = hidden_features * (2 if pooling == "last_and_mean" else 1)
        self.out = _mlp([pooled + 1, hidden_features, out_features])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = presence_mask(x, mask, "time steps", self.config["in_features"])
        last = _last(mask)
        # run only as far as the longest series in the batch: trailing padding is never read
        steps = int(last.max()) + 1 if x.shape[0] else 0
        h, _ = self.gru(_with_mask_channel(x, mask)[:, :steps])
        final = h[torch.arange(x.shape[0], device=x.device), last]
        count = mask.sum(1, keepdim=True).to(x.dtype)
        parts = [final]
        if self.pooling == "last_and_mean":
            observed = mask[:, :steps].unsqueeze(-1).to(h.dtype)
            parts.append((h * observed).sum(1) / count.clamp_min(1))
        return self.out(torch.cat([*parts, torch.log1p(count)], dim=-1))


class ConvSummary(nn.Module):
    r"""A 1-D convolutional network with masked mean and max pooling over time.

    Activations at unobserved steps are zeroed after every layer, so that padding
    acts exactly like the convolution's own zero padding.

    Arguments:
        in_features: The features per step :math:`L`.
        out_features: The number of summary features :math:`F`.
        channels: The channels of each convolutional layer.
        kernel_size: The (odd) kernel size.

    Example:
        >>> net = ConvSummary(1, out_features=8)
        >>> net(torch.randn(2, 50, 1)).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 32,
        channels: tuple[int, ...] | list[int] = (32, 64, 64),
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}.")
        self.config = {
            "in_features": int(in_features),
            "out_features": int(out_features),
            "channels": [int(c) for c in channels],
            "kernel_size": int(kernel_size),
        }
        widths = [in_features + 1, *self.config["channels"]]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, padding=kernel_size // 2) for a, b in zip(widths[:-1], widths[1:])
        )
        self.out = _mlp([2 * widths[-1] + 1, 64, out_features])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = presence_mask(x, mask, "time steps", self.config["in_features"])
        weight = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        h = _with_mask_channel(x, mask).transpose(1, 2)
        for conv in self.convs:
            h = nn.functional.gelu(conv(h)) * weight
        mean = h.sum(-1) / weight.sum(-1).clamp_min(1.0)
        top = torch.where(weight > 0, h, -torch.inf).amax(-1)
        length = torch.log1p(mask.sum(1, keepdim=True).to(x.dtype))
        return self.out(torch.cat([mean, top, length], dim=-1))
