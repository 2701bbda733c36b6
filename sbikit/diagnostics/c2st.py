r"""Classifier two-sample test (C2ST).

A classifier is trained to tell samples of :math:`P` from samples of :math:`Q`;
its held-out accuracy is 0.5 when :math:`P = Q` and approaches 1 as they
separate. As in sbi's ``c2st``, features are z-scored by :math:`P`'s statistics
and an MLP with two hidden layers of width :math:`10 D` is scored by k-fold
cross-validation; here it is trained with torch, with early stopping on a slice
of each training fold.
"""

__all__ = ["c2st"]

import torch
import torch.nn as nn

from torch import Tensor

from .._checks import check_count
from ..data import as_float_tensor


def _fit_classifier(x: Tensor, y: Tensor, width: int, generator: torch.Generator, max_epochs: int) -> nn.Module:
    n_stop = max(1, len(x) // 10)
    order = torch.randperm(len(x), generator=generator)
    x_stop, y_stop = x[order[:n_stop]], y[order[:n_stop]]
    x, y = x[order[n_stop:]], y[order[n_stop:]]
    net = nn.Sequential(nn.Linear(x.shape[1], width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_state, stale = float("inf"), None, 0
    for _ in range(max_epochs):
        perm = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 128):
            index = perm[start : start + 128]
            optimizer.zero_grad()
            loss_fn(net(x[index]).squeeze(-1), y[index]).backward()
            optimizer.step()
        with torch.no_grad():
            stop_loss = float(loss_fn(net(x_stop).squeeze(-1), y_stop))
        if stop_loss < best - 1e-4:
            best, stale = stop_loss, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= 10:
                break
    net.load_state_dict(best_state)
    return net


def c2st(p: Tensor, q: Tensor, folds: int = 5, seed: int = 0, max_epochs: int = 200) -> float:
    r"""Returns the cross-validated accuracy of a classifier between samples of two distributions.

    Arguments:
        p: Samples :math:`(N, D)`, for example from the reference posterior.
        q: Samples :math:`(M, D)`, for example from the estimate.
        folds: The number of cross-validation folds.
        seed: Seeds the folds, the initialization and the shuffling.
        max_epochs: The most epochs per fold.

    Returns:
        The mean held-out accuracy, in :math:`[0, 1]`; 0.5 means indistinguishable.

    Example:
        >>> a, b = torch.randn(500, 2), torch.randn(500, 2) + 3
        >>> c2st(a, b, max_epochs=20) > 0.9
        True
    """

    p, q = as_float_tensor(p, "p"), as_float_tensor(q, "q")
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"p and q must have shapes (N, D) and (M, D), got {tuple(p.shape)} and {tuple(q.shape)}.")
    folds = check_count(folds, "folds")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}.")
    if not (torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise ValueError("p and q must be finite.")
    mean, std = p.mean(0), p.std(0).clamp_min(1e-8)
    x = (torch.cat([p, q]) - mean) / std
    y = torch.cat([torch.zeros(len(p)), torch.ones(len(q))])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=generator)
        correct = 0
        for k in range(folds):
            test = order[k::folds]
            mask = torch.ones(len(x), dtype=torch.bool)
            mask[test] = False
            net = _fit_classifier(x[mask], y[mask], 10 * x.shape[1], generator, max_epochs)
            with torch.no_grad():
                correct += int(((net(x[test]).squeeze(-1) > 0).float() == y[test]).sum())
    return correct / len(x)
