r"""Plots a person would rather look at than a table.

matplotlib is imported inside each function, so importing sbikit stays light.
"""

__all__ = ["pair_plot"]

import numpy as np

from collections.abc import Sequence

from .data import as_float_tensor


def pair_plot(
    samples: object,
    names: Sequence[str] | None = None,
    truth: object | None = None,
    bins: int = 50,
    title: str | None = None,
):
    r"""Draws marginal histograms and pairwise 2-D histograms of samples :math:`(n, D)`.

    Arguments:
        samples: Samples :math:`(n, D)`.
        names: A label per dimension.
        truth: Optionally, the true parameters :math:`(D,)`, drawn as lines.
        bins: The number of histogram bins per axis.
        title: A title for the figure.

    Returns:
        The matplotlib figure.
    """

    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    samples = as_float_tensor(samples, "samples")
    if samples.ndim != 2:
        raise ValueError(f"samples must have shape (n, D), got {tuple(samples.shape)}.")
    data = samples.numpy()
    dim = data.shape[1]
    names = list(names) if names is not None else [f"theta_{i}" for i in range(dim)]
    if len(names) != dim:
        raise ValueError(f"names must have {dim} entries, got {len(names)}.")
    truth = None if truth is None else as_float_tensor(truth, "truth").reshape(dim).numpy()

    size = min(2.2 * dim, 16)
    fig = Figure(figsize=(size, size))
    axes = fig.subplots(dim, dim, squeeze=False)
    ranges = [np.quantile(data[:, i], [0.001, 0.999]) for i in range(dim)]
    if truth is not None:  # widen each range to show the truth, with a margin
        for i, (low, high) in enumerate(ranges):
            low, high = min(low, truth[i]), max(high, truth[i])
            margin = 0.05 * (high - low) if high > low else 0.5
            ranges[i] = np.array([low - margin, high + margin])
    for i in range(dim):
        for j in range(dim):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                ax.hist(data[:, i], bins=bins, range=ranges[i], color="C0", histtype="stepfilled", alpha=0.7)
                ax.set_xlim(ranges[i])
                ax.set_yticks([])
                if truth is not None:
                    ax.axvline(truth[i], color="C3")
            else:
                ax.hist2d(
                    data[:, j], data[:, i], bins=bins, range=[ranges[j], ranges[i]], cmap="Blues", norm=PowerNorm(0.4)
                )
                if truth is not None:
                    ax.plot(truth[j], truth[i], marker="+", color="C3", markersize=12, mew=2)
            if i == dim - 1:
                ax.set_xlabel(names[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
            elif j > 0:
                ax.set_yticklabels([])
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
