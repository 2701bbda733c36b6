r"""Multi-layer perceptron summary network."""

__all__ = ["MLP"]

import math
import torch.nn as nn

from collections.abc import Sequence
from torch import Tensor


class MLP(nn.Module):
    r"""Summarizes fixed-size observations with a multi-layer perceptron.

    Summary networks map a batch of observations :math:`(B, *)` to summaries
    :math:`(B, F)`; this one flattens the observation and applies
    ``Linear -> GELU`` blocks.

    Arguments:
        in_shape: The shape of one observation, or its number of features.
        out_features: The number of summary features :math:`F`.
        hidden_features: The widths of the hidden layers.

    Example:
        >>> net = MLP(in_shape=(5, 2), out_features=4)
        >>> net(torch.randn(3, 5, 2)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        out_features: int = 32,
        hidden_features: Sequence[int] = (128, 128),
    ) -> None:
        super().__init__()
        in_shape = [in_shape] if isinstance(in_shape, int) else list(in_shape)
        self.config = {
            "in_shape": in_shape,
            "out_features": int(out_features),
            "hidden_features": [int(h) for h in hidden_features],
        }
        widths = [math.prod(in_shape), *self.config["hidden_features"]]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)
        self.start = -len(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(self.start))
