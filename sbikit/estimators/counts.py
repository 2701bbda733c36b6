r"""An autoregressive likelihood for vectors of counts: NLE's model where every value is a count.

A vector of counts :math:`x = (x_1, \dots, x_X)`, each an integer :math:`\geq 0`, is modelled
one count at a time,

.. math:: q(x | c) = \prod_{j=1}^{X} q(x_j | x_{<j}, c),

where :math:`c` is the context (the parameters, standardized). A GRU reads the counts before
:math:`j` (as :math:`\log(1 + x)`), beside :math:`c` and a learned embedding of each column's
position, and a small network maps its state to a mixture of negative binomial distributions
for :math:`x_j`. The product is a probability mass function: it gives every vector of
non-negative integers a probability, none to anything else, and a count of 0 is as easy for it
as any other, with no cell to spread over the line. Draws follow the same order, one count at a
time. Any order of the columns is a valid factorization; for a series, time order lets the
state carry the past.

A negative binomial with mean :math:`\mu` and size :math:`n` has variance
:math:`\mu + \mu^2 / n`: it reaches the Poisson as :math:`n \to \infty` and any
over-dispersion below; the mixture adds zero inflation and several modes. ``docs/design.md``
compares this model with a dequantized flow on the Ricker model's counts.
"""

__all__ = ["CountModel"]

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch import Tensor

_ROWS = 8192  # rows per GRU call in log_prob: its states take rows x X x hidden floats
_LOG_SIZE = (-4.0, 14.0)  # the range of log n
_LOG_MEAN = (-15.0, 15.0)  # the range of log mu


class CountModel(nn.Module):
    r"""A conditional probability mass function over vectors of :math:`X` non-negative counts.

    Arguments:
        size: The number of counts :math:`X`.
        context: The number of context features :math:`C`.
        hidden: The width of the GRU's state and of the head.
        components: The number of negative binomials in each count's mixture.
        embedding: The width of each column's learned position embedding.

    ``log_prob(x, c)`` takes counts :math:`(B, X)` and contexts :math:`(B, C)` and returns
    :math:`\log q(x | c)`, :math:`(B,)`, differentiable in ``c``; ``sample(c)`` returns counts
    :math:`(B, X)`, drawn from torch's global generator. :meth:`fit_scales` sets the input's
    scale and each count's starting mean from training counts.

    Example:
        >>> model = CountModel(5, 2)
        >>> x = model.sample(torch.zeros(3, 2))
        >>> x.shape, bool((x >= 0).all()), bool((x == x.round()).all())
        (torch.Size([3, 5]), True, True)
        >>> model.log_prob(x, torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, size: int, context: int, hidden: int = 64, components: int = 4, embedding: int = 8) -> None:
        super().__init__()
        self.config = {"size": size, "context": context, "hidden": hidden, "components": components,
                       "embedding": embedding}
        self.size, self.components = size, components
        self.position = nn.Parameter(0.1 * torch.randn(size, embedding))
        self.gru = nn.GRU(1 + context + embedding, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden + context + embedding, hidden), nn.ELU(),
                                  nn.Linear(hidden, 3 * components))
        with torch.no_grad():  # every component starts near the column's mean, with some over-dispersion
            self.head[-1].weight.mul_(0.01)
            self.head[-1].bias.zero_()
            self.head[-1].bias[components : 2 * components] = torch.linspace(-1.0, 1.0, components)
            self.head[-1].bias[2 * components :] = 2.0
        self.register_buffer("log_mean", torch.zeros(size))  # each count's log mean in training
        self.register_buffer("input_loc", torch.zeros(()))  # log(1 + x) standardized for the GRU
        self.register_buffer("input_scale", torch.ones(()))

    def fit_scales(self, x: Tensor) -> None:
        r"""Sets each count's starting mean and the GRU input's scale from training counts :math:`(N, X)`."""

        with torch.no_grad():
            self.log_mean.copy_((x.double().mean(0) + 0.5).log())
            feature = torch.log1p(x.double())
            self.input_loc.copy_(feature.mean())
            self.input_scale.copy_(feature.std().clamp_min(1e-3) if feature.numel() > 1 else 1.0)

    def _input(self, previous: Tensor) -> Tensor:
        return (torch.log1p(previous) - self.input_loc) / self.input_scale

    def _mixture(self, state: Tensor, side: Tensor, columns: slice) -> tuple[Tensor, Tensor, Tensor]:
        r"""The mixture's log weights, log means and log sizes, each :math:`(*, K)`, in float64."""

        logits, log_mean, log_size = self.head(torch.cat((state, side), -1)).double().split(self.components, -1)
        log_mean = (log_mean + self.log_mean[columns].double().unsqueeze(-1)).clamp(*_LOG_MEAN)
        return logits.log_softmax(-1), log_mean, log_size.clamp(*_LOG_SIZE)

    def log_prob(self, x: Tensor, context: Tensor) -> Tensor:
        r""":math:`\log q(x | c)`, :math:`(B,)`, for counts :math:`(B, X)` and contexts :math:`(B, C)`."""

        if len(x) > _ROWS:
            return torch.cat([self.log_prob(a, b) for a, b in zip(x.split(_ROWS), context.split(_ROWS))])
        rows, size = x.shape
        previous = torch.cat((x.new_zeros(rows, 1), x[:, :-1]), 1)
        side = torch.cat((context.unsqueeze(1).expand(rows, size, context.shape[-1]),
                          self.position.expand(rows, size, -1)), -1)
        state, _ = self.gru(torch.cat((self._input(previous).unsqueeze(-1), side), -1))
        log_weight, log_mean, log_size = self._mixture(state, side, slice(None))
        k, n = x.double().unsqueeze(-1), log_size.exp()
        log_p = (torch.lgamma(k + n) - torch.lgamma(n) - torch.lgamma(k + 1)
                 - n * F.softplus(log_mean - log_size) - k * F.softplus(log_size - log_mean))
        return torch.logsumexp(log_weight + log_p, -1).sum(-1).to(context.dtype)

    @torch.no_grad()
    def sample(self, context: Tensor) -> Tensor:
        r"""Draws counts :math:`(B, X)` for contexts :math:`(B, C)`, one column at a time."""

        rows = len(context)
        previous, state, draws = context.new_zeros(rows, 1), None, []
        for j in range(self.size):
            side = torch.cat((context, self.position[j].expand(rows, -1)), -1)
            out, state = self.gru(torch.cat((self._input(previous), side), -1).unsqueeze(1), state)
            log_weight, log_mean, log_size = self._mixture(out[:, 0], side, slice(j, j + 1))
            k = torch.distributions.Categorical(logits=log_weight).sample().unsqueeze(-1)
            mean, size = log_mean.gather(-1, k).exp(), log_size.gather(-1, k).exp()
            previous = torch.poisson(torch.distributions.Gamma(size, size / mean).sample()).to(context)
            draws.append(previous)
        return torch.cat(draws, 1)
