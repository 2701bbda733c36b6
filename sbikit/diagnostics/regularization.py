r"""An MMD penalty that pushes learned summaries towards a standard normal (Schmitt et al., 2023).

Trained with the penalty

.. math::
    \lambda \, \widehat{\mathrm{MMD}}^2\big(\{s(x_i)\}_{i=1}^B, \{z_i\}_{i=1}^B\big),
    \quad z_i \sim \mathcal{N}(0, I),

over each batch of :math:`B` training observations (the unbiased estimate, with a mixture of
Gaussian kernels of widths :math:`\sqrt{F} \cdot (1/2, 1, 2)` for :math:`F` features), the
summaries of data from the model fill a known region, so that the data of a misspecified
simulator, whose summaries fall outside it, stand out in
:func:`sbikit.diagnostics.misspecification`. The penalty is a term over the whole batch, not a
sum over rows: :func:`sbikit.train.fit` adds it through the network's ``batch_loss``.
"""

__all__ = ["MMDSummary", "mmd_to_normal"]

import torch
import torch.nn as nn

from torch import Tensor

_WIDTHS = (0.5, 1.0, 2.0)
_MAX_ROWS = 512  # rows of a batch the penalty is estimated on: its cost grows with their square


def _kernel(a: Tensor, b: Tensor, widths: Tensor) -> Tensor:
    d2 = torch.cdist(a, b).square()
    return torch.exp(-d2.unsqueeze(-1) / (2 * widths**2)).mean(-1)


def mmd_to_normal(features: Tensor, reference: Tensor) -> Tensor:
    r"""The unbiased :math:`\mathrm{MMD}^2` between features :math:`(B, F)` and standard normal
    draws :math:`(B', F)`, differentiable in the features.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z, w = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
        >>> float(mmd_to_normal(z, w)) < 0.01 < float(mmd_to_normal(3 * z, w))
        True
    """

    widths = features.shape[-1] ** 0.5 * torch.tensor(_WIDTHS, dtype=features.dtype, device=features.device)
    n, m = len(features), len(reference)
    k_ff, k_rr = _kernel(features, features, widths), _kernel(reference, reference, widths)
    within = (k_ff.sum() - k_ff.diagonal().sum()) / (n * (n - 1)) + (k_rr.sum() - k_rr.diagonal().sum()) / (m * (m - 1))
    return within - 2 * _kernel(features, reference, widths).mean()


class MMDSummary(nn.Module):
    r"""A summary network whose features are pushed towards :math:`\mathcal{N}(0, I)` in training.

    ``forward`` is the wrapped network's; ``penalty(features)`` is the MMD term, which
    :class:`sbikit.NPE` adds to its loss for every batch. The reference draws come from the
    module's own generator, so training stays reproducible.

    Arguments:
        summary: The summary network :math:`(B, *x\_shape) \to (B, F)`.
        weight: The weight :math:`\lambda` of the penalty.
        seed: Seeds the standard normal reference draws.

    Example:
        >>> summary = MMDSummary(sbikit.nn.MLP([3], out_features=8), weight=1.0)
        >>> features = summary(torch.randn(64, 3))
        >>> features.shape, summary.penalty(features).shape
        (torch.Size([64, 8]), torch.Size([]))
    """

    def __init__(self, summary: nn.Module, weight: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(summary, nn.Module):
            raise TypeError(f"summary must be a torch.nn.Module, got {type(summary).__name__}.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"weight must be a number >= 0, got {weight!r}.")
        self.summary = summary
        self.weight = float(weight)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.summary(x, **kwargs)

    def penalty(self, features: Tensor) -> Tensor:
        r"""Returns :math:`\lambda \, \mathrm{MMD}^2` between features :math:`(B, F)` and as many
        standard normal draws (estimated on the first 512 rows of larger batches)."""

        if len(features) < 2 or self.weight == 0:
            return features.new_zeros(())
        features = features[:_MAX_ROWS]  # training batches are shuffled: these rows are a random subset
        reference = torch.randn(features.shape, generator=self.generator).to(features)
        return self.weight * mmd_to_normal(features, reference)
