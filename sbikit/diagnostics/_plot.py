r"""Figure helpers the diagnostics share. matplotlib is imported inside each function, so
importing sbikit stays light; figures are built with :class:`matplotlib.figure.Figure`, not
pyplot, so nothing is left open in a global registry."""

__all__ = ["LEVELS", "ecdf_difference", "panels"]

import math
import numpy as np

LEVELS = np.linspace(0.0, 1.0, 101)  # credibility levels of the coverage curves and ECDF plots


def panels(count: int, figure=None, columns: int = 4, size: tuple[float, float] = (2.8, 2.3)):
    r"""Returns a figure (``figure``, or a new one; a :class:`~matplotlib.figure.SubFigure`
    serves) and a flat list of ``count`` axes laid out in rows of at most ``columns``."""

    from matplotlib.figure import Figure

    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    if figure is None:
        figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes[count:]:
        ax.axis("off")
    return figure, list(axes[:count])


def ecdf_difference(ax, values: np.ndarray, band: tuple[np.ndarray, np.ndarray], label: str) -> None:
    r"""Draws the ECDF of values in :math:`[0, 1]` minus the uniform CDF, with the simultaneous
    band (lower, upper) at ``LEVELS`` shaded."""

    ecdf = (np.asarray(values)[:, None] <= LEVELS).mean(0)
    ax.fill_between(LEVELS, band[0] - LEVELS, band[1] - LEVELS, color="0.85", lw=0)
    inside = bool(np.all((ecdf >= band[0]) & (ecdf <= band[1])))
    ax.plot(LEVELS, ecdf - LEVELS, color="C0" if inside else "C3")
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("fractional rank", fontsize=8)
    ax.tick_params(labelsize=7)
