r"""Summary networks for sets: exchangeable members, any number of them.

Both networks take observations :math:`(B, M, L)` (:math:`M` members of
:math:`L` features, or :math:`(B, M)` for one feature) and an optional boolean
``mask`` :math:`(B, M)` that is True for members that are present. Absent
(padding) members change nothing: their values are never read. The number of
members present is an input to the summary (as :math:`\log(1 + M)`), so the
posterior can sharpen as it grows.
"""

__all__ = ["DeepSet", "SetTransformer"]

import torch
import torch.nn as nn

from collections.abc import Sequence
from torch import Tensor


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def presence_mask(
    x: Tensor, mask: Tensor | None, what: str = "members", features: int = 0
) -> tuple[Tensor, Tensor]:
    r"""Returns ``x`` as :math:`(B, M, L)` and the mask :math:`(B, M)` as booleans, all True when
    ``mask`` is None. A plain batch of vectors :math:`(B, M)` is read as :math:`M` members (or
    steps) of one feature where the network takes one (``features == 1``).

    Raises:
        ValueError: If ``x`` is not :math:`(B, M, L)`, the mask's shape is not
            :math:`(B, M)`, or a row has nothing present (an empty set or series).
    """

    if x.ndim == 2 and features == 1:
        x = x.unsqueeze(-1)
    if x.ndim != 3:
        raise ValueError(f"{what} must come as a batch of shape (B, M, L), got {tuple(x.shape)}.")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    elif mask.shape != x.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(x.shape[:2])} (B, M), got {tuple(mask.shape)}.")
    mask = mask.bool()
    if x.shape[0] and not bool(mask.any(1).all()):
        raise ValueError(f"every row needs at least one of its {what}; a row of the mask is all False.")
    return x, mask


def _log_count(mask: Tensor) -> Tensor:
    return torch.log1p(mask.sum(1, keepdim=True).to(torch.float32))


class DeepSet(nn.Module):
    r"""A DeepSet: :math:`s = \rho(\text{mean}_j \phi(x_j), \log(1 + M))`.

    Mean pooling keeps the scale of :math:`\phi` independent of the member count;
    :math:`\log(1 + M)` tells :math:`\rho` how many members were averaged.

    Arguments:
        in_features: The features per member :math:`L`.
        out_features: The number of summary features :math:`F`.
        hidden_features: The hidden widths of :math:`\phi` and of :math:`\rho`.
        pooled_features: The width of :math:`\phi`'s output.

    Example:
        >>> net = DeepSet(2, out_features=8)
        >>> x, mask = torch.randn(3, 10, 2), torch.arange(10) < torch.tensor([[4], [10], [1]])
        >>> net(x, mask=mask).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 32,
        hidden_features: Sequence[int] = (128, 128),
        pooled_features: int = 64,
    ) -> None:
        super().__init__()
        self.config = {
            "in_features": int(in_features),
            "out_features": int(out_features),
            "hidden_features": [int(h) for h in hidden_features],
            "pooled_features": int(pooled_features),
        }
        hidden = self.config["hidden_features"]
        self.phi = _mlp([in_features, *hidden, pooled_features])
        self.rho = _mlp([pooled_features + 1, *hidden, out_features])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = presence_mask(x, mask, features=self.config["in_features"])
        weight = mask.unsqueeze(-1).to(x.dtype)
        h = self.phi(torch.where(mask.unsqueeze(-1), x, 0.0))
        pooled = (h * weight).sum(1) / weight.sum(1).clamp_min(1.0)
        return self.rho(torch.cat([pooled, _log_count(mask)], dim=-1))


class _Block(nn.Module):
    r"""Multi-head attention of queries on keys, with residual connections and a feed-forward layer."""

    def __init__(self, features: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(features, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(features)
        self.norm2 = nn.LayerNorm(features)
        self.feedforward = _mlp([features, 2 * features, features])

    def forward(self, queries: Tensor, keys: Tensor, ignore: Tensor | None = None) -> Tensor:
        h = queries + self.attention(queries, keys, keys, key_padding_mask=ignore, need_weights=False)[0]
        h = self.norm1(h)
        return self.norm2(h + self.feedforward(h))


class SetTransformer(nn.Module):
    r"""A set transformer (Lee et al., 2019) with induced-point attention and pooling by attention.

    Each layer attends from ``inducing`` learned points to the members present,
    then from the members to those points (cost linear in :math:`M`); a learned
    query pools the members by attention. Padding members are excluded as keys,
    so they never influence the present ones.

    Arguments:
        in_features: The features per member :math:`L`.
        out_features: The number of summary features :math:`F`.
        features: The width of the attention layers.
        layers: The number of induced-attention layers.
        heads: The number of attention heads.
        inducing: The number of inducing points.

    Example:
        >>> net = SetTransformer(2, out_features=8)
        >>> net(torch.randn(3, 10, 2)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 32,
        features: int = 64,
        layers: int = 2,
        heads: int = 4,
        inducing: int = 16,
    ) -> None:
        super().__init__()
        self.config = {
            "in_features": int(in_features),
            "out_features": int(out_features),
            "features": int(features),
            "layers": int(layers),
            "heads": int(heads),
            "inducing": int(inducing),
        }
        self.embed = nn.Linear(in_features, features)
        self.points = nn.ParameterList(
            [nn.Parameter(torch.randn(inducing, features) / features**0.5) for _ in range(layers)]
        )
        self.gather = nn.ModuleList([_Block(features, heads) for _ in range(layers)])
        self.scatter = nn.ModuleList([_Block(features, heads) for _ in range(layers)])
        self.query = nn.Parameter(torch.randn(1, features) / features**0.5)
        self.pool = _Block(features, heads)
        self.out = _mlp([features + 1, features, out_features])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = presence_mask(x, mask, features=self.config["in_features"])
        ignore = ~mask
        h = self.embed(torch.where(mask.unsqueeze(-1), x, 0.0))
        batch = x.shape[0]
        for points, gather, scatter in zip(self.points, self.gather, self.scatter):
            summary = gather(points.expand(batch, -1, -1), h, ignore)
            h = scatter(h, summary)
        pooled = self.pool(self.query.expand(batch, -1, -1), h, ignore).squeeze(1)
        return self.out(torch.cat([pooled, _log_count(mask)], dim=-1))
