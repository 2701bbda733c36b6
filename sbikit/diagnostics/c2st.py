r"""Classifier two-sample test (C2ST).

A classifier is trained to tell samples of :math:`P` from samples of :math:`Q`;
its held-out accuracy is 0.5 when :math:`P = Q` and approaches 1 as they
separate. As in sbi's ``c2st``, features are z-scored by :math:`P`'s statistics
and an MLP with two hidden layers of width :math:`10 D` is scored by k-fold
cross-validation. The classifier is an estimator like any other: its ``loss`` is
the binary cross-entropy per row, and :func:`sbikit.train.fit` trains it, with
its validation split and early stopping.
"""

__all__ = ["C2STResult", "c2st"]

import dataclasses
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dataclasses import dataclass
from torch import Tensor

from .._checks import check_count
from ..data import as_float_tensor
from ..train import TrainConfig, fit
from ._plot import panels


class _Classifier(nn.Module):
    r"""An MLP that returns the logit that a row comes from :math:`Q`, :math:`(B, D) \to (B,)`."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(self(x), y, reduction="none")


@dataclass(frozen=True, repr=False)
class C2STResult:
    r"""A classifier two-sample test.

    Attributes:
        accuracy: The held-out accuracy over all folds, in :math:`[0, 1]`; 0.5 means
            indistinguishable. ``float(result)`` is the same number.
        fold_accuracies: The accuracy on each fold, :math:`(k,)`.
        probabilities: The held-out probability that each row comes from :math:`Q`,
            :math:`(N + M,)`, :math:`P`'s rows first.
        labels: 0 for :math:`P`'s rows, 1 for :math:`Q`'s, :math:`(N + M,)`.
        seed: The seed of the folds and the training.
    """

    accuracy: float
    fold_accuracies: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    seed: int

    def __float__(self) -> float:
        return self.accuracy

    def __repr__(self) -> str:
        folds = ", ".join(f"{a:.3f}" for a in self.fold_accuracies)
        return f"C2STResult(accuracy={self.accuracy:.3f}, folds=[{folds}], N={int((self.labels == 0).sum())}, " \
               f"M={int((self.labels == 1).sum())})"

    def plot(self, figure=None):
        r"""Histograms of the held-out classifier probabilities for each sample. Returns the figure."""

        figure, (ax,) = panels(1, figure, size=(3.8, 3.0))
        bins = np.linspace(0, 1, 31)
        ax.hist(self.probabilities[self.labels == 0], bins=bins, alpha=0.6, label="p")
        ax.hist(self.probabilities[self.labels == 1], bins=bins, alpha=0.6, label="q")
        ax.axvline(0.5, color="0.4", lw=0.8)
        ax.set_xlabel("held-out P(row from q)")
        ax.set_title(f"C2ST accuracy {self.accuracy:.3f}", fontsize=10)
        ax.legend(fontsize=8)
        return figure


def c2st(
    p: Tensor,
    q: Tensor,
    folds: int = 5,
    seed: int = 0,
    max_epochs: int = 200,
    training: TrainConfig | None = None,
) -> C2STResult:
    r"""Returns the cross-validated accuracy of a classifier between samples of two distributions.

    Arguments:
        p: Samples :math:`(N, D)`, for example from the reference posterior.
        q: Samples :math:`(M, D)`, for example from the estimate.
        folds: The number of cross-validation folds.
        seed: Seeds the folds, the initialization, the validation split and the shuffling.
        max_epochs: The most epochs per fold.
        training: The classifier's training settings; by default batches of 128 at a learning
            rate of 1e-3, stopping after 10 epochs without a better validation loss.
            ``max_epochs`` and ``seed`` override its own.

    Returns:
        A :class:`C2STResult`; ``result.accuracy`` is the mean held-out accuracy.

    Example:
        >>> a, b = torch.randn(500, 2), torch.randn(500, 2) + 3
        >>> c2st(a, b).accuracy > 0.9
        True
    """

    p, q = as_float_tensor(p, "p"), as_float_tensor(q, "q")
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"p and q must have shapes (N, D) and (M, D), got {tuple(p.shape)} and {tuple(q.shape)}.")
    folds = check_count(folds, "folds")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}.")
    max_epochs = check_count(max_epochs, "max_epochs")
    if training is None:
        training = TrainConfig(batch_size=128, learning_rate=1e-3, patience=10, average=0.0, show_progress=False)
    elif not isinstance(training, TrainConfig):
        raise TypeError(f"training must be a sbikit.TrainConfig, got {type(training).__name__}.")
    if not (torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise ValueError("p and q must be finite.")
    mean, std = p.mean(0), p.std(0).clamp_min(1e-8)
    x = (torch.cat([p, q]) - mean) / std
    y = torch.cat([torch.zeros(len(p)), torch.ones(len(q))])
    probabilities = torch.empty(len(x))
    accuracies = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        for k in range(folds):
            test = order[k::folds]
            train = torch.ones(len(x), dtype=torch.bool)
            train[test] = False
            classifier = _Classifier(x.shape[1], 10 * x.shape[1])
            config = dataclasses.replace(training, max_epochs=max_epochs, seed=seed + k)
            fit(classifier, (x[train], y[train]), config, name=f"c2st fold {k + 1}")
            with torch.no_grad():
                probabilities[test] = torch.sigmoid(classifier(x[test]))
            accuracies.append(float(((probabilities[test] > 0.5).float() == y[test]).float().mean()))
    correct = ((probabilities > 0.5).float() == y).float().mean()
    return C2STResult(float(correct), np.array(accuracies), probabilities.numpy(), y.numpy(), seed)
